//! One WebSocket connection: a reader loop ([`reader`], this task) and a
//! writer task ([`writer`]) that owns the socket's sending half and drains
//! the connection's bounded queue, after replaying what the client missed
//! ([`replay`]).
//!
//! From a client's first `message` frame on, its reader runs on the
//! readers' thread (`Hub::readers`) instead. A busy chat's dispatch wakes
//! every member's writer at once, from the listener's thread; on the
//! runtime a reader woken by its socket waited behind them, so a message
//! sent into a 10,000-member chat was read tens of milliseconds after it
//! arrived. Only senders move: with every reader there, the thousands of
//! sessions a reconnect storm opens and closes each cost that thread a
//! start and an end, and the storms' delivery got slower (BENCHMARKS.md,
//! "Sockets read on a thread of their own: tried, not kept").

mod reader;
mod replay;
mod wire;
mod writer;

use super::Hub;
use super::close::{ACCOUNT_DELETED, CloseReason, SHUTTING_DOWN, TOKEN_EXPIRED, UNAVAILABLE};
use super::protocol::ServerFrame;
use super::registry::{Activation, ConnId};
use super::starts::{self, StartReads};
use super::upgrade::{ReadSide, Socket};
use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::limits::RateLimits;
use crate::messages::SendQueue;
use futures_util::StreamExt;
use reader::{Lane, Reader};
use replay::Replay;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wire::Out;
use writer::{Opening, Writer, close_socket};

/// What a connection's tasks use.
#[derive(Clone)]
pub struct Services {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub sends: Arc<SendQueue>,
    pub rates: Arc<RateLimits>,
}

/// Serves one upgraded socket until either side closes it.
/// `live` keeps the connection counted until the future returned ends.
pub fn run(
    socket: Socket,
    services: Services,
    user: AuthUser,
    since: Option<i64>,
    live: super::LiveConnection,
) -> impl Future<Output = ()> + Send + 'static {
    // Taken apart before the future is made: an async fn keeps room for its
    // arguments for as long as it runs, and this one runs as long as the
    // connection. For the same reason the one-off steps (opening, closing)
    // are boxed: a future is as large as its largest await, and a query's
    // state kept inline would sit in the memory of every idle connection.
    serve(Session {
        sink: Out::new(socket.write),
        stream: socket.read,
        services,
        user,
        since,
        live,
    })
}

/// One connection's parts, moved into the task that serves it.
struct Session {
    sink: writer::Sink,
    stream: WebSocketStream<ReadSide>,
    services: Services,
    user: AuthUser,
    since: Option<i64>,
    live: super::LiveConnection,
}

async fn serve(mut session: Session) {
    let hub = session.services.hub.clone();
    hub.metrics.ws_opened.inc();
    hub.metrics.ws_open.inc();
    let user_id = session.user.id;
    let registration = hub.registry.register(user_id, session.user.token_version);
    let id = registration.id;
    // Authorized before shutdown began but registered after it closed every
    // socket it knew of: close this one the same way.
    if hub.is_shutting_down() {
        hub.registry.kill(id, SHUTTING_DOWN);
    }
    match Box::pin(open(&session, id)).await {
        Ok(Some((ready, replay))) => {
            let reader_kill = registration.kill.clone();
            let writer = Writer::new(session.sink, registration);
            let opening = Opening {
                user_id,
                ready,
                replay,
                turn: session.live.take_turn(),
            };
            let writer = tokio::spawn(writer.run(session.services.clone(), opening));
            let reader = Reader {
                services: &session.services,
                user: &session.user,
                id,
            };
            let first_send = reader
                .run(&mut session.stream, reader_kill.clone(), Lane::Runtime)
                .await;
            if let Some(first) = first_send {
                // Built and spawned in a statement that does not await: a
                // value bound across an await keeps room in every
                // connection's task, moved out or not.
                let read = read_on_readers(
                    session.stream,
                    Handoff {
                        first,
                        services: session.services.clone(),
                        user: session.user.clone(),
                        id,
                        kill: reader_kill,
                    },
                );
                // No await in the arms: the awaited result, a whole read
                // half, would keep room in every connection's task.
                match read.await {
                    Ok(stream) => session.stream = stream,
                    Err(_) => {
                        // The reader panicked and took the read half along;
                        // the writer ends by itself once its queue is gone.
                        hub.registry.unregister(id);
                        return;
                    }
                }
            }
            hub.registry.unregister(id);
            let _ = writer.await;
        }
        Ok(None) => {
            // Killed (e.g. the account was deleted) before it was ready.
            let reason = (*registration.kill.borrow()).unwrap_or(TOKEN_EXPIRED);
            Box::pin(close_socket(session.sink, reason, &hub.config)).await;
            hub.metrics.ws_closed(reason.code.to_string());
        }
        Err(e) => {
            log::warn!("cannot open WebSocket session: {}", crate::error::chain(&e));
            hub.registry.unregister(id);
            Box::pin(close_socket(session.sink, UNAVAILABLE, &hub.config)).await;
            hub.metrics.ws_closed(UNAVAILABLE.code.to_string());
        }
    }
    linger(&mut session.stream, &hub).await;
}

/// What a reader takes to the readers' thread.
struct Handoff {
    /// The client's first `message` frame, not yet handled.
    first: Message,
    services: Services,
    user: AuthUser,
    id: ConnId,
    kill: watch::Receiver<Option<CloseReason>>,
}

/// Reads the rest of the session on the readers' thread, from the client's
/// first send: its frames are read when they arrive, not after every writer
/// a busy chat's dispatch woke before them. The task gives the read half
/// back when the reader ends.
fn read_on_readers(
    mut stream: WebSocketStream<ReadSide>,
    handoff: Handoff,
) -> JoinHandle<WebSocketStream<ReadSide>> {
    let readers = handoff.services.hub.readers.clone();
    readers.spawn(async move {
        let Handoff {
            first,
            services,
            user,
            id,
            kill,
        } = handoff;
        let reader = Reader {
            services: &services,
            user: &user,
            id,
        };
        let frames = futures_util::stream::iter([Ok(first)]).chain(&mut stream);
        reader.run(frames, kill, Lane::Readers).await;
        stream
    })
}

/// Reads and drops what the client still sends (a pong, its answer to our
/// close) until it closes too, within the flush timeout. A socket closed
/// with unread bytes is reset, and a reset throws away whatever the client
/// has not read yet: the frames a drain has just written, and the close.
async fn linger(stream: &mut WebSocketStream<ReadSide>, hub: &Hub) {
    use futures_util::StreamExt;
    let flush = std::time::Duration::from_millis(hub.config.close_flush_timeout_ms);
    let _ = tokio::time::timeout(flush, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Reads the user's snapshot and activates connection `id` with it: the
/// serialised `ready` frame and the replay due, or `None` when the
/// connection was killed before it was ready.
async fn open(session: &Session, id: ConnId) -> Result<Option<(String, Option<Replay>)>, ApiError> {
    let Session {
        services,
        user,
        since,
        ..
    } = session;
    let hub = &services.hub;
    let snap = snapshot(&hub.starts, user.id).await?;
    // A password change or account deletion committed between the token check
    // and registration was announced before this socket could hear it.
    match snap.token_version {
        None => hub.registry.kill(id, ACCOUNT_DELETED),
        Some(v) if v != user.token_version => hub.registry.kill(id, TOKEN_EXPIRED),
        Some(_) => {}
    }
    if !hub.registry.activate(id, &snap.activation()) {
        return Ok(None);
    }
    let in_log = since.is_some_and(|s| s >= snap.pruned_through && s <= snap.last_id);
    // Replay follows the snapshot `ready` reports, not membership as of
    // the replay query: a change committed in between arrives live.
    let replay = since.filter(|_| in_log).map(|after| Replay {
        after,
        upto: snap.last_id,
        user_id: user.id,
        chat_ids: snap.chat_ids.clone(),
    });
    let replay = match replay {
        Some(replay) => within_budget(replay, services).await,
        None => None,
    };
    let recovered = replay.is_some();
    match &replay {
        Some(r) if hub.registry.recent().holds_after(r.after) => hub.metrics.replay("memory"),
        Some(_) => hub.metrics.replay("log"),
        None if since.is_some() => hub.metrics.replay("not_recovered"),
        None => {}
    }
    let ready = ServerFrame::Ready {
        user_id: user.id,
        last_event_id: snap.last_id,
        chat_ids: snap.chat_ids,
        recovered,
    };
    Ok(Some((ready.to_text(None), replay)))
}

/// The replay, if it is within the configured budget (else the client is
/// told to re-fetch over REST).
async fn within_budget(replay: Replay, services: &Services) -> Option<Replay> {
    let budget = services.hub.config.replay_max_events;
    match replay.within_budget(services, budget).await {
        Ok(true) => Some(replay),
        Ok(false) => None,
        Err(e) => {
            log::warn!("cannot size a replay: {}", crate::error::chain(&e));
            None
        }
    }
}

struct Snapshot {
    last_id: i64,
    pruned_through: i64,
    chat_ids: Vec<i64>,
    /// `None` when the account no longer exists.
    token_version: Option<i32>,
    blocked: Vec<i64>,
    blocked_by: Vec<i64>,
}

impl Snapshot {
    fn activation(&self) -> Activation<'_> {
        Activation {
            chat_ids: &self.chat_ids,
            snapshot_id: self.last_id,
            blocked: &self.blocked,
            blocked_by: &self.blocked_by,
        }
    }
}

/// SQL: user `$1`'s session snapshot, [`Snapshot`]'s fields in order.
pub const SESSION_SNAPSHOT_SQL: &str = "select s.last_id, s.pruned_through,
        array(select chat_id from chat_members where user_id = $1 order by chat_id),
        (select token_version from users where id = $1),
        array(select blocked_id from blocks where blocker_id = $1),
        array(select blocker_id from blocks where blocked_id = $1)
    from event_seq s";
pub const SESSION_SNAPSHOT_TYPES: &[Type] = &[Type::INT8];

/// The user's chats as of the latest committed event, read in one statement
/// (one snapshot): membership changes commit with their events.
async fn snapshot(reads: &StartReads, user_id: i64) -> Result<Snapshot, ApiError> {
    let lent = reads.get().await?;
    let row = lent
        .conn
        .client
        .query_one(&lent.conn.statements[starts::SESSION], &[&user_id])
        .await?;
    Ok(Snapshot {
        last_id: row.get(0),
        pruned_through: row.get(1),
        chat_ids: row.get(2),
        token_version: row.get(3),
        blocked: row.get(4),
        blocked_by: row.get(5),
    })
}
