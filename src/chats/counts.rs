//! What a member has not read yet, as SQL: chats, read markers and their
//! acks count alike with these.

use super::UNREAD_COUNT_MAX;

/// SQL (bigint): the unread count of member `user` of chat `chat` whose
/// read marker is `marker` (SQL expressions): the messages after it that
/// others sent, counted up to [`UNREAD_COUNT_MAX`]. Chats and read-marker
/// answers alike count with it.
pub fn unread_count_sql(chat: &str, user: &str, marker: &str) -> String {
    format!(
        "(select count(*) from (select 1 from messages x
           where x.chat_id = {chat} and x.id > coalesce({marker}, 0)
             and x.sender_id is distinct from {user}
           limit {UNREAD_COUNT_MAX}) unread)"
    )
}

/// SQL (bigint): the unread mentions of member `user` of chat `chat` whose
/// read marker is `marker` (SQL expressions): the messages after it that
/// others sent and that mention them, counted up to [`UNREAD_COUNT_MAX`]
/// as [`unread_count_sql`] counts. The `mentions` table holds exactly
/// those (a message's own sender is never in it), so the count is one
/// index range.
pub fn mention_count_sql(chat: &str, user: &str, marker: &str) -> String {
    format!(
        "(select count(*) from (select 1 from mentions mx
           where mx.user_id = {user} and mx.chat_id = {chat}
             and mx.message_id > coalesce({marker}, 0)
           limit {UNREAD_COUNT_MAX}) mentioned)"
    )
}
