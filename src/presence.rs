//! The presence rules, stated once for every query that shows presence.
//!
//! A user is online while any live node holds a session for them
//! (`presence_sessions`, kept by `ws::presence`), and a viewer sees that
//! only when neither has blocked the other: to each other they appear
//! offline. Per-user presence (live `presence` frames, `presence_snapshot`)
//! is shared only in chats of at most `ws.presence_max_members` members; in
//! larger chats members ask for it (`GET /api/v1/chats/:id/presence`), so a
//! member's arrival costs a bounded number of frames instead of one per
//! member of every chat they are in.

/// SQL: whether `viewer` sees `user` online (both SQL expressions): `user`
/// has a session ([`has_session`]) and neither has blocked the other. (The
/// presence snapshot reads sessions for many viewers at once and applies
/// the blocks of each itself, `ws::presence::snapshot`.)
///
/// Each direction of a block is its own primary-key (or "blocked by")
/// lookup.
pub fn online(user: &str, viewer: &str) -> String {
    format!(
        "({session}
          and not exists (select 1 from blocks seen_b
                          where seen_b.blocker_id = {viewer} and seen_b.blocked_id = {user})
          and not exists (select 1 from blocks seen_b
                          where seen_b.blocker_id = {user} and seen_b.blocked_id = {viewer}))",
        session = has_session(user),
    )
}

/// SQL: whether `user` has a session on a live node, as anyone not hidden
/// from them by a block sees it.
///
/// Asked per user: the session probe is fenced (`offset 0`) so PostgreSQL
/// looks each user up by the primary key instead of hashing every session
/// on the cluster first, which it otherwise prefers for a few hundred users
/// and which made a connection's presence snapshot cost as much as every
/// online user, not as its peers.
pub fn has_session(user: &str) -> String {
    format!(
        "exists (select 1 from presence_sessions seen_s where seen_s.user_id = {user} offset 0)"
    )
}

/// SQL: whether chat row `chat` (an alias of `chats`) shares per-user
/// presence, `max` being `ws.presence_max_members`.
pub fn shares_presence(chat: &str, max: &str) -> String {
    format!("{chat}.member_count <= {max}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragments_name_the_users_and_the_chat_given() {
        let sql = online("m.user_id", "$2");
        assert!(sql.contains("seen_s.user_id = m.user_id"), "{sql}");
        assert!(
            sql.contains("seen_b.blocker_id = $2 and seen_b.blocked_id = m.user_id"),
            "{sql}"
        );
        assert!(
            sql.contains("seen_b.blocker_id = m.user_id and seen_b.blocked_id = $2"),
            "{sql}"
        );
        assert_eq!(shares_presence("c", "$3"), "c.member_count <= $3");
    }
}
