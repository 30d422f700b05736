//! A connection's writer task: sends `ready`, replays what the client
//! missed, then drains the connection's queue (pings included) onto the
//! socket until the connection is killed or its reader is gone; the
//! `presence_snapshot` goes out when it has been read, ahead of any
//! `presence` frame.

use super::Services;
use super::replay::Replay;
use super::wire::Out;
use crate::config::WsConfig;
use crate::events::Live;
use crate::ws::admission::Turn;
use crate::ws::close::{CloseReason, IDLE, UNAVAILABLE};
use crate::ws::event::Frame;
use crate::ws::registry::{ConnId, QueueRx, Registration};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::io;
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

pub(super) type Sink = Out<OwnedWriteHalf>;

/// Queued frames written together: one `writev` carries a burst.
const WRITE_BATCH: usize = 64;

/// What a connection is sent before its queue: `ready` (serialised) and the
/// replay if one is due; and the presence snapshot of `user_id`.
pub(super) struct Opening {
    pub user_id: i64,
    pub ready: String,
    pub replay: Option<Replay>,
    /// The start's turn (`ws::admission`): given back once its reads are done.
    pub turn: Option<Turn>,
}

/// A writer's view of its connection's kill signal.
pub(super) struct Kill {
    reason: watch::Receiver<Option<CloseReason>>,
    /// Resolves once the connection is killed (or its registration is gone).
    /// One future per connection, polled wherever the writer may block: a
    /// fresh `changed()` per `select!` would register and deregister a
    /// waiter under the channel's lock on every wake.
    signal: BoxFuture<'static, ()>,
}

impl Kill {
    fn new(reason: watch::Receiver<Option<CloseReason>>) -> Self {
        Kill {
            signal: killed(reason.clone()).boxed(),
            reason,
        }
    }

    fn is_set(&self) -> bool {
        self.reason.borrow().is_some()
    }
}

/// Resolves once the connection is killed.
pub(super) async fn killed(mut reason: watch::Receiver<Option<CloseReason>>) {
    let _ = reason.wait_for(Option::is_some).await;
}

/// The sending half of a socket and the queue it drains.
pub(super) struct Writer {
    conn_id: ConnId,
    sink: Sink,
    rx: QueueRx,
    kill: Kill,
    /// Frames taken from the queue but not written when the connection was
    /// killed; a draining close writes them first.
    unsent: Vec<Frame>,
    /// Scratch space for a burst, kept across writes. Grown on first use:
    /// reserving a burst up front would cost every idle connection memory.
    batch: Vec<Frame>,
    /// While the presence snapshot is being read: the `presence` frames
    /// taken from the queue meanwhile, sent after it (see
    /// [`Writer::until_snapshot`]).
    held: Option<Vec<Frame>>,
}

impl Writer {
    pub(super) fn new(sink: Sink, registration: Registration) -> Writer {
        let Registration { id, rx, kill } = registration;
        Writer {
            conn_id: id,
            sink,
            rx,
            kill: Kill::new(kill),
            unsent: Vec::new(),
            batch: Vec::new(),
            held: None,
        }
    }

    /// Sends `ready`, replays, drains the queue (the presence snapshot
    /// among it as soon as it is read);
    /// then closes the socket the way the connection ended.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep a second copy of `self`"
    )]
    pub(super) fn run(
        mut self,
        services: Services,
        opening: Opening,
    ) -> impl Future<Output = ()> + Send + 'static {
        // A block, not an async fn: that would keep a second copy of `self`
        // (the argument and its binding) for the connection's lifetime.
        async move {
            let flush_ms = services.hub.config.close_flush_timeout_ms;
            let metrics = services.hub.metrics.clone();
            // Boxed where they run once (see `conn::run`): this task's future
            // stays the size of the queue loop, not of the opening's queries.
            match self.drive(&services, opening).await {
                // The reader unregistered: the client went away.
                Ok(true) => {
                    let close = self.sink.close(NORMAL_CLOSE, "");
                    let close = tokio::time::timeout(Duration::from_millis(flush_ms), close);
                    let _ = Box::pin(close).await;
                    metrics.ws_closed("client".into());
                }
                Ok(false) => {
                    let reason = (*self.kill.reason.borrow()).unwrap_or(IDLE);
                    if reason.drain {
                        Box::pin(self.drain(flush_ms)).await;
                    }
                    Box::pin(close_socket(self.sink, reason, &services.hub.config)).await;
                    metrics.ws_closed(reason.code.to_string());
                }
                // The socket is broken: nothing more can be sent; make sure the
                // reader stops too, whatever it is waiting for.
                Err(e) => {
                    log::debug!("WebSocket write failed: {e}");
                    services.hub.registry.kill(self.conn_id, UNAVAILABLE);
                    metrics.ws_closed("error".into());
                }
            }
        }
    }

    /// The writer's work; `Ok(true)` when the reader unregistered,
    /// `Ok(false)` when killed.
    async fn drive(&mut self, services: &Services, opening: Opening) -> io::Result<bool> {
        let Opening {
            user_id,
            ready,
            replay,
            turn,
        } = opening;
        if !self.send(ready).await? {
            return Ok(false);
        }
        // The presence snapshot waits in its own line, read in batches
        // (`presence::snapshot`), so the next start need not wait for it.
        drop(turn);
        // Asked for after `ready`, so that is not delayed by the read. In a
        // storm of reconnects that line is seconds long; what the client
        // missed and what happens now need not wait for it, only presence
        // does.
        let snapshot = services.hub.snapshots.frame(user_id);
        if let Some(replay) = replay
            && !Box::pin(replay.run(self, services)).await?
        {
            return Ok(false);
        }
        if !Box::pin(self.until_snapshot(snapshot, services)).await? {
            return Ok(false);
        }
        // The writer waits on its queue alone. A kill removes the connection
        // from the registry, which drops the queue's only sender, so the
        // writer wakes to `None`; the kill signal is polled only while a
        // write blocks (`send`, `send_queued`). Pings come through the queue
        // too (see `registry::PING`).
        while let Some(frame) = self.rx.pop().await {
            if !self.send_next(frame).await? {
                return Ok(false);
            }
        }
        // Killed, or unregistered by the reader (the client went away).
        Ok(!self.kill.is_set())
    }

    /// Drains the queue until `snapshot` is read, holding back its
    /// `presence` frames; then sends the snapshot and the frames held, in
    /// the order queued. A `presence` frame queued meanwhile may be of a
    /// change committed after the snapshot's read: sent before it, the
    /// snapshot would undo it. The frames held stay counted in the queue's
    /// bytes until sent, so the queue's bound still holds.
    async fn until_snapshot(
        &mut self,
        snapshot: impl Future<Output = Option<String>>,
        services: &Services,
    ) -> io::Result<bool> {
        let mut snapshot = std::pin::pin!(snapshot);
        self.held = Some(Vec::new());
        let read = loop {
            tokio::select! {
                biased;
                read = &mut snapshot => break read,
                queued = self.rx.pop() => match queued {
                    Some(frame) if Live::is_presence_frame(&frame) => {
                        self.held.get_or_insert_default().push(frame);
                    }
                    Some(frame) => {
                        if !self.send_next(frame).await? {
                            self.drop_held();
                            return Ok(false);
                        }
                    }
                    // Killed, or unregistered by the reader.
                    None => {
                        self.drop_held();
                        return Ok(!self.kill.is_set());
                    }
                },
            }
        };
        let Some(frame) = read else {
            // The batch's failure is logged where it was read.
            self.drop_held();
            services.hub.registry.kill(self.conn_id, UNAVAILABLE);
            return Ok(false);
        };
        if !self.send(frame).await? {
            self.drop_held();
            return Ok(false);
        }
        let held = self.held.take().unwrap_or_default();
        if held.is_empty() {
            return Ok(true);
        }
        self.batch.extend(held);
        self.write_batch().await
    }

    /// Forgets the `presence` frames held for a snapshot that will not be
    /// sent: without it they would only mislead.
    fn drop_held(&mut self) {
        let held = self.held.take().unwrap_or_default();
        let bytes = held.iter().map(|f| f.len()).sum();
        self.rx.release(bytes);
    }

    /// Writes `frame`, taken from the queue, with whatever else is queued;
    /// false once the connection is killed.
    async fn send_next(&mut self, frame: Frame) -> io::Result<bool> {
        if self.kill.is_set() {
            self.rx.release(frame.len());
            self.unsent.push(frame);
            return Ok(false);
        }
        self.send_queued(frame).await
    }

    /// The id of the connection this writer serves.
    pub(super) fn conn_id(&self) -> ConnId {
        self.conn_id
    }

    /// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`])
    /// together, unless the connection is killed meanwhile: then the frames
    /// taken but not begun are left in `unsent`.
    async fn send_queued(&mut self, first: Frame) -> io::Result<bool> {
        self.batch.push(first);
        self.take_queued();
        // Let the other woken writers (and the dispatcher) run once before
        // writing: under load more frames are queued by then, and one write
        // carries them all. Outside the write below, whose kill signal is
        // then polled only when the socket is full.
        if self.batch.len() == 1 {
            tokio::task::yield_now().await;
            self.take_queued();
        }
        self.write_batch().await
    }

    /// Writes `batch` (counting it out of the queue's bytes) unless the
    /// connection is killed; then what was not begun is left in `unsent`.
    async fn write_batch(&mut self) -> io::Result<bool> {
        let bytes = self.batch.iter().map(|f| f.len()).sum();
        self.rx.release(bytes);
        if self.kill.is_set() {
            self.unsent.append(&mut self.batch);
            return Ok(false);
        }
        let written = write_unless_killed(&mut self.sink, &mut self.kill, &self.batch).await;
        if let Ok(Some(begun)) = written {
            self.unsent.extend(self.batch.drain(begun..));
        }
        self.batch.clear();
        written.map(|killed| killed.is_none())
    }

    /// Takes what is queued into `batch`, up to [`WRITE_BATCH`]; while a
    /// snapshot is read, `presence` frames into `held` instead.
    fn take_queued(&mut self) {
        while self.batch.len() < WRITE_BATCH
            && let Ok(frame) = self.rx.try_pop()
        {
            match &mut self.held {
                Some(held) if Live::is_presence_frame(&frame) => held.push(frame),
                _ => self.batch.push(frame),
            }
        }
    }

    /// Sends one frame unless the connection is killed meanwhile.
    async fn send(&mut self, text: String) -> io::Result<bool> {
        if self.kill.is_set() {
            return Ok(false);
        }
        let frames = [Frame::from(text)];
        let written = write_unless_killed(&mut self.sink, &mut self.kill, &frames).await;
        written.map(|killed| killed.is_none())
    }

    /// Writes a page of replayed frames together, unless the connection is
    /// killed meanwhile. With `TCP_NODELAY` a write per frame would be a
    /// syscall and a TCP segment per frame.
    pub(super) async fn send_page(&mut self, frames: Vec<(i64, Frame)>) -> io::Result<bool> {
        if self.kill.is_set() {
            return Ok(false);
        }
        let frames: Vec<Frame> = frames.into_iter().map(|(_, frame)| frame).collect();
        let written = write_unless_killed(&mut self.sink, &mut self.kill, &frames).await;
        written.map(|killed| killed.is_none())
    }

    /// Writes `unsent` (released from the queue's bytes already), then what is
    /// still queued, within the flush timeout.
    async fn drain(&mut self, flush_ms: u64) {
        let Writer {
            sink, rx, unsent, ..
        } = self;
        let flush = async {
            while let Ok(frame) = rx.try_pop() {
                rx.release(frame.len());
                unsent.push(frame);
            }
            let _ = sink.write_after_cut(unsent).await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(flush_ms), flush).await;
    }
}

/// The close code a writer answers a client's close with (RFC 6455 7.4.1).
const NORMAL_CLOSE: u16 = 1000;

/// Writes `frames` unless the connection is killed first (a client that
/// stopped reading blocks the write; the kill must still get through).
/// `Ok(Some(n))`: killed after the first `n` frames were begun; `sink`
/// keeps the rest of one cut short.
async fn write_unless_killed(
    sink: &mut Sink,
    kill: &mut Kill,
    frames: &[Frame],
) -> io::Result<Option<usize>> {
    let mut done = 0;
    let written = tokio::select! {
        biased;
        result = sink.write(frames, &mut done) => Some(result),
        _ = &mut kill.signal => None,
    };
    match written {
        Some(result) => result.map(|()| None),
        None => Ok(Some(sink.cut(frames, done))),
    }
}

/// Sends the close frame for `reason` and closes, within the flush timeout.
pub(super) async fn close_socket(mut sink: Sink, reason: CloseReason, config: &WsConfig) {
    let text = reason.text(config.reconnect_spread_ms);
    let close = sink.close(reason.code, &text);
    let _ = tokio::time::timeout(Duration::from_millis(config.close_flush_timeout_ms), close).await;
}
