//! Blocks between users, as each connection holds them: presence and
//! typing are ephemeral frames walked to a room, and a connection whose
//! user blocked the sender (or, for presence, was blocked by them) is left
//! out. A connection reads its blocks with its membership snapshot; changes
//! heard before it is active are applied after the snapshot, so the last
//! change wins however the two interleave.

use super::{ConnId, Inner, Registry};
use crate::ws::ids::IdSet;
use std::collections::HashMap;

/// `blocker` blocked (`on`) or unblocked `blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockChange {
    pub blocker: i64,
    pub blocked: i64,
    pub on: bool,
}

/// Whose ephemeral frame a broadcast carries, and which blocks hide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub user_id: i64,
    pub hidden: Hidden,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// From users who blocked the sender (typing).
    FromBlockers,
    /// From users who blocked the sender and users the sender blocked
    /// (presence: neither is shown the other).
    BothWays,
}

/// Whom a connection's user blocked, and who blocked them.
#[derive(Default)]
pub(super) struct Blocks {
    blocked: IdSet<i64>,
    blocked_by: IdSet<i64>,
    /// Until activation: changes heard since registration.
    heard: Option<Vec<BlockChange>>,
}

impl Blocks {
    pub(super) fn pending() -> Blocks {
        Blocks {
            heard: Some(Vec::new()),
            ..Blocks::default()
        }
    }

    /// Takes the snapshot's blocks, then the changes heard while it was read.
    pub(super) fn activate(&mut self, blocked: &[i64], blocked_by: &[i64], user_id: i64) {
        self.blocked = blocked.iter().copied().collect();
        self.blocked_by = blocked_by.iter().copied().collect();
        for change in self.heard.take().unwrap_or_default() {
            self.apply(change, user_id);
        }
    }

    fn apply(&mut self, change: BlockChange, user_id: i64) {
        if let Some(heard) = &mut self.heard {
            heard.push(change);
            return;
        }
        let (set, other) = if change.blocker == user_id {
            (&mut self.blocked, change.blocked)
        } else {
            (&mut self.blocked_by, change.blocker)
        };
        if change.on {
            set.insert(other);
        } else {
            set.remove(&other);
        }
    }

    fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.blocked_by.is_empty()
    }

    pub(super) fn hides(&self, sender: Sender) -> bool {
        self.blocked.contains(&sender.user_id)
            || (sender.hidden == Hidden::BothWays && self.blocked_by.contains(&sender.user_id))
    }
}

impl Registry {
    /// Applies a block change to the connections of both users on this node.
    pub fn apply_block(&self, change: BlockChange) {
        let mut inner = self.lock();
        let conns: Vec<(ConnId, i64)> = [change.blocker, change.blocked]
            .into_iter()
            .flat_map(|u| {
                let ids = inner.users.get(&u).into_iter().flatten().copied();
                ids.map(move |id| (id, u)).collect::<Vec<_>>()
            })
            .collect();
        for (id, user_id) in conns {
            if let Some(conn) = inner.conns.get_mut(&id) {
                conn.blocks.apply(change, user_id);
                if !conn.blocks.is_empty() {
                    inner.blocks_in_use = true;
                }
            }
        }
    }

    /// Sets every active connection's blocks to those of `pairs` (blocker,
    /// blocked) that involve its user: all the blocks of this node's users,
    /// read again after the listener reconnected (a block announced while
    /// it was away is gone with the notice). A connection still opening
    /// keeps what its session start reads and hears.
    pub fn reload_blocks(&self, pairs: &[(i64, i64)]) {
        let mut blocked: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut blocked_by: HashMap<i64, Vec<i64>> = HashMap::new();
        for &(blocker, target) in pairs {
            blocked.entry(blocker).or_default().push(target);
            blocked_by.entry(target).or_default().push(blocker);
        }
        let of = |map: &HashMap<i64, Vec<i64>>, user_id: i64| {
            map.get(&user_id).cloned().unwrap_or_default()
        };
        let mut inner = self.lock();
        let mut in_use = false;
        for conn in inner.conns.values_mut() {
            if conn.blocks.heard.is_some() {
                continue;
            }
            let user_id = conn.outbox.user_id;
            conn.blocks
                .activate(&of(&blocked, user_id), &of(&blocked_by, user_id), user_id);
            in_use |= !conn.blocks.is_empty();
        }
        inner.blocks_in_use |= in_use;
    }
}

impl Inner {
    /// Whether connection `id` must not get `sender`'s frame.
    pub(super) fn hides(&self, id: ConnId, sender: Sender) -> bool {
        self.blocks_in_use
            && self
                .conns
                .get(&id)
                .is_some_and(|conn| conn.blocks.hides(sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_heard_while_pending_apply_after_the_snapshot() {
        // The snapshot (blocked 7) was read after "unblock 7" was heard.
        let mut blocks = Blocks::pending();
        let me = 1;
        blocks.apply(
            BlockChange {
                blocker: me,
                blocked: 7,
                on: true,
            },
            me,
        );
        blocks.apply(
            BlockChange {
                blocker: me,
                blocked: 7,
                on: false,
            },
            me,
        );
        blocks.apply(
            BlockChange {
                blocker: 9,
                blocked: me,
                on: true,
            },
            me,
        );

        blocks.activate(&[7], &[], me);

        let typing = |user_id| Sender {
            user_id,
            hidden: Hidden::FromBlockers,
        };
        let presence = |user_id| Sender {
            user_id,
            hidden: Hidden::BothWays,
        };
        assert!(!blocks.hides(typing(7)), "the last change wins");
        assert!(
            !blocks.hides(typing(9)),
            "9 blocked me: I still hear 9 type"
        );
        assert!(
            blocks.hides(presence(9)),
            "but neither sees the other's presence"
        );
    }
}
