//! The room registry: which connections receive which chat's events.
//!
//! `rooms` maps a chat id to the connections subscribed to it (members that
//! have not paused it with `leave_chat`); `users` maps a user to their
//! connections on this node. Each connection has a bounded queue drained by
//! its writer task. Everything sits behind one mutex held only for
//! non-blocking work (`try_send`), so dispatch never waits on a socket.
//!
//! Membership follows the event stream: `chat_created`/`member_added` subscribe
//! the addressed users' connections, `member_removed`/`chat_deleted`
//! unsubscribe them right after delivering that last event. A connection
//! registers *before* it reads its membership snapshot (as of event `L`) and
//! buffers whatever is dispatched meanwhile; on activation the buffered events
//! after `L` are applied to it alone. So no event falls between snapshot and
//! subscription, and none is applied twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::{mpsc, watch};

pub type ConnId = u64;

/// A serialised server frame. Cloning shares the buffer: one event is
/// serialised once and the same bytes are written to every subscriber.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// Queued in place of a frame to have the writer send a WebSocket ping. One
/// ticker pings every connection through its queue ([`Registry::ping_slice`]),
/// so a writer waits on its queue alone: a ping timer of its own was polled
/// on every wake-up (≈ 7% of the server's instructions per fan-out delivery,
/// scripts/callgrind-fanout.sh). Server frames are JSON, never empty.
pub const PING: Frame = Frame::from_static("");

/// Connections are pinged in this many slices (by id), one slice per
/// `ping_interval_ms / PING_SLICES`, so many connections' pings spread out.
pub const PING_SLICES: u64 = 16;

/// A durable event as dispatched: routing data plus its serialised frame.
#[derive(Debug)]
pub struct Event {
    pub id: i64,
    pub chat_id: Option<i64>,
    pub kind: String,
    pub user_ids: Vec<i64>,
    pub frame: Frame,
}

/// Why a connection must close, and whether its queue is flushed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    pub drain: bool,
}

pub const SLOW_CONSUMER: CloseReason = CloseReason {
    code: 4008,
    reason: "slow consumer",
    drain: false,
};
pub const TOKEN_EXPIRED: CloseReason = CloseReason {
    code: 4001,
    reason: "token expired or revoked",
    drain: false,
};
pub const ACCOUNT_DELETED: CloseReason = CloseReason {
    code: 4003,
    reason: "account deleted",
    drain: false,
};
pub const SHUTTING_DOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
    drain: true,
};
pub const IDLE: CloseReason = CloseReason {
    code: 4000,
    reason: "idle timeout",
    drain: false,
};
pub const TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "frame too large",
    drain: false,
};
pub const UNAVAILABLE: CloseReason = CloseReason {
    code: 1011,
    reason: "database unavailable",
    drain: false,
};
pub const GARBAGE: CloseReason = CloseReason {
    code: 1008,
    reason: "too many invalid frames",
    drain: false,
};

/// Events to hand [`Registry::dispatch_all`] at once: enough to batch a group
/// commit, few enough not to fill a queue in one go or hold the lock for long.
pub const DISPATCH_BATCH: usize = 32;

/// Whether an event only reaches its chat's room: no membership effect and
/// no addressed users, so it can join a run of such events.
fn is_plain(event: &Event) -> bool {
    event.chat_id.is_some()
        && event.user_ids.is_empty()
        && !matches!(
            event.kind.as_str(),
            "chat_created" | "member_added" | "member_removed" | "chat_deleted"
        )
}

/// Events a connection may buffer while it reads its snapshot; past this it is
/// closed as a slow consumer and resumes with `since`.
const PENDING_LIMIT: usize = 10_000;

/// The receiving half a connection's tasks own.
pub struct Registration {
    pub id: ConnId,
    pub rx: mpsc::Receiver<Frame>,
    pub kill: watch::Receiver<Option<CloseReason>>,
    pub queued_bytes: Arc<AtomicUsize>,
}

/// Hashes the integer ids the registry is keyed by with one multiplication
/// (Fibonacci hashing). SipHash, the std default, was a tenth of the server's
/// CPU in the `fanout` benchmark: dispatch looks up every subscriber. The ids
/// are the server's own (connections) or the database's (chats, users), so
/// there is no attacker-chosen key to flood it with.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// What delivering to a connection takes, shared by the rooms it is in, so a
/// dispatch walks a room without looking each subscriber up.
struct Outbox {
    id: ConnId,
    user_id: i64,
    tx: mpsc::Sender<Frame>,
    queued_bytes: Arc<AtomicUsize>,
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
}

#[derive(Default)]
struct Inner {
    conns: IdMap<ConnId, Conn>,
    rooms: IdMap<i64, IdMap<ConnId, Arc<Outbox>>>,
    users: IdMap<i64, IdSet<ConnId>>,
    pending: IdSet<ConnId>,
    /// The last durable event dispatched on this node.
    last_event_id: i64,
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

/// The latest dispatched events, with consecutive ids, up to a byte budget:
/// a client resuming with `since` is replayed from here when the events it
/// missed are all still held, instead of from the log (where a reconnect
/// storm makes PostgreSQL build every missed frame once per client).
#[derive(Default)]
struct Recent {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl Event {
    /// What holding it in [`Recent`] costs, roughly.
    fn held_bytes(&self) -> usize {
        self.frame.len() + self.kind.len() + self.user_ids.len() * 8 + 96
    }
}

impl Recent {
    fn push(&mut self, event: Arc<Event>, limit: usize) {
        // A hole (events pruned before this node saw them) would make the
        // held range lie about what it covers: start over after it.
        if self
            .events
            .back()
            .is_some_and(|last| last.id + 1 != event.id)
        {
            self.events.clear();
            self.bytes = 0;
        }
        self.bytes += event.held_bytes();
        self.events.push_back(event);
        while self.bytes > limit {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.held_bytes(),
                None => break,
            }
        }
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    recent: RwLock<Recent>,
    recent_limit: usize,
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
            recent: RwLock::new(Recent::default()),
            recent_limit: replay_cache_bytes,
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
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let (kill_tx, kill_rx) = watch::channel(None);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut inner = self.lock();
        inner.conns.insert(
            id,
            Conn {
                outbox: Arc::new(Outbox {
                    id,
                    user_id,
                    tx,
                    queued_bytes: queued_bytes.clone(),
                    snapshot_id: AtomicI64::new(0),
                }),
                token_version,
                kill: kill_tx,
                member_of: HashSet::new(),
                paused: HashSet::new(),
                pending: Some(Vec::new()),
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
            queued_bytes,
        }
    }

    /// Subscribes the connection to `chat_ids` (its membership as of event
    /// `snapshot_id`) and applies what was buffered after that. Returns false
    /// if the connection was closed meanwhile.
    pub fn activate(&self, id: ConnId, chat_ids: &[i64], snapshot_id: i64) -> bool {
        let mut inner = self.lock();
        inner.pending.remove(&id);
        let Some(conn) = inner.conns.get_mut(&id) else {
            return false;
        };
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
                let _ = conn.outbox.tx.try_send(PING);
            }
        }
    }

    /// Tries to queue without waiting; false means the consumer is too slow.
    fn offer(&self, outbox: &Outbox, frame: &Frame) -> bool {
        let len = frame.len();
        if outbox.queued_bytes.load(Ordering::Relaxed) + len > self.queue_bytes {
            return false;
        }
        match outbox.tx.try_send(frame.clone()) {
            Ok(()) => {
                outbox.queued_bytes.fetch_add(len, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Queues `frame` for each target; returns those too slow to take it.
    fn offer_all<'a>(
        &self,
        targets: impl Iterator<Item = &'a Outbox>,
        frame: &Frame,
    ) -> Vec<ConnId> {
        let mut delivered = 0;
        let mut slow = Vec::new();
        for outbox in targets {
            if self.offer(outbox, frame) {
                delivered += 1;
            } else {
                slow.push(outbox.id);
            }
        }
        self.events_delivered
            .fetch_add(delivered, Ordering::Relaxed);
        slow
    }

    /// Closes connections too slow to take what was queued for them (4008).
    fn kill_slow(&self, inner: &mut Inner, slow: Vec<ConnId>) {
        for id in slow {
            self.kill_locked(inner, id, SLOW_CONSUMER);
        }
    }

    /// Queues `frame` for each of `ids`; closes those too slow to take it.
    fn deliver(&self, inner: &mut Inner, ids: impl IntoIterator<Item = ConnId>, frame: &Frame) {
        let slow = self.offer_all(
            ids.into_iter()
                .filter_map(|id| inner.conns.get(&id))
                .map(|c| &*c.outbox),
            frame,
        );
        self.kill_slow(inner, slow);
    }

    /// Dispatches durable events, oldest first, under one lock; older or
    /// repeated ids are ignored. A run of plain events for one chat walks the
    /// room once, queuing each connection's frames back to back, instead of
    /// once per event (`fanout` benchmark, 1,000 members: server CPU per
    /// delivery 1.88 -> 1.78 µs, see BENCHMARKS.md).
    pub fn dispatch_all(&self, events: Vec<Arc<Event>>) {
        let mut inner = self.lock();
        let mut run: Vec<Arc<Event>> = Vec::new();
        for event in events {
            if !self.accept(&mut inner, &event) {
                continue;
            }
            let plain = is_plain(&event);
            let joins_run = plain
                && run.len() < DISPATCH_BATCH
                && run.last().is_none_or(|last| last.chat_id == event.chat_id);
            if !joins_run {
                self.route_run(&mut inner, &mut run);
            }
            if plain {
                run.push(event);
            } else {
                self.route(&mut inner, &event, None);
            }
        }
        self.route_run(&mut inner, &mut run);
    }

    /// Records a dispatched event (last id, replay cache, connections still
    /// reading their snapshot); false for an old or repeated id.
    fn accept(&self, inner: &mut Inner, event: &Arc<Event>) -> bool {
        if event.id <= inner.last_event_id {
            return false;
        }
        inner.last_event_id = event.id;
        if self.recent_limit > 0 {
            self.recent
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(event.clone(), self.recent_limit);
        }
        let pending: Vec<ConnId> = inner.pending.iter().copied().collect();
        for id in pending {
            let overflow = match inner.conns.get_mut(&id).and_then(|c| c.pending.as_mut()) {
                Some(buf) => {
                    buf.push(event.clone());
                    buf.len() > PENDING_LIMIT
                }
                None => false,
            };
            if overflow {
                self.kill_locked(inner, id, SLOW_CONSUMER);
            }
        }
        true
    }

    /// Delivers a run of plain events for one chat (see [`is_plain`]) to its
    /// room, a connection's frames back to back; empties `run`. A connection
    /// that cannot take a frame gets none after it: it is closed as slow.
    fn route_run(&self, inner: &mut Inner, run: &mut Vec<Arc<Event>>) {
        let Some(chat) = run.first().and_then(|e| e.chat_id) else {
            return;
        };
        let mut slow = Vec::new();
        if let Some(room) = inner.rooms.get(&chat) {
            let mut delivered = 0;
            for outbox in room.values() {
                for event in run.iter().filter(|e| outbox.awaits(e)) {
                    if !self.offer(outbox, &event.frame) {
                        slow.push(outbox.id);
                        break;
                    }
                    delivered += 1;
                }
            }
            self.events_delivered
                .fetch_add(delivered, Ordering::Relaxed);
        }
        run.clear();
        self.kill_slow(inner, slow);
    }

    /// How many of the newest logged events a starting node should read to
    /// fill its replay budget (events average a few hundred bytes).
    pub fn preload_estimate(&self) -> usize {
        (self.recent_limit / 384).min(100_000)
    }

    /// Holds `events` (consecutive, oldest first, all at or below the last
    /// dispatched id) as the oldest recent events, within the budget.
    pub fn preload(&self, events: Vec<Event>) {
        let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
        if !recent.events.is_empty() {
            return;
        }
        for event in events {
            recent.push(Arc::new(event), self.recent_limit);
        }
    }

    /// Frames of held events in `(after, upto]` for which `wanted` holds, at
    /// most `limit` of them, with the id of the last event looked at (resume
    /// from there). `None` when event `after + 1` is not held: read the log.
    pub fn recent_events(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
        wanted: impl Fn(&Event) -> bool,
    ) -> Option<(Vec<(i64, Frame)>, i64)> {
        let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
        let first = recent.events.front()?.id;
        if after + 1 < first || after >= recent.events.back()?.id {
            return None;
        }
        let mut frames = Vec::new();
        let mut scanned = after;
        for event in recent.events.range((after + 1 - first) as usize..) {
            if event.id > upto || frames.len() == limit {
                break;
            }
            scanned = event.id;
            if wanted(event) {
                frames.push((event.id, event.frame.clone()));
            }
        }
        Some((frames, scanned))
    }

    /// Applies an event's membership effects and delivers it — to every
    /// subscriber, or (`only`) to one connection being activated.
    fn route(&self, inner: &mut Inner, event: &Event, only: Option<ConnId>) {
        let Some(chat) = event.chat_id else { return };
        let addressed: Vec<ConnId> = event
            .user_ids
            .iter()
            .flat_map(|u| inner.users.get(u).into_iter().flatten().copied())
            .filter(|id| only.is_none_or(|o| o == *id) && !inner.pending.contains(id))
            .collect();
        let subscribes = matches!(event.kind.as_str(), "chat_created" | "member_added");
        if subscribes {
            for &id in &addressed {
                if let Some(conn) = inner.conns.get_mut(&id) {
                    conn.member_of.insert(chat);
                    conn.paused.remove(&chat);
                    let outbox = conn.outbox.clone();
                    inner.rooms.entry(chat).or_default().insert(id, outbox);
                }
            }
        }
        // The listener may dispatch an event committed before a connection's
        // snapshot after activating it: its membership effect is already in the
        // snapshot (re-applying it is harmless), but delivering it would be a
        // duplicate, hence `awaits`.
        let frame = &event.frame;
        let mut slow = self.offer_all(
            addressed
                .iter()
                .filter_map(|id| inner.conns.get(id))
                .map(|c| &*c.outbox)
                .filter(|o| o.awaits(event)),
            frame,
        );
        // chat_created tells only the users it adds; the rest of the chat hears member_added.
        if event.kind != "chat_created"
            && let Some(room) = inner.rooms.get(&chat)
        {
            let others = |o: &&Outbox| o.awaits(event) && !addressed.contains(&o.id);
            slow.extend(match only {
                Some(id) => self.offer_all(
                    room.get(&id).map(|o| &**o).into_iter().filter(others),
                    frame,
                ),
                None => self.offer_all(room.values().map(|o| &**o).filter(others), frame),
            });
        }
        self.kill_slow(inner, slow);
        // A chat_deleted event addresses every member, paused connections included.
        let leaves = match event.kind.as_str() {
            "member_removed" | "chat_deleted" => addressed,
            _ => Vec::new(),
        };
        for id in leaves {
            if let Some(conn) = inner.conns.get_mut(&id) {
                conn.member_of.remove(&chat);
                conn.paused.remove(&chat);
            }
            unsubscribe_room(&mut inner.rooms, chat, id);
        }
    }

    /// Delivers an ephemeral frame to a chat's subscribers, except `skip_user`'s connections.
    pub fn broadcast_room(&self, chat: i64, frame: Frame, skip_user: Option<i64>) {
        self.broadcast_rooms(&[chat], frame, skip_user);
    }

    /// Delivers an ephemeral frame once to each connection subscribed to any of
    /// `chats`, except `skip_user`'s own.
    pub fn broadcast_rooms(&self, chats: &[i64], frame: Frame, skip_user: Option<i64>) {
        let mut inner = self.lock();
        let wanted = |o: &&Outbox| skip_user.is_none_or(|u| o.user_id != u);
        let rooms = chats.iter().filter_map(|c| inner.rooms.get(c));
        let slow = if chats.len() == 1 {
            self.offer_all(
                rooms.flat_map(|r| r.values().map(|o| &**o)).filter(wanted),
                &frame,
            )
        } else {
            // A connection in several of the chats hears it once.
            let mut seen = IdSet::default();
            self.offer_all(
                rooms
                    .flat_map(|r| r.values().map(|o| &**o))
                    .filter(wanted)
                    .filter(|o| seen.insert(o.id)),
                &frame,
            )
        };
        self.kill_slow(&mut inner, slow);
    }

    /// Delivers an ephemeral frame to every connection of these users.
    pub fn broadcast_users(&self, users: &[i64], frame: Frame) {
        let mut inner = self.lock();
        let targets: Vec<ConnId> = users
            .iter()
            .flat_map(|u| inner.users.get(u).into_iter().flatten().copied())
            .collect();
        self.deliver(&mut inner, targets, &frame);
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

    fn event(id: i64, chat_id: i64) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(chat_id),
            kind: "message".into(),
            user_ids: Vec::new(),
            frame: Frame::from(format!("{{\"event_id\":{id}}}")),
        })
    }

    fn registry(replay_cache_bytes: usize) -> Registry {
        Registry::new(16, 1 << 20, replay_cache_bytes, mpsc::unbounded_channel().0)
    }

    fn ids(page: Option<(Vec<(i64, Frame)>, i64)>) -> Option<(Vec<i64>, i64)> {
        page.map(|(frames, through)| (frames.into_iter().map(|(id, _)| id).collect(), through))
    }

    #[test]
    fn recent_events_serve_a_range_they_cover_in_pages() {
        let r = registry(1 << 20);
        for id in 1..=10 {
            r.dispatch_all(vec![event(id, id % 2)]);
        }
        let odd = |e: &Event| e.chat_id == Some(1);
        assert_eq!(
            ids(r.recent_events(2, 9, 100, odd)),
            Some((vec![3, 5, 7, 9], 9))
        );
        // A full page stops at its last frame; the next page resumes there.
        assert_eq!(ids(r.recent_events(0, 10, 2, odd)), Some((vec![1, 3], 3)));
        // Up to the newest held event; the rest is the log's.
        assert_eq!(ids(r.recent_events(8, 12, 100, odd)), Some((vec![9], 10)));
        assert_eq!(ids(r.recent_events(10, 12, 100, odd)), None);
    }

    #[test]
    fn the_oldest_events_go_first_when_the_budget_is_spent() {
        let one = event(1, 1).held_bytes();
        let r = registry(3 * one);
        for id in 1..=5 {
            r.dispatch_all(vec![event(id, 1)]);
        }
        let all = |_: &Event| true;
        assert_eq!(
            ids(r.recent_events(1, 5, 100, all)),
            None,
            "event 2 is gone"
        );
        assert_eq!(
            ids(r.recent_events(2, 5, 100, all)),
            Some((vec![3, 4, 5], 5))
        );
    }

    #[test]
    fn a_hole_in_the_ids_drops_what_came_before_it() {
        let r = registry(1 << 20);
        for id in [1, 2, 3, 7, 8] {
            r.dispatch_all(vec![event(id, 1)]);
        }
        let all = |_: &Event| true;
        assert_eq!(ids(r.recent_events(2, 8, 100, all)), None);
        assert_eq!(ids(r.recent_events(6, 8, 100, all)), Some((vec![7, 8], 8)));
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let r = registry(0);
        r.dispatch_all(vec![event(1, 1)]);
        assert_eq!(ids(r.recent_events(0, 1, 100, |_| true)), None);
    }

    fn addressed(id: i64, chat_id: i64, kind: &str, user_ids: Vec<i64>) -> Arc<Event> {
        Arc::new(Event {
            id,
            chat_id: Some(chat_id),
            kind: kind.into(),
            user_ids,
            frame: event(id, chat_id).frame.clone(),
        })
    }

    fn received(rx: &mut mpsc::Receiver<Frame>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|f| f.to_string())
            .collect()
    }

    fn frames(ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|id| format!("{{\"event_id\":{id}}}"))
            .collect()
    }

    #[test]
    fn a_batch_reaches_each_subscriber_in_id_order_with_joins_applied_in_between() {
        let r = registry(0);
        let mut a = r.register(1, 0);
        let mut b = r.register(2, 0);
        assert!(r.activate(a.id, &[1, 2], 0));
        assert!(r.activate(b.id, &[1], 0));

        r.dispatch_all(vec![
            event(1, 1),
            event(2, 1),
            addressed(3, 2, "member_added", vec![2]),
            event(4, 2),
            event(5, 1),
            event(6, 2),
        ]);

        assert_eq!(received(&mut a.rx), frames(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(received(&mut b.rx), frames(&[1, 2, 3, 4, 5, 6]));
        assert!(r.is_member(b.id, 2), "the join took effect");
    }

    #[test]
    fn a_batch_skips_events_a_subscriber_has_from_its_snapshot() {
        let r = registry(0);
        let mut a = r.register(1, 0);
        assert!(r.activate(a.id, &[1], 2));

        r.dispatch_all((1..=4).map(|id| event(id, 1)).collect());

        assert_eq!(received(&mut a.rx), frames(&[3, 4]));
    }

    #[test]
    fn a_subscriber_too_slow_for_a_batch_gets_nothing_after_the_frame_it_missed() {
        // A 100-byte queue: event 2's frame does not fit, event 3's would.
        let r = Registry::new(16, 100, 0, mpsc::unbounded_channel().0);
        let mut slow = r.register(1, 0);
        assert!(r.activate(slow.id, &[1], 0));
        let big = Arc::new(Event {
            frame: Frame::from(format!(
                "{{\"event_id\":2,\"pad\":\"{}\"}}",
                "x".repeat(100)
            )),
            ..Arc::into_inner(event(2, 1)).expect("sole owner")
        });

        r.dispatch_all(vec![event(1, 1), big, event(3, 1)]);

        assert_eq!(
            received(&mut slow.rx),
            frames(&[1]),
            "no gap: nothing after 2"
        );
        assert_eq!(*slow.kill.borrow(), Some(SLOW_CONSUMER));
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
        assert!(r.activate(a.id, &[1, 2], 0));
        r.dispatch_all(vec![addressed(1, 3, "member_added", vec![1])]);
        assert!(r.set_paused(a.id, 2, true));
        assert!(r.set_paused(a.id, 2, false));
        r.send_to(a.id, Frame::from("reply"));

        r.kill(a.id, TOKEN_EXPIRED);

        assert_eq!(
            received(&mut a.rx),
            vec![frames(&[1])[0].clone(), "reply".into()]
        );
        assert_eq!(
            a.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected),
            "a writer waiting on the queue wakes to its end"
        );
        assert_eq!(*a.kill.borrow(), Some(TOKEN_EXPIRED));
    }
}
