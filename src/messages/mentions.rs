//! Mentions: `@username` in a message's text names a member of its chat.
//! The names are picked out here, where sends are validated (spread over
//! the request threads, not the one backend that commits sends); the send
//! and edit statements resolve them to members in the same round trip
//! ([`mentions_sql`]). `GET /api/v1/mentions` pages through the messages
//! that mention the caller.

use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::http::{Context, JsonText, Query, authed, query, respond, validated, with};
use crate::membership::is_member;
use crate::message_json::message_rest_sql;
use std::sync::LazyLock;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The most names one message is searched for members by: a message
/// naming more mentions its first this many.
pub const MAX_MENTION_NAMES: usize = 50;

/// Usernames are 3 to 50 of these (`validate::check_username`).
fn in_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The lowercased names `content` mentions, each once in order of first
/// appearance, space-separated as the statements take them; `None` when
/// there are none. A mention is `@` (not inside a word or an address like
/// `bob@example.com`) followed by a username; one ending a sentence
/// (`@bob.`) is also read without its trailing dots and dashes.
pub fn mention_names(content: &str) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for (at, _) in content.match_indices('@') {
        let inside_word = content[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || in_name(c));
        if inside_word {
            continue;
        }
        let rest = &content[at + 1..];
        let name = &rest[..rest.find(|c: char| !in_name(c)).unwrap_or(rest.len())];
        for candidate in [name, name.trim_end_matches(['.', '-'])] {
            let candidate = candidate.to_ascii_lowercase();
            if (3..=50).contains(&candidate.len()) && !names.contains(&candidate) {
                names.push(candidate);
            }
        }
        if names.len() >= MAX_MENTION_NAMES {
            names.truncate(MAX_MENTION_NAMES);
            break;
        }
    }
    (!names.is_empty()).then(|| names.join(" "))
}

/// SQL (bigint[]): the members of chat `chat` named by `names` (an SQL
/// text of [`mention_names`], or null), each once, in order of mention.
pub fn mentions_sql(names: &str, chat: &str) -> String {
    format!(
        "case when {names} is null then '{{}}'::bigint[] else array(
             select u.id
             from unnest(string_to_array({names}, ' ')) with ordinality as named (name, at)
             join users u on lower(u.username) = named.name
             where {member}
             group by u.id order by min(named.at)) end",
        member = is_member(chat, "u.id"),
    )
}

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    feed(ctx)
}

/// GET /api/v1/mentions?limit&before_id
fn feed(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("mentions")
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_mentions)
        .map(respond)
}

/// The messages by others that mention user `$1` in chats they are in,
/// before message `$2` (or null), newest first, `$3` of them. The user's
/// mentions are read in id order from the primary key and the page is cut
/// before the messages are built.
static FEED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select {body}::text from (
             select msg.* from mentions x join messages msg on msg.id = x.message_id
             where x.user_id = $1 and ($2::bigint is null or x.message_id < $2)
               and {member}
             order by x.message_id desc
             limit $3
         ) m
         left join users u on u.id = m.sender_id
         order by m.id desc",
        body = message_rest_sql("m", "u", "$1"),
        member = is_member("x.chat_id", "$1"),
    )
});

async fn list_mentions(user: AuthUser, q: Query, pool: Pool) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let limit = q.page(&mut errors).limit;
    let before = q.int("before_id", 1, i64::MAX, &mut errors);
    validated(errors)?;
    let client = pool.get().await?;
    let rows = client
        .query(FEED_SQL.as_str(), &[&user.id, &before, &limit])
        .await?;
    let bodies: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    Ok(JsonText(format!("[{}]", bodies.join(","))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mention_is_an_at_sign_and_a_username_outside_a_word() {
        let cases = [
            ("hi @Alice and @bob", Some("alice bob")),
            ("@carol: look", Some("carol")),
            ("(@dave)", Some("dave")),
            ("thanks @erin.", Some("erin. erin")),
            ("@f.g-h_i please", Some("f.g-h_i")),
            ("@bob @BOB @Bob", Some("bob")),
            ("mail bob@example.com", None),
            ("é@bob", None),
            ("@@bob", Some("bob")),
            ("@ab or @", None),
            ("no mentions here", None),
            ("@bob's turn", Some("bob")),
        ];
        for (content, names) in cases {
            assert_eq!(mention_names(content).as_deref(), names, "{content}");
        }
    }

    #[test]
    fn a_message_is_searched_for_at_most_50_names() {
        let content: String = (0..80).map(|i| format!("@user{i:03} ")).collect();

        let names = mention_names(&content).unwrap();

        let names: Vec<&str> = names.split(' ').collect();
        assert_eq!(names.len(), MAX_MENTION_NAMES);
        assert_eq!(names[0], "user000");
        assert_eq!(names[49], "user049");
    }

    #[test]
    fn a_name_longer_than_a_username_is_none() {
        let long = format!("@{}", "x".repeat(51));
        assert_eq!(mention_names(&long), None);
    }
}
