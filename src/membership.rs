//! The membership rule: a user reads or changes a chat, its messages and its
//! events only while a member of it, and a non-member is told the chat (or
//! message) does not exist — 404, never 403, so ids cannot be probed.
//!
//! Every query that acts for a user states the rule with one of these
//! fragments, in the statement that reads or changes the data (never as a
//! separate check that a concurrent change could outdate). And nobody is
//! made a member by someone they blocked ([`ensure_not_blocked_by`]), nor
//! while their account is being deleted ([`lock_users`]).
//!
//! Lock order: a transaction locks users, then chats (in id order), then
//! memberships, and the event log's `event_seq` last (`events::emit`), as
//! account deletion does; one that waited for a lock out of this order
//! could wait for a transaction waiting for it (a deadlock).

use crate::auth::token_current_sql;
use crate::error::ApiError;
use tokio_postgres::GenericClient;

/// SQL: whether user `user` is a member of chat `chat` (both SQL expressions).
pub fn is_member(chat: &str, user: &str) -> String {
    format!(
        "exists (select 1 from chat_members member_of where member_of.chat_id = {chat} and member_of.user_id = {user})"
    )
}

/// SQL: joins user `user`'s membership of chat `chat` as `alias`, for
/// queries that also read the membership (admin flag, read marker); rows of
/// chats the user is not in drop out.
pub fn join_member(alias: &str, chat: &str, user: &str) -> String {
    format!("join chat_members {alias} on {alias}.chat_id = {chat} and {alias}.user_id = {user}")
}

/// Fails with 404 `not_found` unless user `user_id` is a member of chat
/// `chat_id`: for a read whose query (which states the rule itself) found
/// nothing, to tell an empty page from a chat the caller is not in.
pub async fn ensure_member(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
) -> Result<(), ApiError> {
    let member: bool = client
        .query_one(
            &format!("select {}", is_member("$1", "$2")),
            &[&chat_id, &user_id],
        )
        .await?
        .get(0);
    if member {
        Ok(())
    } else {
        Err(ApiError::ChatNotFound)
    }
}

/// Fails with 403 `blocked` when any of `others` has blocked `user_id`:
/// nobody is put into a chat by someone they blocked.
pub async fn ensure_not_blocked_by(
    client: &impl GenericClient,
    user_id: i64,
    others: &[i64],
) -> Result<(), ApiError> {
    let blocked = client
        .query_opt(
            "select 1 from blocks where blocked_id = $1 and blocker_id = any($2) limit 1",
            &[&user_id, &others],
        )
        .await?;
    match blocked {
        Some(_) => Err(ApiError::Blocked),
        None => Ok(()),
    }
}

/// Those of `ids` that name an account, each locked `for key share` until
/// the transaction ends, so that a deletion of the account waits for it:
/// rows the transaction goes on to insert referencing these users (a block,
/// memberships) cannot lose their user halfway (a foreign-key violation),
/// and the deletion then removes them with the rest of the account. Users
/// are locked before chats, in id order, as account deletion locks them.
pub async fn lock_users(client: &impl GenericClient, ids: &[i64]) -> Result<Vec<i64>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "select id from users where id = any($1) order by id for key share",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// SQL: the CTEs `locked_users` and `locked_members`: of the triples of
/// arrays `chats`, `users` and `versions` (SQL expressions), each a chat, a
/// user acting in it and the version of the token they act with, those
/// where the user is a member and the token still good
/// (`chat_id, user_id, token_version`; see `auth::Sealed`), the users
/// locked `for key share` first, then each chat `for no key
/// update` and each membership `for key share`, by chat and user. In the
/// lock order, so that a statement acting as these members (a send) can
/// then change the chat, reference the users and append to the event log:
/// a membership change, a chat or account deletion under way finishes
/// first, and a pair whose membership or chat it removed drops out, where
/// a plain membership check would still see them (the statement's
/// snapshot predates the wait).
pub fn lock_members(chats: &str, users: &str, versions: &str) -> String {
    format!(
        "locked_users as (
             select id, token_version from users where id = any({users}) order by id
             for key share
         ), locked_members as (
             select mm.chat_id, mm.user_id, lu.token_version
             from locked_users lu
             join chat_members mm on mm.user_id = lu.id
             join chats c on c.id = mm.chat_id
             where exists (
                 select 1 from unnest({chats}, {users}, {versions}) acting (chat_id, user_id, version)
                 where acting.chat_id = mm.chat_id and acting.user_id = mm.user_id
                   and {current})
             order by mm.chat_id, mm.user_id
             for no key update of c for key share of mm
         )",
        current = token_current_sql("lu", "acting.version"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragments_name_the_chat_and_the_user_given() {
        assert_eq!(
            is_member("m.chat_id", "$2"),
            "exists (select 1 from chat_members member_of where member_of.chat_id = m.chat_id and member_of.user_id = $2)"
        );
        assert_eq!(
            join_member("m", "c.id", "$1"),
            "join chat_members m on m.chat_id = c.id and m.user_id = $1"
        );
    }
}
