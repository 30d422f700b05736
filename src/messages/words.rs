//! The words of a text, as search sees them: one definition for the
//! messages indexed and the queries that look for them, so the two always
//! agree, in every language and whatever the database's locale.
//!
//! A word is a run of letters, marks and digits of any script (Unicode
//! general categories L, M and N), after NFKC normalisation (full-width
//! forms, ligatures and the like become their plain letters), lowercased,
//! with the Greek final sigma folded to σ. Everything else separates words:
//! spaces, punctuation (`_` too), symbols, emoji. Invisible format
//! characters (a soft hyphen, the zero-width joiners) are dropped without
//! breaking the word, except the zero-width space, which some scripts put
//! between words. So `https://example.com/a_b` is the words `https example
//! com a b`, `v1.2.3` is `v1 2 3`, and `snake_case_name` is `snake case
//! name`; a query finds the whole as its words in order. Text written
//! without spaces between words (Chinese, Japanese, Thai) is one word per
//! run between spaces and punctuation.
//!
//! PostgreSQL only stores and matches the result: messages carry a
//! `tsvector` built by [`tsvector_text`], queries a `tsquery` built by
//! [`tsquery_text`]; its text-search parser and dictionaries are never run.

use std::borrow::Cow;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Longer words are neither indexed nor searched: runs this long are
/// encoded data (base64, hashes of unusual length), not words anyone types,
/// and PostgreSQL refuses lexemes past 2,047 bytes.
pub const MAX_WORD_CHARS: usize = 100;

/// What a character is to a word.
enum Class {
    /// A letter or digit: a word needs one.
    Base,
    /// A mark (accent, vowel sign): part of a word, not one by itself.
    Mark,
    /// Invisible formatting: skipped.
    Ignored,
    Separator,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Base
        } else {
            Class::Separator
        };
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number => Class::Base,
        GeneralCategoryGroup::Mark => Class::Mark,
        // U+200B ZERO WIDTH SPACE separates words in Thai, Khmer, Lao.
        GeneralCategoryGroup::Other
            if c.general_category() == GeneralCategory::Format && c != '\u{200B}' =>
        {
            Class::Ignored
        }
        _ => Class::Separator,
    }
}

/// Calls `each` with every word of `text`, in order (see the module doc).
pub fn for_each_word(text: &str, mut each: impl FnMut(&str)) {
    if text.is_ascii() {
        // What most messages are, and every send pays for this: in ASCII a
        // word is a run of letters and digits (no marks, nothing invisible,
        // nothing to normalise), so the words are slices of the text,
        // lowercased only when they need it.
        let mut lower = String::new();
        let bytes = text.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let start = at;
            while at < bytes.len() && bytes[at].is_ascii_alphanumeric() {
                at += 1;
            }
            // ASCII: every byte is a character boundary.
            let word = &text[start..at];
            at += 1;
            if word.is_empty() || word.len() > MAX_WORD_CHARS {
                continue;
            }
            if word.bytes().any(|b| b.is_ascii_uppercase()) {
                lower.clear();
                lower.push_str(word);
                lower.make_ascii_lowercase();
                each(&lower);
            } else {
                each(word);
            }
        }
        return;
    }
    let text: Cow<str> = if is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfkc().collect())
    };
    let mut word = String::new();
    let (mut chars, mut has_base) = (0, false);
    let mut end_word = |word: &mut String, chars: &mut usize, has_base: &mut bool| {
        if *has_base && *chars <= MAX_WORD_CHARS {
            each(word);
        }
        word.clear();
        *chars = 0;
        *has_base = false;
    };
    for c in text.chars() {
        match class(c) {
            Class::Separator => end_word(&mut word, &mut chars, &mut has_base),
            Class::Ignored => {}
            kind => {
                has_base |= matches!(kind, Class::Base);
                chars += 1;
                if c.is_ascii() {
                    word.push(c.to_ascii_lowercase());
                } else {
                    word.extend(c.to_lowercase().map(|l| if l == 'ς' { 'σ' } else { l }));
                }
            }
        }
    }
    end_word(&mut word, &mut chars, &mut has_base);
}

/// `n` in decimal, without the formatting machinery (once per word sent).
fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut rest = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
}

/// `word` as a quoted lexeme of a tsvector or tsquery literal. Words hold
/// no ASCII punctuation, so there is nothing to escape; the escaping stays
/// so that a change to what a word is cannot make a literal ambiguous.
fn push_lexeme(out: &mut String, word: &str) {
    out.push('\'');
    if word.contains(['\'', '\\']) {
        for c in word.chars() {
            if c == '\'' || c == '\\' {
                out.push(c);
            }
            out.push(c);
        }
    } else {
        out.push_str(word);
    }
    out.push('\'');
}

/// The `tsvector` literal of a message's content: each word with its
/// position (from 1; PostgreSQL caps positions at 16,383).
pub fn tsvector_text(content: &str) -> String {
    let mut out = String::with_capacity(content.len() * 2);
    let mut position: u32 = 0;
    for_each_word(content, |word| {
        position += 1;
        if position > 1 {
            out.push(' ');
        }
        push_lexeme(&mut out, word);
        out.push(':');
        push_decimal(&mut out, position);
    });
    out
}

/// The `tsquery` literal of a search query, or `None` when it has no word.
///
/// Terms are separated by spaces outside double quotes; all terms must
/// match (`&`). A term's words must appear in order, next to each other
/// (`<->`): a quoted phrase, and equally a term like `example.com` or
/// `snake_case`. A term ending in `*` matches its last word as a prefix.
/// An unclosed quote runs to the end; a term without words (`*`, `!!`) is
/// dropped. Only lexemes quoted by [`push_lexeme`] and these operators reach
/// the literal, so no input can make it invalid.
pub fn tsquery_text(q: &str) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    let mut add = |text: &mut String| {
        if let Some(term) = term_query(text)
            && !terms.contains(&term)
        {
            terms.push(term);
        }
        text.clear();
    };
    let (mut text, mut quoted) = (String::new(), false);
    for c in q.chars() {
        if c == '"' {
            add(&mut text);
            quoted = !quoted;
        } else if c.is_whitespace() && !quoted {
            add(&mut text);
        } else {
            text.push(c);
        }
    }
    add(&mut text);
    (!terms.is_empty()).then(|| terms.join(" & "))
}

/// One term as a parenthesised phrase of its words, `None` without words.
fn term_query(text: &str) -> Option<String> {
    let mut out = String::from("(");
    for_each_word(text, |word| {
        if out.len() > 1 {
            out.push_str(" <-> ");
        }
        push_lexeme(&mut out, word);
    });
    if out.len() == 1 {
        return None;
    }
    if text.trim_end().ends_with('*') {
        out.push_str(":*");
    }
    out.push(')');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn words_are_runs_of_letters_and_digits_lowercased() {
        assert_eq!(words("Hello, World! 42x"), ["hello", "world", "42x"]);
        assert_eq!(
            words("https://Example.com/a_b?x=1"),
            ["https", "example", "com", "a", "b", "x", "1"]
        );
        assert_eq!(
            words("bob@mail.example.org"),
            ["bob", "mail", "example", "org"]
        );
        assert_eq!(
            words("v1.2.3 snake_case_name"),
            ["v1", "2", "3", "snake", "case", "name"]
        );
        assert_eq!(
            words("«Привет», ΣΟΦΟΣ — École"),
            ["привет", "σοφοσ", "école"]
        );
        assert_eq!(words("東京都庁に行く。大阪"), ["東京都庁に行く", "大阪"]);
        assert_eq!(words("great👍🏽there"), ["great", "there"]);
        assert!(
            words("!!! *** 👍\u{FE0F}").is_empty(),
            "symbols and lone marks"
        );
    }

    #[test]
    fn compatibility_forms_and_invisible_characters_do_not_change_a_word() {
        assert_eq!(words("ＡＢＣ１２ ﬁle"), ["abc12", "file"]);
        assert_eq!(words("co\u{AD}operate"), ["cooperate"]);
        assert_eq!(
            words("e\u{301}cole"),
            words("\u{E9}cole"),
            "NFC and NFD alike"
        );
        assert_eq!(words("สวัสดี\u{200B}ครับ"), ["สวัสดี", "ครับ"]);
        assert_eq!(
            words("हिन्दी"),
            ["हिन्दी"],
            "vowel signs and virama are marks"
        );
    }

    #[test]
    fn overlong_words_are_skipped() {
        let long = "x".repeat(MAX_WORD_CHARS + 1);
        let fits = "y".repeat(MAX_WORD_CHARS);
        assert_eq!(words(&format!("a {long} {fits} b")), ["a", &fits, "b"]);
    }

    #[test]
    fn ascii_text_has_the_words_the_general_rule_gives() {
        // The ASCII fast path against the general one: a trailing "é"
        // sends the same text down the general path, adding one word.
        let long = "Q".repeat(MAX_WORD_CHARS + 1);
        let fits = "Z".repeat(MAX_WORD_CHARS);
        for text in [
            "The cat, the HAT.",
            "https://Example.com/a_b?q=1#x v1.2.3 snake_case_name",
            "  leading and trailing  ",
            "it's a \\ back'slash",
            "tab\there\nnew\0nul \x7f del",
            "",
            "!!!",
            long.as_str(),
            fits.as_str(),
        ] {
            let mut general = words(&format!("{text} é"));
            assert_eq!(general.pop().as_deref(), Some("é"), "{text:?}");
            assert_eq!(words(text), general, "{text:?}");
        }
    }

    #[test]
    fn a_tsvector_lists_each_word_with_its_position() {
        assert_eq!(
            tsvector_text("The cat, the HAT."),
            "'the':1 'cat':2 'the':3 'hat':4"
        );
        assert_eq!(tsvector_text("?!"), "");
        let many = "w ".repeat(1234);
        assert!(tsvector_text(&many).ends_with("'w':1233 'w':1234"));
    }

    #[test]
    fn a_tsquery_ands_terms_of_phrases_with_prefixes() {
        assert_eq!(
            tsquery_text("Cat hat").as_deref(),
            Some("('cat') & ('hat')")
        );
        assert_eq!(
            tsquery_text("\"quick brown\" fox*").as_deref(),
            Some("('quick' <-> 'brown') & ('fox':*)")
        );
        assert_eq!(
            tsquery_text("example.com/a snake_ca*").as_deref(),
            Some("('example' <-> 'com' <-> 'a') & ('snake' <-> 'ca':*)")
        );
        assert_eq!(tsquery_text("cat cat CAT").as_deref(), Some("('cat')"));
        assert_eq!(
            tsquery_text("\"unclosed phrase").as_deref(),
            Some("('unclosed' <-> 'phrase')")
        );
    }

    #[test]
    fn queries_without_words_are_none_and_operators_are_text() {
        for q in ["", "*", "\"\"", "!!! ??", "& | ! <-> :*", "\"*\" * ' \\"] {
            assert_eq!(tsquery_text(q), None, "{q:?}");
        }
        assert_eq!(
            tsquery_text("a&b | !c <-> d:*").as_deref(),
            Some("('a' <-> 'b') & ('c') & ('d':*)")
        );
    }
}
