//! Rules for what clients type: usernames, passwords, display names. Each
//! check appends to a list of field errors, so one response names every
//! bad field at once.

use crate::error::FieldError;
use crate::password::PASSWORD_MAX_BYTES;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;

pub const PASSWORD_MIN_BYTES: usize = 8;
pub const DISPLAY_NAME_MAX_CHARS: usize = 100;

/// 8 to 72 bytes: bcrypt reads no further.
pub fn check_password(field: &str, password: &str, errors: &mut Vec<FieldError>) {
    let n = password.len();
    if !(PASSWORD_MIN_BYTES..=PASSWORD_MAX_BYTES).contains(&n) {
        errors.push(FieldError::new(
            field,
            format!("must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes long"),
        ));
    }
}

pub fn check_username(username: &str, errors: &mut Vec<FieldError>) {
    let n = username.chars().count();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !(3..=50).contains(&n) || !username.chars().all(allowed) {
        errors.push(FieldError::new(
            "username",
            "must be 3 to 50 characters of letters, digits, '_', '.' or '-'",
        ));
    }
}

/// Trims a display name; blank means "none". Over 100 characters is an error.
pub fn check_display_name(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let trimmed = raw?.trim();
    if trimmed.chars().count() > DISPLAY_NAME_MAX_CHARS {
        errors.push(FieldError::new(
            "display_name",
            format!("must be at most {DISPLAY_NAME_MAX_CHARS} characters"),
        ));
        return None;
    }
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// An integer field of a request (`#[serde(deserialize_with)]`). JSON has
/// one number type, and JSON Schema (so the contract) counts `5.0` as the
/// integer 5: a client whose encoder writes integers that way is not wrong.
/// A fraction or a value outside `i64` is still refused.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntegerVisitor)
}

/// An optional [`integer`]: absent or `null` is `None`.
pub fn optional_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Integer>::deserialize(d)?.map(|Integer(n)| n))
}

/// A list of [`integer`]s.
pub fn integers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    let list = Vec::<Integer>::deserialize(d)?;
    Ok(list.into_iter().map(|Integer(n)| n).collect())
}

/// One [`integer`], inside an `Option` or a list.
struct Integer(i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        integer(d).map(Integer)
    }
}

struct IntegerVisitor;

impl Visitor<'_> for IntegerVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<i64, E> {
        Ok(n)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<i64, E> {
        i64::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<i64, E> {
        // 2^63 is exactly representable; every integral f64 below it fits.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if n.fract() == 0.0 && (-LIMIT..LIMIT).contains(&n) {
            Ok(n as i64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(n), &self))
        }
    }
}

/// Whether JSON text holds a NUL character, which PostgreSQL cannot store
/// in `text`: a `\u0000` escape (JSON has no other way to write one) that
/// is not itself an escaped backslash followed by `u0000`. Checked on the
/// raw text, before decoding, so every string of a body is covered at once.
pub fn json_has_nul(json: &[u8]) -> bool {
    let mut at = 0;
    while let Some(found) = find(&json[at..], b"u0000") {
        let u = at + found;
        // Count the backslashes right before `u`: an odd count escapes the `u`.
        let slashes = json[..u].iter().rev().take_while(|&&b| b == b'\\').count();
        if slashes % 2 == 1 {
            return true;
        }
        at = u + 1;
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_is_an_odd_run_of_backslashes_before_u0000() {
        assert!(json_has_nul(br#"{"a":"x\u0000"}"#));
        assert!(json_has_nul(br#"{"a":"\\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"\u0001"}"#));
    }

    #[test]
    fn usernames_follow_the_rules() {
        for ok in ["abc", "a.b-c_d", &"x".repeat(50)] {
            let mut e = vec![];
            check_username(ok, &mut e);
            assert!(e.is_empty(), "{ok}");
        }
        for bad in [
            "ab",
            &"x".repeat(51),
            "has space",
            "emoji😀",
            "semi;colon",
            "",
        ] {
            let mut e = vec![];
            check_username(bad, &mut e);
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_72_bytes() {
        let check = |p: &str| {
            let mut e = vec![];
            check_password("password", p, &mut e);
            e.is_empty()
        };
        assert!(check("12345678"));
        assert!(check(&"a".repeat(72)));
        assert!(!check("1234567"));
        assert!(!check(&"a".repeat(73)));
        // 24 three-byte characters = 72 bytes; one more is 75 bytes.
        assert!(check(&"€".repeat(24)));
        assert!(!check(&"€".repeat(25)));
    }
}
