//! The room registry: which connections receive which chat's events.
//!
//! `rooms` maps a chat id to the connections subscribed to it (members that
//! have not paused it with `leave_chat`); `users` maps a user to their
//! connections on this node. Each connection has a bounded queue drained by
//! its writer task. Everything sits behind one mutex held only for
//! non-blocking work (`try_push`), so dispatch never waits on a socket.
//!
//! Membership follows the event stream: `chat_created`/`member_added` subscribe
//! the addressed users' connections, `member_removed`/`chat_deleted`
//! unsubscribe them right after delivering that last event. A connection
//! registers *before* it reads its membership snapshot (as of event `L`) and
//! buffers whatever is dispatched meanwhile; on activation the buffered events
//! after `L` are applied to it alone. So no event falls between snapshot and
//! subscription, and none is applied twice.

mod blocks;
mod deliver;
mod dispatch;
mod queue;

pub use blocks::{BlockChange, Hidden, Sender};
pub use dispatch::DISPATCH_BATCH;
pub use queue::{PopError, QueueRx};

use crate::ws::close::{CloseReason, SLOW_CONSUMER};
use crate::ws::event::{Event, Frame};
use crate::ws::ids::{IdMap, IdSet};
use crate::ws::recent::ReplayCache;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

pub type ConnId = u64;

/// Queued in place of a frame to have the writer send a WebSocket ping. One
/// ticker pings every connection through its queue ([`Registry::ping_slice`]),
/// so a writer waits on its queue alone: a ping timer of its own would be
/// polled on every wake-up of every writer. Server frames are JSON, never
/// empty.
pub const PING: Frame = Frame::from_static("");

/// Connections are pinged in this many slices (by id), one slice per
/// `ping_interval_ms / PING_SLICES`, so many connections' pings spread out.
pub const PING_SLICES: u64 = 16;

/// Events a connection may buffer while it reads its snapshot; past this it is
/// closed as a slow consumer and resumes with `since`.
const PENDING_LIMIT: usize = 10_000;

/// The receiving half a connection's tasks own.
pub struct Registration {
    pub id: ConnId,
    pub rx: QueueRx,
    pub kill: watch::Receiver<Option<CloseReason>>,
}

/// What delivering to a connection takes, shared by the rooms it is in, so a
/// dispatch walks a room without looking each subscriber up.
struct Outbox {
    id: ConnId,
    user_id: i64,
    tx: queue::QueueTx,
    /// The snapshot id it was activated at: events up to it reach the client
    /// by replay (or predate it), so a late dispatch of one must not repeat it.
    snapshot_id: AtomicI64,
}

impl Outbox {
    fn awaits(&self, event: &Event) -> bool {
        self.snapshot_id.load(Ordering::Relaxed) < event.id
    }
}

struct Conn {
    outbox: Arc<Outbox>,
    token_version: i32,
    kill: watch::Sender<Option<CloseReason>>,
    member_of: HashSet<i64>,
    paused: HashSet<i64>,
    /// `Some` until activation: events dispatched since registration.
    pending: Option<Vec<Arc<Event>>>,
    blocks: blocks::Blocks,
}

#[derive(Default)]
struct Inner {
    conns: IdMap<ConnId, Conn>,
    rooms: IdMap<i64, IdMap<ConnId, Arc<Outbox>>>,
    users: IdMap<i64, IdSet<ConnId>>,
    pending: IdSet<ConnId>,
    /// The last durable event dispatched on this node.
    last_event_id: i64,
    /// Whether any connection here has blocks to honour (else broadcasts
    /// skip looking).
    blocks_in_use: bool,
}

/// What a connection learns from its snapshot (see [`Registry::activate`]).
pub struct Activation<'a> {
    /// Its user's chats as of event `snapshot_id`.
    pub chat_ids: &'a [i64],
    pub snapshot_id: i64,
    /// Users its user blocked, and users who blocked its user.
    pub blocked: &'a [i64],
    pub blocked_by: &'a [i64],
}

/// A user's first connection opened or last one closed on this node.
#[derive(Debug, Clone, Copy)]
pub struct PresenceChange {
    pub user_id: i64,
    pub online: bool,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Stats {
    pub connections: usize,
    pub connected_users: usize,
    pub active_rooms: usize,
    pub events_delivered: u64,
    pub slow_consumer_disconnects: u64,
}

pub struct Registry {
    inner: Mutex<Inner>,
    recent: ReplayCache,
    next_id: AtomicU64,
    queue_frames: usize,
    queue_bytes: usize,
    events_delivered: AtomicU64,
    slow_disconnects: AtomicU64,
    presence: mpsc::UnboundedSender<PresenceChange>,
}

impl Registry {
    pub fn new(
        queue_frames: usize,
        queue_bytes: usize,
        replay_cache_bytes: usize,
        presence: mpsc::UnboundedSender<PresenceChange>,
    ) -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            recent: ReplayCache::new(replay_cache_bytes),
            next_id: AtomicU64::new(1),
            queue_frames,
            queue_bytes,
            events_delivered: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            presence,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way that matters more than losing every connection would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest dispatched events (see [`ReplayCache`]).
    pub fn recent(&self) -> &ReplayCache {
        &self.recent
    }

    pub fn last_event_id(&self) -> i64 {
        self.lock().last_event_id
    }

    /// Starts at `id` without dispatching older events (a node starting up).
    pub fn advance_to(&self, id: i64) {
        let mut inner = self.lock();
        inner.last_event_id = inner.last_event_id.max(id);
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            connections: inner.conns.len(),
            connected_users: inner.users.len(),
            active_rooms: inner.rooms.len(),
            events_delivered: self.events_delivered.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_disconnects.load(Ordering::Relaxed),
        }
    }

    /// Registers a connection that buffers events until [`Registry::activate`].
    pub fn register(&self, user_id: i64, token_version: i32) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::queue(self.queue_frames, self.queue_bytes);
        let (kill_tx, kill_rx) = watch::channel(None);
        let mut inner = self.lock();
        inner.conns.insert(
            id,
            Conn {
                outbox: Arc::new(Outbox {
                    id,
                    user_id,
                    tx,
                    snapshot_id: AtomicI64::new(0),
                }),
                token_version,
                kill: kill_tx,
                member_of: HashSet::new(),
                paused: HashSet::new(),
                pending: Some(Vec::new()),
                blocks: blocks::Blocks::pending(),
            },
        );
        inner.pending.insert(id);
        let conns = inner.users.entry(user_id).or_default();
        conns.insert(id);
        if conns.len() == 1 {
            let _ = self.presence.send(PresenceChange {
                user_id,
                online: true,
            });
        }
        Registration {
            id,
            rx,
            kill: kill_rx,
        }
    }

    /// Subscribes the connection to its chats (its membership as of event
    /// `snapshot_id`) and applies what was buffered after that. Returns false
    /// if the connection was closed meanwhile.
    pub fn activate(&self, id: ConnId, activation: &Activation) -> bool {
        let Activation {
            chat_ids,
            snapshot_id,
            ..
        } = *activation;
        let mut inner = self.lock();
        inner.pending.remove(&id);
        let Some(conn) = inner.conns.get_mut(&id) else {
            return false;
        };
        let user_id = conn.outbox.user_id;
        conn.blocks
            .activate(activation.blocked, activation.blocked_by, user_id);
        let blocking = !activation.blocked.is_empty() || !activation.blocked_by.is_empty();
        let buffered = conn.pending.take().unwrap_or_default();
        conn.member_of = chat_ids.iter().copied().collect();
        conn.outbox
            .snapshot_id
            .store(snapshot_id, Ordering::Relaxed);
        let outbox = conn.outbox.clone();
        for &chat in chat_ids {
            inner
                .rooms
                .entry(chat)
                .or_default()
                .insert(id, outbox.clone());
        }
        inner.blocks_in_use |= blocking;
        for event in buffered.iter().filter(|e| e.id > snapshot_id) {
            self.route(&mut inner, event, Some(id));
        }
        true
    }

    pub fn unregister(&self, id: ConnId) {
        let mut inner = self.lock();
        self.remove_locked(&mut inner, id);
    }

    fn remove_locked(&self, inner: &mut Inner, id: ConnId) {
        let Some(conn) = inner.conns.remove(&id) else {
            return;
        };
        inner.pending.remove(&id);
        for chat in &conn.member_of {
            unsubscribe_room(&mut inner.rooms, *chat, id);
        }
        let user_id = conn.outbox.user_id;
        if let Some(conns) = inner.users.get_mut(&user_id) {
            conns.remove(&id);
            if conns.is_empty() {
                inner.users.remove(&user_id);
                let _ = self.presence.send(PresenceChange {
                    user_id,
                    online: false,
                });
            }
        }
    }

    /// Closes a connection: it stops receiving at once; its tasks send the close
    /// frame. Removing it drops the last sender of its queue (the rooms hold
    /// its outbox only while it is registered), which is how its writer,
    /// waiting on the queue alone, learns of the kill.
    fn kill_locked(&self, inner: &mut Inner, id: ConnId, reason: CloseReason) {
        if let Some(conn) = inner.conns.get(&id) {
            let _ = conn.kill.send(Some(reason));
            if reason == SLOW_CONSUMER {
                self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.remove_locked(inner, id);
    }

    pub fn kill(&self, id: ConnId, reason: CloseReason) {
        let mut inner = self.lock();
        self.kill_locked(&mut inner, id, reason);
    }

    /// Closes every connection of `user_id` for which `which(token_version)` holds.
    pub fn kill_user(&self, user_id: i64, reason: CloseReason, which: impl Fn(i32) -> bool) {
        let mut inner = self.lock();
        let ids: Vec<ConnId> = inner
            .users
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| inner.conns.get(id).is_some_and(|c| which(c.token_version)))
            .collect();
        for id in ids {
            self.kill_locked(&mut inner, id, reason);
        }
    }

    pub fn kill_all(&self, reason: CloseReason) -> usize {
        let mut inner = self.lock();
        let ids: Vec<ConnId> = inner.conns.keys().copied().collect();
        for &id in &ids {
            self.kill_locked(&mut inner, id, reason);
        }
        ids.len()
    }

    /// Queues a frame for one connection; a full queue closes it (4008).
    pub fn send_to(&self, id: ConnId, frame: Frame) {
        let mut inner = self.lock();
        self.deliver(&mut inner, [id], &frame);
    }

    /// Queues a [`PING`] for each connection in slice `slice` (ids congruent to
    /// it modulo [`PING_SLICES`]). A full queue gets none: its writer has
    /// frames to write, and the next frame closes it as slow anyway.
    pub fn ping_slice(&self, slice: u64) {
        let inner = self.lock();
        for conn in inner.conns.values() {
            if conn.outbox.id % PING_SLICES == slice {
                let _ = conn.outbox.tx.try_push(PING);
            }
        }
    }

    /// How many connections `user_id` holds on this node.
    pub fn connections_of(&self, user_id: i64) -> usize {
        self.lock().users.get(&user_id).map_or(0, |c| c.len())
    }

    pub fn connected_users(&self) -> Vec<i64> {
        self.lock().users.keys().copied().collect()
    }

    pub fn is_member(&self, id: ConnId, chat: i64) -> bool {
        self.lock()
            .conns
            .get(&id)
            .is_some_and(|c| c.member_of.contains(&chat))
    }

    /// `join_chat` (resume) / `leave_chat` (pause); false when not a member.
    pub fn set_paused(&self, id: ConnId, chat: i64, paused: bool) -> bool {
        let mut inner = self.lock();
        let Some(conn) = inner.conns.get_mut(&id) else {
            return false;
        };
        if !conn.member_of.contains(&chat) {
            return false;
        }
        if paused {
            conn.paused.insert(chat);
            unsubscribe_room(&mut inner.rooms, chat, id);
        } else {
            conn.paused.remove(&chat);
            let outbox = conn.outbox.clone();
            inner.rooms.entry(chat).or_default().insert(id, outbox);
        }
        true
    }
}

fn unsubscribe_room(rooms: &mut IdMap<i64, IdMap<ConnId, Arc<Outbox>>>, chat: i64, id: ConnId) {
    if let Some(room) = rooms.get_mut(&chat) {
        room.remove(&id);
        if room.is_empty() {
            rooms.remove(&chat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::ws::close::TOKEN_EXPIRED;

    pub(super) fn event(id: i64, chat_id: i64) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(chat_id),
            kind: EventKind::Message,
            user_ids: Vec::new(),
            message_id: None,
            reply_to_id: None,
            frame: Frame::from(format!("{{\"event_id\":{id}}}")),
        })
    }

    /// An activation with chats `chat_ids` as of `snapshot_id`, and no blocks.
    pub(super) fn activation(chat_ids: &[i64], snapshot_id: i64) -> Activation<'_> {
        Activation {
            chat_ids,
            snapshot_id,
            blocked: &[],
            blocked_by: &[],
        }
    }

    pub(super) fn registry(replay_cache_bytes: usize) -> Registry {
        Registry::new(16, 1 << 20, replay_cache_bytes, mpsc::unbounded_channel().0)
    }

    pub(super) fn addressed(
        id: i64,
        chat_id: i64,
        kind: EventKind,
        user_ids: Vec<i64>,
    ) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(chat_id),
            kind,
            user_ids,
            message_id: None,
            reply_to_id: None,
            frame: event(id, chat_id).frame.clone(),
        })
    }

    pub(super) fn received(rx: &mut QueueRx) -> Vec<String> {
        std::iter::from_fn(|| rx.try_pop().ok())
            .map(|f| f.to_string())
            .collect()
    }

    pub(super) fn frames(ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|id| format!("{{\"event_id\":{id}}}"))
            .collect()
    }

    #[test]
    fn a_ping_slice_reaches_its_connections_once_and_skips_full_queues() {
        let r = Registry::new(2, 1 << 20, 0, mpsc::unbounded_channel().0);
        let conns: Vec<Registration> = (0..PING_SLICES * 2)
            .map(|u| r.register(u as i64, 0))
            .collect();
        let full = conns
            .iter()
            .map(|c| c.id)
            .find(|id| id % PING_SLICES == 3)
            .expect("a slice-3 connection");
        r.send_to(full, Frame::from("a"));
        r.send_to(full, Frame::from("b"));

        r.ping_slice(3);

        for mut conn in conns {
            let got = received(&mut conn.rx);
            let expected: Vec<String> = if conn.id == full {
                vec!["a".into(), "b".into()]
            } else if conn.id % PING_SLICES == 3 {
                vec![PING.to_string()]
            } else {
                Vec::new()
            };
            assert_eq!(got, expected, "connection {}", conn.id);
            assert_eq!(*conn.kill.borrow(), None, "a ping closes nobody");
        }
    }

    #[test]
    fn a_kill_closes_the_queue_after_the_frames_it_holds() {
        // Subscribed every way a connection joins a room: its snapshot, a
        // member_added, and a join after a leave.
        let r = registry(0);
        let mut a = r.register(1, 0);
        assert!(r.activate(a.id, &activation(&[1, 2], 0)));
        r.dispatch_all(vec![addressed(1, 3, EventKind::MemberAdded, vec![1])]);
        assert!(r.set_paused(a.id, 2, true));
        assert!(r.set_paused(a.id, 2, false));
        r.send_to(a.id, Frame::from("reply"));

        r.kill(a.id, TOKEN_EXPIRED);

        assert_eq!(
            received(&mut a.rx),
            vec![frames(&[1])[0].clone(), "reply".into()]
        );
        assert_eq!(
            a.rx.try_pop(),
            Err(PopError::Closed),
            "a writer waiting on the queue wakes to its end"
        );
        assert_eq!(*a.kill.borrow(), Some(TOKEN_EXPIRED));
    }
}
