//! One WebSocket connection: a reader loop (this task) and a writer task that
//! owns the socket's sending half and drains the connection's bounded queue.

use super::protocol::{ClientFrame, ServerFrame, parse_client_frame};
use super::registry::{
    ACCOUNT_DELETED, CloseReason, Event, Frame, GARBAGE, IDLE, Registration, TOKEN_EXPIRED,
    TOO_BIG, UNAVAILABLE,
};
use super::upgrade::WebSocket;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::events::{FRAME_SQL, Live, notify_live};
use crate::http::State;
use crate::messages::{PendingSend, Sent, queue_message};
use futures_util::future::{self, BoxFuture};
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

/// Bad frames tolerated per window before the client is closed with 1008.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(10);
const REPLAY_PAGE: i64 = 500;
/// Queued frames written per flush: one syscall carries a burst.
const WRITE_BATCH: usize = 64;
/// Replies a connection may have outstanding (sends waiting for their commit,
/// and the replies queued behind them) before its reader stops reading until
/// the oldest is due.
const PIPELINED_SENDS: usize = 32;

/// Serves one upgraded socket until either side closes it.
/// `_live` keeps the connection counted until this returns.
pub async fn run(
    socket: WebSocket,
    state: State,
    user: AuthUser,
    since: Option<i64>,
    _live: super::LiveConnection,
) {
    let hub = state.hub.clone();
    let registration = hub.registry.register(user.id, user.token_version);
    let id = registration.id;
    // Authorized before shutdown began but registered after it closed every
    // socket it knew of: close this one the same way.
    if hub.is_shutting_down() {
        hub.registry.kill(id, super::registry::SHUTTING_DOWN);
    }
    let (sink, stream) = socket.split();
    let snapshot = snapshot(&state, user.id).await;
    // A password change or account deletion committed between the token check
    // and registration was announced before this socket could hear it.
    if let Ok(snap) = &snapshot {
        match snap.token_version {
            None => hub.registry.kill(id, ACCOUNT_DELETED),
            Some(v) if v != user.token_version => hub.registry.kill(id, TOKEN_EXPIRED),
            Some(_) => {}
        }
    }
    match snapshot {
        Ok(snap) if hub.registry.activate(id, &snap.chat_ids, snap.last_id) => {
            let recovered = since.is_some_and(|s| s >= snap.pruned_through && s <= snap.last_id);
            // Replay follows the snapshot `ready` reports, not membership as of
            // the replay query: a change committed in between arrives live.
            let replay = since
                .filter(|_| recovered)
                .map(|s| (s, snap.last_id, snap.chat_ids.clone()));
            let ready = ServerFrame::Ready {
                user_id: user.id,
                last_event_id: snap.last_id,
                chat_ids: snap.chat_ids,
                recovered,
            };
            let reader_kill = registration.kill.clone();
            let writer = tokio::spawn(write_loop(
                sink,
                registration,
                state.clone(),
                user.id,
                ready.to_text(None),
                replay,
            ));
            read_loop(stream, reader_kill, &state, &user, id).await;
            hub.registry.unregister(id);
            let _ = writer.await;
        }
        Ok(_) => {
            // Killed (e.g. the account was deleted) before it was ready.
            let reason = *registration.kill.borrow();
            close_socket(
                sink,
                reason.unwrap_or(TOKEN_EXPIRED),
                state.hub.config.close_flush_timeout_ms,
            )
            .await;
        }
        Err(e) => {
            log::warn!("cannot open WebSocket session: {e:?}");
            hub.registry.unregister(id);
            close_socket(sink, UNAVAILABLE, state.hub.config.close_flush_timeout_ms).await;
        }
    }
}

struct Snapshot {
    last_id: i64,
    pruned_through: i64,
    chat_ids: Vec<i64>,
    /// `None` when the account no longer exists.
    token_version: Option<i32>,
}

/// The user's chats as of the latest committed event, read in one statement
/// (one snapshot): membership changes commit with their events.
async fn snapshot(state: &State, user_id: i64) -> Result<Snapshot, ApiError> {
    let client = state.pool.get().await?;
    let row = client
        .query_one(
            "select s.last_id, s.pruned_through,
                    array(select chat_id from chat_members where user_id = $1 order by chat_id),
                    (select token_version from users where id = $1)
             from event_seq s",
            &[&user_id],
        )
        .await?;
    Ok(Snapshot {
        last_id: row.get(0),
        pruned_through: row.get(1),
        chat_ids: row.get(2),
        token_version: row.get(3),
    })
}

type Sink = SplitSink<WebSocket, Message>;

/// A writer's view of its connection's kill signal.
struct Kill {
    reason: watch::Receiver<Option<CloseReason>>,
    /// Resolves once the connection is killed (or its registration is gone).
    /// One future per connection, polled wherever the writer may block: a
    /// fresh `changed()` per `select!` registered and deregistered a waiter
    /// under the channel's lock on every wake: 15% of the server's
    /// instructions per fan-out delivery (scripts/callgrind-fanout.sh).
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

async fn killed(mut reason: watch::Receiver<Option<CloseReason>>) {
    let _ = reason.wait_for(Option::is_some).await;
}

/// Sends `ready`, replays `(since, upto]`, then drains the queue (pings included),
/// until killed or the reader is gone.
async fn write_loop(
    mut sink: Sink,
    registration: Registration,
    state: State,
    user_id: i64,
    ready: String,
    replay: Option<(i64, i64, Vec<i64>)>,
) {
    let Registration {
        id: conn_id,
        mut rx,
        kill,
        queued_bytes,
        ..
    } = registration;
    let mut kill = Kill::new(kill);
    let mut unsent = Vec::new();
    let flush_ms = state.hub.config.close_flush_timeout_ms;
    match drive(
        &mut sink,
        &mut rx,
        &mut kill,
        &mut unsent,
        &queued_bytes,
        &state,
        conn_id,
        user_id,
        ready,
        replay,
    )
    .await
    {
        // The reader unregistered: the client went away.
        Ok(true) => {
            let _ = tokio::time::timeout(Duration::from_millis(flush_ms), sink.close()).await;
        }
        Ok(false) => {
            let reason = (*kill.reason.borrow()).unwrap_or(IDLE);
            if reason.drain {
                drain(&mut sink, unsent, &mut rx, &queued_bytes, flush_ms).await;
            }
            close_socket(sink, reason, flush_ms).await;
        }
        // The socket is broken: nothing more can be sent; make sure the
        // reader stops too, whatever it is waiting for.
        Err(e) => {
            log::debug!("WebSocket write failed: {e}");
            state.hub.registry.kill(conn_id, UNAVAILABLE);
        }
    }
}

/// The writer's work; `Ok(true)` when the reader unregistered, `Ok(false)` when
/// killed, leaving in `unsent` the frames it took from the queue but did not write.
#[allow(clippy::too_many_arguments)]
async fn drive(
    sink: &mut Sink,
    rx: &mut mpsc::Receiver<Frame>,
    kill: &mut Kill,
    unsent: &mut Vec<Frame>,
    queued_bytes: &AtomicUsize,
    state: &State,
    conn_id: u64,
    user_id: i64,
    ready: String,
    replay: Option<(i64, i64, Vec<i64>)>,
) -> Result<bool, WsError> {
    if !send(sink, Message::text(ready), kill).await? {
        return Ok(false);
    }
    if let Some((since, upto, chat_ids)) = replay
        && !replay_events(sink, conn_id, state, user_id, since, upto, &chat_ids, kill).await?
    {
        return Ok(false);
    }
    // Grown on first use: reserving WRITE_BATCH frames up front cost every
    // idle connection 2 KiB (the `idle` benchmark: 13.7 -> 15.7 KiB each).
    let mut batch = Vec::new();
    // The writer waits on its queue alone. A kill removes the connection from
    // the registry, which drops the queue's only sender, so the writer wakes
    // to `None` (polling the kill signal here was 8% of the server's
    // instructions per fan-out delivery, scripts/callgrind-fanout.sh); the
    // signal is polled only while a write blocks (`send`, `send_queued`).
    // Pings come through the queue too (see `registry::PING`).
    while let Some(frame) = rx.recv().await {
        if kill.is_set() {
            queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
            unsent.push(frame);
            return Ok(false);
        }
        if !send_queued(sink, frame, rx, queued_bytes, kill, &mut batch, unsent).await? {
            return Ok(false);
        }
    }
    // Killed, or unregistered by the reader (the client went away).
    Ok(!kill.is_set())
}

/// The message a queued frame is written as: [`PING`](super::registry::PING)
/// (empty) stands for a ping.
fn message_of(frame: Frame) -> Message {
    if frame.is_empty() {
        Message::Ping(Bytes::new())
    } else {
        Message::Text(frame)
    }
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`]) with one
/// flush, unless the connection is killed meanwhile: then the frames taken
/// but not written are left in `unsent`. `batch` is scratch space kept
/// across calls.
async fn send_queued(
    sink: &mut Sink,
    first: Frame,
    rx: &mut mpsc::Receiver<Frame>,
    queued_bytes: &AtomicUsize,
    kill: &mut Kill,
    batch: &mut Vec<Frame>,
    unsent: &mut Vec<Frame>,
) -> Result<bool, WsError> {
    batch.push(first);
    take_queued(rx, batch);
    // Let the other woken writers (and the dispatcher) run once before
    // writing: under load more frames are queued by then, and one write
    // carries them all. Outside the write below, whose kill signal is then
    // polled only when the socket is full.
    if batch.len() == 1 {
        tokio::task::yield_now().await;
        take_queued(rx, batch);
    }
    let bytes = batch.iter().map(|f| f.len()).sum();
    queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    if kill.is_set() {
        unsent.append(batch);
        return Ok(false);
    }
    let mut fed = 0;
    let write = async {
        for frame in batch.iter() {
            sink.feed(message_of(frame.clone())).await?;
            fed += 1;
        }
        sink.flush().await
    };
    let written = tokio::select! {
        biased;
        result = write => result.map(|_| true),
        _ = &mut kill.signal => Ok(false),
    };
    if let Ok(false) = written {
        unsent.extend(batch.drain(fed..));
    }
    batch.clear();
    written
}

fn take_queued(rx: &mut mpsc::Receiver<Frame>, batch: &mut Vec<Frame>) {
    while batch.len() < WRITE_BATCH
        && let Ok(frame) = rx.try_recv()
    {
        batch.push(frame);
    }
}

/// Sends one message unless the connection is killed meanwhile (a client that
/// stopped reading blocks the send; the kill must still get through).
async fn send(sink: &mut Sink, message: Message, kill: &mut Kill) -> Result<bool, WsError> {
    if kill.is_set() {
        return Ok(false);
    }
    tokio::select! {
        biased;
        result = sink.send(message) => result.map(|_| true),
        _ = &mut kill.signal => Ok(false),
    }
}

/// Writes a page of replayed frames with one flush, unless the connection is
/// killed meanwhile. A flush per frame cost a syscall and, the socket having
/// `TCP_NODELAY`, a TCP segment per frame: 1,000 clients caught up on 10,000
/// messages in 1.5 s that way, in 0.5 s this way (the `recovery` benchmark).
async fn send_page(
    sink: &mut Sink,
    frames: Vec<(i64, Frame)>,
    kill: &mut Kill,
) -> Result<bool, WsError> {
    if kill.is_set() {
        return Ok(false);
    }
    let write = async {
        for (_, frame) in frames {
            sink.feed(Message::Text(frame)).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        biased;
        result = write => result.map(|_| true),
        _ = &mut kill.signal => Ok(false),
    }
}

/// Replays the user's events in `(after, upto]` (see [`fetch_replay`] for
/// which), from the registry's recent events while they reach back far
/// enough, else from the log, a page at a time.
#[allow(clippy::too_many_arguments)]
async fn replay_events(
    sink: &mut Sink,
    conn_id: u64,
    state: &State,
    user_id: i64,
    mut after: i64,
    upto: i64,
    chat_ids: &[i64],
    kill: &mut Kill,
) -> Result<bool, WsError> {
    let wanted = |e: &Event| {
        e.user_ids.contains(&user_id)
            || (e.kind != "chat_created"
                && e.chat_id
                    .is_some_and(|c| chat_ids.binary_search(&c).is_ok()))
    };
    while after < upto {
        let page = state
            .hub
            .registry
            .recent_events(after, upto, REPLAY_PAGE as usize, wanted);
        let (frames, through) = match page {
            Some(page) => page,
            None => match fetch_replay(state, user_id, after, upto, chat_ids).await {
                Ok(frames) if (frames.len() as i64) < REPLAY_PAGE => (frames, upto),
                Ok(frames) => {
                    let last = frames.last().map_or(upto, |(id, _)| *id);
                    (frames, last)
                }
                Err(e) => {
                    log::warn!("replay failed: {e:?}");
                    state.hub.registry.kill(conn_id, UNAVAILABLE);
                    return Ok(false);
                }
            },
        };
        if !send_page(sink, frames, kill).await? {
            return Ok(false);
        }
        after = through;
    }
    Ok(true)
}

/// The user's events in `(after, upto]`: the events of `chat_ids` (their
/// chats as of `upto`) and those addressed to them (`chat_created` only the
/// latter). `replay_events` applies the same rule to held events.
async fn fetch_replay(
    state: &State,
    user_id: i64,
    after: i64,
    upto: i64,
    chat_ids: &[i64],
) -> Result<Vec<(i64, Frame)>, ApiError> {
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "select id, {FRAME_SQL}
             from events
             where id > $2 and id <= $3
               and ($1 = any(user_ids)
                    or (kind <> 'chat_created' and chat_id = any($5)))
             order by id limit $4"
            ),
            &[&user_id, &after, &upto, &REPLAY_PAGE, &chat_ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), Frame::from(r.get::<_, String>(1))))
        .collect())
}

/// Writes `unsent` (taken from the queue and counted out of `queued`
/// already), then what is still queued, within the flush timeout.
async fn drain(
    sink: &mut Sink,
    unsent: Vec<Frame>,
    rx: &mut mpsc::Receiver<Frame>,
    queued: &AtomicUsize,
    flush_ms: u64,
) {
    let flush = async {
        for frame in unsent {
            if sink.feed(message_of(frame)).await.is_err() {
                return;
            }
        }
        while let Ok(frame) = rx.try_recv() {
            queued.fetch_sub(frame.len(), Ordering::Relaxed);
            if sink.feed(message_of(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.flush().await;
    };
    let _ = tokio::time::timeout(Duration::from_millis(flush_ms), flush).await;
}

async fn close_socket(mut sink: Sink, reason: CloseReason, flush_ms: u64) {
    let close = async {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(reason.code),
                reason: Utf8Bytes::from_static(reason.reason),
            })))
            .await;
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_millis(flush_ms), close).await;
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    kill: watch::Receiver<Option<CloseReason>>,
    state: &State,
    user: &AuthUser,
    id: u64,
) {
    let hub = &state.hub;
    let idle = Duration::from_millis(hub.config.idle_timeout_ms);
    let mut idle_deadline = Instant::now() + idle;
    let until_expiry = (user.expires_at - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    let killed = killed(kill);
    tokio::pin!(killed);
    let mut bad_frames = 0u32;
    let mut window_start = Instant::now();
    // Replies in the order their frames arrived; a send's ack waits for its
    // commit while the frames behind it are read (and their sends queued).
    let mut replies: FuturesOrdered<BoxFuture<'static, String>> = FuturesOrdered::new();
    loop {
        tokio::select! {
            _ = &mut killed => return,
            _ = tokio::time::sleep_until(idle_deadline) => {
                hub.registry.kill(id, IDLE);
                return;
            }
            _ = &mut expiry => {
                hub.registry.kill(id, TOKEN_EXPIRED);
                return;
            }
            Some(reply) = replies.next(), if !replies.is_empty() => {
                hub.registry.send_to(id, Frame::from(reply));
            }
            message = stream.next(), if replies.len() < PIPELINED_SENDS => {
                let message = match message {
                    None => return,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // tungstenite reports an oversized frame as a capacity error.
                        if matches!(e, WsError::Capacity(_)) {
                            hub.registry.kill(id, TOO_BIG);
                        }
                        return;
                    }
                };
                idle_deadline = Instant::now() + idle;
                if message.is_close() {
                    return;
                }
                let reply = if let Message::Text(text) = &message {
                    handle_text(state, user, id, text.as_str()).await
                } else if message.is_binary() {
                    Err(ServerFrame::Error {
                        code: "invalid_frame",
                        error: "binary frames are not supported; send JSON text".into(),
                        reference: None,
                    })
                } else {
                    continue; // ping/pong: the idle deadline already moved.
                };
                let reply = match reply {
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
                    Err(error) => {
                        if window_start.elapsed() > BAD_FRAME_WINDOW {
                            window_start = Instant::now();
                            bad_frames = 0;
                        }
                        bad_frames += 1;
                        if bad_frames > hub.config.max_bad_frames {
                            hub.registry.kill(id, GARBAGE);
                            return;
                        }
                        Reply::Now(error.to_text(None))
                    }
                };
                match reply {
                    Reply::Now(frame) if replies.is_empty() => {
                        hub.registry.send_to(id, Frame::from(frame));
                    }
                    Reply::Now(frame) => replies.push_back(future::ready(frame).boxed()),
                    Reply::Later(frame) => replies.push_back(frame),
                }
            }
        }
    }
}

/// A reply to a client frame: ready now, or once its send is committed.
enum Reply {
    Now(String),
    Later(BoxFuture<'static, String>),
}

/// Handles one client text frame. `Ok(Some)` is the reply, `Ok(None)` means
/// none is due, and `Err` is an error frame for a malformed frame (counted
/// towards the garbage limit). Refusals of well-formed requests are replies.
async fn handle_text(
    state: &State,
    user: &AuthUser,
    id: u64,
    text: &str,
) -> Result<Option<Reply>, ServerFrame> {
    let (frame, reference) = parse_client_frame(text).map_err(ServerFrame::from)?;
    let result = handle_frame(state, user, id, frame).await;
    Ok(match result {
        Ok(Some(Handled::Reply(frame))) => Some(Reply::Now(frame.to_text(reference.as_ref()))),
        Ok(Some(Handled::Queued(pending))) => {
            let state = state.clone();
            Some(Reply::Later(
                async move {
                    match pending.finish(&state).await {
                        Ok(sent) => ack(&sent).to_text(reference.as_ref()),
                        Err(e) => ServerFrame::error(&e, reference).to_text(None),
                    }
                }
                .boxed(),
            ))
        }
        Ok(None) => None,
        Err(e) => Some(Reply::Now(ServerFrame::error(&e, reference).to_text(None))),
    })
}

/// What handling a well-formed frame came to.
enum Handled {
    Reply(ServerFrame),
    /// A message queued for commit; its ack follows the commit.
    Queued(PendingSend),
}

fn ack(sent: &Sent) -> ServerFrame {
    ServerFrame::Ack(json!({
        "message_id": sent.message.id,
        "event_id": sent.event_id,
        "chat_id": sent.message.chat_id,
        "client_id": sent.message.client_id,
        "duplicate": sent.duplicate,
    }))
}

async fn handle_frame(
    state: &State,
    user: &AuthUser,
    id: u64,
    frame: ClientFrame,
) -> Result<Option<Handled>, ApiError> {
    let hub = &state.hub;
    let reply = |frame| Ok(Some(Handled::Reply(frame)));
    match frame {
        ClientFrame::Ping => reply(ServerFrame::Pong {}),
        ClientFrame::Message(req) => Ok(Some(Handled::Queued(
            queue_message(state, user.id, req).await?,
        ))),
        ClientFrame::JoinChat { chat_id } | ClientFrame::LeaveChat { chat_id } => {
            let pause = matches!(frame, ClientFrame::LeaveChat { .. });
            if !hub.registry.set_paused(id, chat_id, pause) {
                return Err(ApiError::NotFound("chat"));
            }
            reply(ServerFrame::Ack(
                json!({ "chat_id": chat_id, "subscribed": !pause }),
            ))
        }
        ClientFrame::Typing { chat_id } => {
            if !hub.registry.is_member(id, chat_id) {
                return Err(ApiError::NotFound("chat"));
            }
            if hub.typing_allowed(user.id, chat_id) {
                let client = state.pool.get().await?;
                let signal = Live::Typing {
                    chat_id,
                    user_id: user.id,
                    username: user.username.clone(),
                };
                notify_live(&*client, &signal).await?;
            }
            Ok(None)
        }
        ClientFrame::Read {
            chat_id,
            message_id,
        } => {
            let client = state.pool.get().await?;
            let marker =
                crate::chats::read::advance_read_marker(&*client, chat_id, user.id, message_id)
                    .await?;
            reply(ServerFrame::Ack(
                serde_json::to_value(marker).unwrap_or(Value::Null),
            ))
        }
    }
}
