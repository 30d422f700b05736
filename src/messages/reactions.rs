//! Reactions: a member marks a message with an emoji (or a `:shortcode:`),
//! at most once per emoji; a message carries at most [`MAX_REACTIONS`]
//! different ones. Each change is a durable event to the chat's members.

use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::{self, EventKind, NewEvent};
use crate::http::{Context, JsonText, authed, id_param, percent_decode, respond, with};
use crate::membership::join_member;
use crate::message_json::message_rest_sql;
use serde::Serialize;
use std::sync::LazyLock;
use tokio_postgres::GenericClient;
use unicode_segmentation::UnicodeSegmentation;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Different emoji one message may carry.
pub const MAX_REACTIONS: i64 = 20;
/// An emoji's longest encoding: enough for the longest standard sequences
/// (a family, a flag of a subdivision), short of a stack of modifiers.
const EMOJI_MAX_BYTES: usize = 32;
/// A shortcode's longest name.
const SHORTCODE_MAX_CHARS: usize = 32;

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    react(ctx).or(unreact(ctx)).unify()
}

/// `/messages/:id/reactions/:emoji`: the message id and the raw emoji segment.
fn reaction_path() -> impl Filter<Extract = (i64, String), Error = Rejection> + Clone {
    warp::path("messages")
        .and(id_param())
        .and(warp::path("reactions"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
}

/// PUT /api/v1/messages/:id/reactions/:emoji
fn react(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    reaction_path()
        .and(warp::put())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(add_reaction)
        .map(respond)
}

/// DELETE /api/v1/messages/:id/reactions/:emoji
fn unreact(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    reaction_path()
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(remove_reaction)
        .map(respond)
}

/// The emoji a path segment names, exactly as sent (percent-decoded): one
/// emoji — a single grapheme cluster of at most [`EMOJI_MAX_BYTES`] that is
/// neither plain ASCII nor invisible — or a shortcode `:name:`, the name 1
/// to [`SHORTCODE_MAX_CHARS`] of `a-z 0-9 _ + -`.
pub fn parse_emoji(segment: &str) -> Result<String, ApiError> {
    let text = percent_decode(segment, false).ok_or(ApiError::InvalidEmoji)?;
    if is_shortcode(&text) || is_emoji(&text) {
        Ok(text)
    } else {
        Err(ApiError::InvalidEmoji)
    }
}

fn is_shortcode(text: &str) -> bool {
    let Some(name) = text
        .strip_prefix(':')
        .and_then(|rest| rest.strip_suffix(':'))
    else {
        return false;
    };
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_+-".contains(&b);
    (1..=SHORTCODE_MAX_CHARS).contains(&name.len()) && name.bytes().all(allowed)
}

fn is_emoji(text: &str) -> bool {
    let mut clusters = text.graphemes(true);
    text.len() <= EMOJI_MAX_BYTES
        && !text.is_ascii()
        && clusters.next().is_some()
        && clusters.next().is_none()
        && text.chars().any(is_visible)
}

/// Not a space, a control or a character that only shapes its neighbours
/// (joiners, variation selectors, tags): a cluster of those alone shows
/// nothing.
fn is_visible(c: char) -> bool {
    let invisible = matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{E0000}'..='\u{E0FFF}');
    !(c.is_whitespace() || c.is_control() || invisible)
}

/// A reaction event's payload.
#[derive(Serialize)]
struct Reaction<'a> {
    chat_id: i64,
    message_id: i64,
    user_id: i64,
    emoji: &'a str,
}

impl Reaction<'_> {
    /// Appends this change to the log as a `kind` event of its chat.
    async fn emit(self, tx: &impl GenericClient, kind: EventKind) -> Result<(), ApiError> {
        events::emit(tx, &[NewEvent::new(self.chat_id, kind, self)]).await?;
        Ok(())
    }
}

/// The chat of message `id` if user `user_id` is a member of it, locking
/// the message against concurrent reactions (and its deletion) until the
/// transaction ends: the count of its emoji holds until the insert, and its
/// reaction events precede its deletion's. Edits and replies do not wait.
pub async fn lock_for_reaction(
    client: &impl GenericClient,
    id: i64,
    user_id: i64,
) -> Result<i64, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select m.chat_id from messages m {} where m.id = $1 for no key update of m",
            join_member("c", "m.chat_id", "$2")
        )
    });
    let row = client
        .query_opt(SQL.as_str(), &[&id, &user_id])
        .await?
        .ok_or(ApiError::MessageNotFound)?;
    Ok(row.get(0))
}

/// What adding a reaction came to.
enum Outcome {
    Added,
    /// The caller had reacted so already.
    Present,
    /// The message carries [`MAX_REACTIONS`] other emoji.
    Full,
}

/// Adds `user_id`'s `emoji` to message `id` (locked), unless it is there
/// or the message has [`MAX_REACTIONS`] other emoji.
async fn insert_reaction(
    client: &impl GenericClient,
    id: i64,
    user_id: i64,
    emoji: &str,
) -> Result<Outcome, ApiError> {
    let row = client
        .query_one(
            "with ins as (
                 insert into reactions (message_id, emoji, user_id)
                 select $1, $3, $2
                 where exists (select 1 from reactions where message_id = $1 and emoji = $3)
                    or (select count(distinct emoji) from reactions where message_id = $1) < $4
                 on conflict do nothing
                 returning 1
             )
             select exists (select 1 from ins),
                    exists (select 1 from reactions
                            where message_id = $1 and emoji = $3 and user_id = $2)",
            &[&id, &user_id, &emoji, &MAX_REACTIONS],
        )
        .await?;
    Ok(match (row.get(0), row.get(1)) {
        (true, _) => Outcome::Added,
        (false, true) => Outcome::Present,
        (false, false) => Outcome::Full,
    })
}

/// The message as `user_id` reads it over REST.
async fn message_for(
    client: &impl GenericClient,
    id: i64,
    user_id: i64,
) -> Result<String, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {}::text from messages m left join users u on u.id = m.sender_id
             where m.id = $1",
            message_rest_sql("m", "u", "$2")
        )
    });
    Ok(client
        .query_one(SQL.as_str(), &[&id, &user_id])
        .await?
        .get(0))
}

async fn add_reaction(
    id: i64,
    segment: String,
    user: AuthUser,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let emoji = parse_emoji(&segment)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let chat_id = lock_for_reaction(&tx, id, user.id).await?;
    let added = insert_reaction(&tx, id, user.id, &emoji).await?;
    if let Outcome::Full = added {
        return Err(ApiError::TooManyReactions { max: MAX_REACTIONS });
    }
    let body = message_for(&tx, id, user.id).await?;
    if let Outcome::Added = added {
        let reaction = Reaction {
            chat_id,
            message_id: id,
            user_id: user.id,
            emoji: &emoji,
        };
        reaction.emit(&tx, EventKind::ReactionAdded).await?;
    }
    tx.commit().await?;
    Ok(JsonText(body))
}

async fn remove_reaction(
    id: i64,
    segment: String,
    user: AuthUser,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let emoji = parse_emoji(&segment)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let chat_id = lock_for_reaction(&tx, id, user.id).await?;
    let removed = tx
        .execute(
            "delete from reactions where message_id = $1 and emoji = $2 and user_id = $3",
            &[&id, &emoji, &user.id],
        )
        .await?;
    if removed > 0 {
        let reaction = Reaction {
            chat_id,
            message_id: id,
            user_id: user.id,
            emoji: &emoji,
        };
        reaction.emit(&tx, EventKind::ReactionRemoved).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_emoji_or_a_shortcode_is_a_reaction() {
        for ok in [
            "👍",
            "%F0%9F%91%8D",
            "👍🏽",
            "❤️",
            "1️⃣",
            "👨‍👩‍👧‍👦",
            "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
            ":+1:",
            "%3Aparty_parrot%3A",
            ":a:",
            &format!(":{}:", "x".repeat(32)),
            "é",
        ] {
            assert!(parse_emoji(ok).is_ok(), "{ok}");
        }
        assert_eq!(parse_emoji("%3A%2B1%3A").unwrap(), ":+1:");
        assert_eq!(parse_emoji("%E2%9D%A4%EF%B8%8F").unwrap(), "❤️");
    }

    #[test]
    fn anything_else_is_not() {
        for bad in [
            "",
            "a",
            "ok",
            "%00",
            ":",
            "::",
            ":Thumbs:",
            ":a b:",
            ":a:b:",
            &format!(":{}:", "x".repeat(33)),
            "👍👍",
            "👍a",
            " 👍",
            "%F0%9F",
            "%zz",
            "\u{200B}",
            "\u{FE0F}",
            "\u{00A0}",
            "\u{2028}",
            &"\u{0301}".repeat(20),
        ] {
            assert!(parse_emoji(bad).is_err(), "{bad:?}");
        }
    }
}
