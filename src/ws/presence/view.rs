//! The node's view of the presence of the members of recently read chats,
//! so that the presence snapshots of a storm of arrivals read each chat's
//! members once per node instead of once per batch.
//!
//! A chat's members are read from the database once ([`View::cached`],
//! [`View::read_done`]); from then on their presence follows the presence
//! notices this node's listener receives ([`View::noticed`]), which every
//! node gets for every change, in commit order. A snapshot built from the
//! view after its connection subscribed is as right as one read then: a
//! notice applied before it is in it, and one applied after it reaches the
//! connection live, after the snapshot (its fan-out starts after the
//! notice is applied, and the writer holds `presence` frames until the
//! snapshot is sent), exactly as for a change committed after a read.
//!
//! What the notices do not carry, the view cannot follow, so it forgets:
//! a chat whose membership changed (its events, [`View::membership_changed`]),
//! everything when an account is deleted or the listener lost its
//! connection (notices sent meanwhile are gone), and everything every
//! `ws.presence_view_ttl_ms`, which bounds how long a `last_seen` touched
//! without a notice (`POST /api/v1/users/last-seen`) can stay as it was read.
//! A TTL of 0 keeps nothing: every snapshot reads its members.

use super::snapshot::Member;
use crate::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The default, [`View::default`], keeps nothing.
#[derive(Default)]
pub struct View {
    /// How long what is read is kept before it is read again.
    ttl: Duration,
    inner: Mutex<Inner>,
    /// Chats served from the view and chats left to read
    /// (`chatapp_presence_snapshot_chats_total`), when counted.
    served: Option<(Counter, Counter)>,
}

#[derive(Default)]
struct Inner {
    /// Whether the listener is up: until it is, notices may be missed, so
    /// nothing read is kept.
    listening: bool,
    /// Bumped whenever the view forgets everything, so a read begun before
    /// that is not kept after it.
    generation: u64,
    /// When what is kept began to be read.
    since: Option<Instant>,
    /// The members of each chat kept.
    chats: HashMap<i64, Vec<i64>>,
    /// Presence as read or noticed since.
    users: HashMap<i64, Member>,
    /// The read under way (one at a time: the snapshot reader's).
    reading: Option<Reading>,
}

/// What changed while a read was under way: the read may not show it, so
/// its rows must not replace it.
#[derive(Default)]
struct Reading {
    chats: HashSet<i64>,
    users: HashSet<i64>,
}

/// A read of the chats the view did not hold, to be handed back to
/// [`View::read_done`].
pub struct Ticket {
    generation: u64,
}

impl Inner {
    fn forget(&mut self) {
        self.generation += 1;
        self.since = None;
        self.chats.clear();
        self.users.clear();
        self.reading = None;
    }
}

impl View {
    pub fn new(ttl: Duration) -> View {
        View {
            ttl,
            inner: Mutex::default(),
            served: None,
        }
    }

    /// A node's view, counting the chats [`View::cached`] serves and leaves
    /// to be read in `metrics`.
    pub fn for_node(ttl: Duration, metrics: &Metrics) -> View {
        let served = (
            metrics.snapshot_chats("view"),
            metrics.snapshot_chats("read"),
        );
        View {
            served: Some(served),
            ..View::new(ttl)
        }
    }

    /// The members of those of `chats` (chat id to member count, as just
    /// read) the view holds, as it holds them now, and the chats it does not
    /// (to read, then [`View::read_done`]). A chat held with another number
    /// of members than it has now changed before its event arrived here: it
    /// is read again.
    pub fn cached(
        &self,
        chats: &HashMap<i64, i64>,
    ) -> (HashMap<i64, Vec<Member>>, Vec<i64>, Ticket) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.since.is_some_and(|t| t.elapsed() >= self.ttl) {
            inner.forget();
        }
        let mut held = HashMap::new();
        let mut missing = Vec::new();
        for (&chat, &count) in chats {
            match inner.chats.get(&chat) {
                Some(ids) if ids.len() as i64 == count => {
                    let members = ids.iter().filter_map(|u| inner.users.get(u).cloned());
                    held.insert(chat, members.collect());
                }
                _ => missing.push(chat),
            }
        }
        if !missing.is_empty() && inner.listening && !self.ttl.is_zero() {
            inner.reading = Some(Reading::default());
            inner.since.get_or_insert_with(Instant::now);
        }
        let ticket = Ticket {
            generation: inner.generation,
        };
        drop(inner);
        if let Some((from_view, read)) = &self.served {
            from_view.inc_by(held.len() as u64);
            read.inc_by(missing.len() as u64);
        }
        (held, missing, ticket)
    }

    /// Keeps what a read begun with `ticket` returned, `members` by chat,
    /// unless the view forgot everything meanwhile; a chat whose membership
    /// changed, or a user noticed, while it was read keeps what came later.
    pub fn read_done(&self, ticket: Ticket, members: &HashMap<i64, Vec<Member>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if ticket.generation != inner.generation || !inner.listening {
            return;
        }
        let Some(reading) = inner.reading.take() else {
            return;
        };
        for (&chat, list) in members {
            if reading.chats.contains(&chat) {
                continue;
            }
            for m in list {
                if !reading.users.contains(&m.user_id) {
                    inner.users.insert(m.user_id, m.clone());
                }
            }
            inner
                .chats
                .insert(chat, list.iter().map(|m| m.user_id).collect());
        }
    }

    /// A presence notice, as the listener receives it (`last_seen` in
    /// RFC 3339, as notices carry it).
    pub fn noticed(&self, user_id: i64, online: bool, last_seen: Option<&str>) {
        let last_seen = last_seen.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let member = Member::new(user_id, online, last_seen);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.since.is_some_and(|t| t.elapsed() >= self.ttl) {
            inner.forget();
        }
        if let Some(reading) = &mut inner.reading {
            reading.users.insert(member.user_id);
        }
        // Kept for anyone: a read under way may list them.
        if inner.since.is_some() {
            inner.users.insert(member.user_id, member);
        }
    }

    /// Chat `chat_id`'s members changed (an event that subscribes or
    /// unsubscribes someone).
    pub fn membership_changed(&self, chat_id: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = &mut inner.reading {
            reading.chats.insert(chat_id);
        }
        inner.chats.remove(&chat_id);
    }

    /// Forgets everything: an account was deleted (its memberships went
    /// with it, without events).
    pub fn forget(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
    }

    /// The listener is up (`true`, having just LISTENed) or has lost its
    /// connection (`false`): either way what was kept may have missed
    /// notices.
    pub fn set_listening(&self, up: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.forget();
        inner.listening = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user_id: i64, online: bool) -> Member {
        Member::new(user_id, online, None)
    }

    /// A view that keeps what it reads for a minute, its listener up.
    fn keeping() -> View {
        let view = View::new(Duration::from_secs(60));
        view.set_listening(true);
        view
    }

    /// Chat id to member count.
    fn counts(chats: &[(i64, i64)]) -> HashMap<i64, i64> {
        chats.iter().copied().collect()
    }

    /// Reads chat 1 (members 10 and 11, offline) into `view`.
    fn read_chat_1(view: &View) {
        let (_, missing, ticket) = view.cached(&counts(&[(1, 2)]));
        assert_eq!(missing, vec![1]);
        view.read_done(
            ticket,
            &HashMap::from([(1, vec![member(10, false), member(11, false)])]),
        );
    }

    fn states(members: &[Member]) -> Vec<(i64, bool)> {
        let mut out: Vec<_> = members.iter().map(|m| (m.user_id, m.online)).collect();
        out.sort();
        out
    }

    #[test]
    fn a_chat_read_once_is_served_with_the_presence_noticed_since() {
        let view = keeping();
        read_chat_1(&view);

        view.noticed(11, true, None);
        let (held, missing, _) = view.cached(&counts(&[(1, 2)]));

        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(states(&held[&1]), vec![(10, false), (11, true)]);
    }

    #[test]
    fn what_changed_while_a_chat_was_read_is_not_replaced_by_the_read() {
        let view = keeping();
        let (_, _, ticket) = view.cached(&counts(&[(1, 2), (2, 1)]));

        // Noticed after the read was sent: the read may not show it.
        view.noticed(11, true, None);
        view.membership_changed(2);
        view.read_done(
            ticket,
            &HashMap::from([
                (1, vec![member(10, false), member(11, false)]),
                (2, vec![member(12, false)]),
            ]),
        );
        let (held, missing, _) = view.cached(&counts(&[(1, 2), (2, 1)]));

        assert_eq!(states(&held[&1]), vec![(10, false), (11, true)]);
        assert_eq!(missing, vec![2], "a chat changed while read is read again");
    }

    #[test]
    fn a_chat_whose_members_changed_is_read_again() {
        let view = keeping();
        read_chat_1(&view);
        let (_, missing, _) = view.cached(&counts(&[(1, 3)]));
        assert_eq!(missing, vec![1], "kept with 2 members, it has 3 now");

        let view = keeping();
        read_chat_1(&view);
        view.membership_changed(1);
        let (_, missing, _) = view.cached(&counts(&[(1, 2)]));
        assert_eq!(missing, vec![1], "its event arrived");
    }

    #[test]
    fn nothing_kept_survives_a_listener_reconnect_an_account_deletion_or_the_ttl() {
        let view = keeping();
        read_chat_1(&view);
        view.set_listening(false);
        view.set_listening(true);
        assert_eq!(view.cached(&counts(&[(1, 2)])).1, vec![1], "reconnect");

        read_chat_1(&view);
        view.forget();
        assert_eq!(view.cached(&counts(&[(1, 2)])).1, vec![1], "deletion");

        let view = View::new(Duration::from_millis(1));
        view.set_listening(true);
        read_chat_1(&view);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(view.cached(&counts(&[(1, 2)])).1, vec![1], "ttl");
    }

    #[test]
    fn nothing_is_kept_while_the_listener_is_down_or_with_a_ttl_of_zero() {
        for view in [View::new(Duration::from_secs(60)), View::default()] {
            if view.ttl.is_zero() {
                view.set_listening(true);
            }
            let (_, _, ticket) = view.cached(&counts(&[(1, 1)]));
            view.read_done(ticket, &HashMap::from([(1, vec![member(10, false)])]));
            assert_eq!(view.cached(&counts(&[(1, 1)])).1, vec![1]);
        }
    }

    #[test]
    fn a_read_begun_before_the_view_forgot_is_not_kept() {
        let view = keeping();
        let (_, _, ticket) = view.cached(&counts(&[(1, 1)]));
        view.forget();
        view.read_done(ticket, &HashMap::from([(1, vec![member(10, false)])]));
        assert_eq!(view.cached(&counts(&[(1, 1)])).1, vec![1]);
    }
}
