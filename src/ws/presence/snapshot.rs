//! What a connection is told of presence when it opens: one
//! `presence_snapshot` frame right after `ready`, with the presence of the
//! users it shares presence with (`crate::presence`), so it need not wait
//! for each of them to change.
//!
//! Read after the connection is subscribed to its chats: a change committed
//! after this read reaches the connection live, after the snapshot; one
//! committed before it may arrive live as well, in order, so the last word
//! on each user is always the latest.

use super::rfc3339;
use crate::error::ApiError;
use crate::presence::{online, shares_presence};
use crate::ws::protocol::{PresenceState, ServerFrame};
use crate::ws::starts::{self, StartReads};
use std::sync::LazyLock;
use tokio_postgres::types::Type;

/// Users a snapshot lists at most: those online first, then the most
/// recently seen. Past it the frame says `truncated`.
pub const SNAPSHOT_USERS: i64 = 1_000;

/// Memberships of the user's chats a snapshot reads at most, taking the
/// chats most recently active first, so a user in thousands of chats costs
/// a bounded read; chats left out make the frame `truncated` too.
const SNAPSHOT_MEMBERSHIPS: i64 = 10_000;

/// SQL: user `$1`'s peers in their chats of at most `$2` members, within
/// `$3` memberships, at most `$4` of them: `(id, online, last_seen,
/// chats_left_out)`; one row with a null id when there are none.
pub static PRESENCE_SNAPSHOT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with mine as (
             select c.id,
                    sum(c.member_count) over (order by c.last_activity_at desc, c.id desc)
                        - c.member_count as before
             from chat_members m join chats c on c.id = m.chat_id
             where m.user_id = $1 and {shares}
         ), peers as (
             select distinct o.user_id
             from mine join chat_members o on o.chat_id = mine.id
             where mine.before < $3 and o.user_id <> $1
         )
         select x.id, x.online, x.last_seen, coalesce(s.left_out, false)
         from (select bool_or(before >= $3) as left_out from mine) s
         left join lateral (
             select u.id, {online} as online, u.last_seen
             from peers p join users u on u.id = p.user_id
             order by 2 desc, 3 desc nulls last, 1
             limit $4
         ) x on true
         order by x.online desc, x.last_seen desc nulls last, x.id",
        shares = shares_presence("c", "$2"),
        online = online("u.id", "$1"),
    )
});

pub const PRESENCE_SNAPSHOT_TYPES: &[Type] = &[Type::INT8; 4];

/// The `presence_snapshot` frame for user `user_id`, `max_members` being
/// `ws.presence_max_members`.
pub async fn snapshot_frame(
    reads: &StartReads,
    user_id: i64,
    max_members: usize,
) -> Result<String, ApiError> {
    let lent = reads.get().await?;
    let rows = lent
        .conn
        .client
        .query(
            &lent.conn.statements[starts::PRESENCE],
            &[
                &user_id,
                &(max_members as i64),
                &SNAPSHOT_MEMBERSHIPS,
                &(SNAPSHOT_USERS + 1),
            ],
        )
        .await?;
    drop(lent);
    let left_out = rows.first().is_some_and(|r| r.get::<_, bool>(3));
    let mut users: Vec<PresenceState> = rows
        .iter()
        .filter_map(|r| {
            Some(PresenceState {
                user_id: r.get::<_, Option<i64>>(0)?,
                online: r.get(1),
                last_seen: rfc3339(r.get(2)),
            })
        })
        .collect();
    let truncated = left_out || users.len() as i64 > SNAPSHOT_USERS;
    users.truncate(SNAPSHOT_USERS as usize);
    Ok(ServerFrame::PresenceSnapshot { users, truncated }.to_text(None))
}
