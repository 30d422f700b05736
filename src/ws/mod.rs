//! Real-time delivery over WebSocket.
//!
//! Every durable change is committed to PostgreSQL with a NOTIFY (see
//! `events`); each node's [`listener`] hears it and dispatches it into the
//! node's [`registry`], whose per-connection queues are drained by one writer
//! task per socket ([`conn`]). One path serves one node or many.

pub mod admission;
pub mod close;
pub mod conn;
pub mod event;
mod health;
pub mod ids;
pub mod listener;
mod notice;
pub mod presence;
pub mod protocol;
pub mod recent;
pub mod registry;
pub mod starts;
pub mod upgrade;

use crate::auth::{Auth, AuthUser};
use crate::config::{Config, WsConfig};
use crate::db::{DbThread, Pool};
use crate::error::ApiError;
use crate::http::{Context, bearer_token, query_map, with};
use crate::messages::SendQueue;
use crate::metrics::Metrics;
use crate::server::ConnSlot;
use admission::{Admission, Turn};
use close::SHUTTING_DOWN;
use conn::Services;
use registry::{PING_SLICES, Registry};
use starts::StartReads;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Shared real-time state of one node: the registry plus what its background
/// tasks (listener, presence, pruning) and connections need.
pub struct Hub {
    /// Random per process, so a restarted node is a new node to its peers.
    pub node_id: String,
    pub registry: Registry,
    pub pool: Pool,
    pub database_url: String,
    pub config: WsConfig,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    /// When each (user, chat) last had a typing signal forwarded from this node.
    typing_sent: Mutex<HashMap<(i64, i64), Instant>>,
    /// When each (user, chat) last had a typing signal delivered here, from any
    /// node: a user typing on two nodes must not get past the limit.
    typing_heard: Mutex<HashMap<(i64, i64), Instant>>,
    live_connections: AtomicUsize,
    all_closed: Notify,
    sockets_per_user: usize,
    pub metrics: Arc<Metrics>,
    /// Whether the node's LISTEN connection is up (for `/readyz`).
    listening: AtomicBool,
    /// The line session starts wait in (`admission`).
    admission: Admission,
    /// What a session start reads, prepared (`starts`).
    pub starts: Arc<StartReads>,
    /// Where connections ask for their presence snapshot.
    pub snapshots: presence::Snapshots,
    /// The presence of recently read chats' members, kept from the
    /// listener's notices for the snapshots (`presence::View`).
    pub presence_view: Arc<presence::View>,
    /// Where the readers of the sockets that send messages run (see
    /// `conn`), beside the sends' commits.
    pub readers: DbThread,
}

impl Hub {
    /// Creates the hub and starts its background tasks, the listener on
    /// `listen_thread`; the sockets that send messages will be read on
    /// `send_thread`. Returns once the listener is LISTENing, so nothing
    /// committed after `build()` is missed.
    pub async fn start(
        config: &Config,
        pool: Pool,
        metrics: Arc<Metrics>,
        listen_thread: &DbThread,
        send_thread: DbThread,
    ) -> Result<Arc<Hub>, ApiError> {
        let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
        let (snapshots, snapshot_requests) = presence::Snapshots::new();
        let node_id: String = crate::support::random_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let admission = Admission::new(
            config.ws.session_starts,
            config.ws.session_start_queue,
            Duration::from_millis(config.ws.session_start_wait_ms),
            metrics.ws_starts_waiting.clone(),
        );
        let hub = Arc::new(Hub {
            node_id,
            registry: Registry::new(
                config.ws.queue_frames,
                config.ws.queue_bytes,
                config.ws.replay_cache_bytes,
                presence_tx,
            ),
            pool,
            database_url: config.database.url.clone(),
            config: config.ws.clone(),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: watch::channel(false).0,
            typing_sent: Mutex::new(HashMap::new()),
            typing_heard: Mutex::new(HashMap::new()),
            live_connections: AtomicUsize::new(0),
            all_closed: Notify::new(),
            sockets_per_user: config.limits.sockets_per_user,
            // Before `metrics` moves into the hub.
            presence_view: Arc::new(presence::View::for_node(
                Duration::from_millis(config.ws.presence_view_ttl_ms),
                &metrics,
            )),
            metrics,
            listening: AtomicBool::new(false),
            admission,
            starts: Arc::new(StartReads::new(&config.database, config.ws.session_starts)?),
            snapshots,
            readers: send_thread,
        });
        // Register the node before any connection can record a session on it.
        presence::beat(&hub).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        listen_thread.spawn(listener::run(hub.clone(), Some(ready_tx)));
        tokio::spawn(presence::track(hub.clone(), presence_rx));
        tokio::spawn(presence::snapshot::serve(
            hub.starts.clone(),
            hub.presence_view.clone(),
            snapshot_requests,
            config.ws.presence_max_members,
            hub.shutdown_signal(),
        ));
        tokio::spawn(presence::maintain(hub.clone()));
        tokio::spawn(ping_connections(hub.clone()));
        match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
            Ok(Ok(())) => Ok(hub),
            _ => Err(ApiError::DatabaseUnavailable),
        }
    }

    /// Whether the node's LISTEN connection is up: without it this node
    /// delivers nothing live.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::SeqCst);
        // Notices missed while it was down left the view behind.
        self.presence_view.set_listening(up);
    }

    /// Session starts waiting for their turn (see `admission`).
    pub fn session_starts_waiting(&self) -> usize {
        self.admission.waiting()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Closes every socket with 1001 after flushing its queue, waits for them
    /// (bounded by the flush timeout), stops background tasks and leaves
    /// this node's users to be shown offline by its peers if they do not
    /// come back within the grace (`presence::leave`).
    pub async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let closing = self.registry.kill_all(SHUTTING_DOWN);
        log::info!("closing {closing} WebSocket connection(s)");
        // Each socket flushes, then waits for its client's close (`conn::linger`).
        let wait =
            Duration::from_millis(self.config.close_flush_timeout_ms) * 2 + Duration::from_secs(1);
        let all_closed = async {
            while self.live_connections.load(Ordering::SeqCst) > 0 {
                let notified = self.all_closed.notified();
                if self.live_connections.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(wait, all_closed).await;
        let _ = self.shutdown_tx.send(true);
        if let Err(e) = presence::leave(self).await {
            log::warn!("could not hand this node's users over to its peers: {e:?}");
        }
    }

    /// Counts a connection from its upgrade request until its task ends, so a
    /// shutdown that begins while an upgrade is in flight waits for it (and
    /// closes it with 1001) instead of letting the HTTP server drop it.
    fn connection_opened(self: &Arc<Self>, slot: Option<ConnSlot>) -> LiveConnection {
        self.live_connections.fetch_add(1, Ordering::SeqCst);
        LiveConnection {
            hub: self.clone(),
            _slot: slot,
            turn: None,
        }
    }

    /// True at most once per `typing_interval_ms` for a user in a chat.
    fn typing_allowed(&self, user_id: i64, chat_id: i64) -> bool {
        self.throttle_typing(&self.typing_sent, user_id, chat_id)
    }

    /// The same limit on what the listener delivers, whichever node it came from.
    fn typing_deliverable(&self, user_id: i64, chat_id: i64) -> bool {
        self.throttle_typing(&self.typing_heard, user_id, chat_id)
    }

    fn throttle_typing(
        &self,
        map: &Mutex<HashMap<(i64, i64), Instant>>,
        user_id: i64,
        chat_id: i64,
    ) -> bool {
        let interval = Duration::from_millis(self.config.typing_interval_ms);
        let now = Instant::now();
        let mut sent = map.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() > 100_000 {
            sent.retain(|_, at| now.duration_since(*at) < interval);
        }
        match sent.get(&(user_id, chat_id)) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                sent.insert((user_id, chat_id), now);
                true
            }
        }
    }
}

/// Pings every connection once per `ping_interval_ms`, a slice of them at a
/// time (see [`registry::PING`]), until shutdown.
async fn ping_connections(hub: Arc<Hub>) {
    let every = Duration::from_millis(hub.config.ping_interval_ms) / PING_SLICES as u32;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = hub.shutdown_signal();
    for slice in (0..PING_SLICES).cycle() {
        tokio::select! {
            _ = tick.tick() => hub.registry.ping_slice(slice),
            _ = stopping(&mut shutdown) => return,
        }
    }
}

/// One counted connection (see [`Hub::connection_opened`]); it also keeps
/// the connection's place under `http.max_connections` until it closes.
pub struct LiveConnection {
    hub: Arc<Hub>,
    _slot: Option<ConnSlot>,
    /// Its turn to start (see `admission`), held until the start's reads are done.
    turn: Option<Turn>,
}

impl LiveConnection {
    /// The turn, for whoever ends the start; dropping it lets the next start go.
    pub fn take_turn(&mut self) -> Option<Turn> {
        self.turn.take()
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if self.hub.live_connections.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.hub.all_closed.notify_waiters();
        }
    }
}

/// Resolves once shutdown has begun — also when it began before this call,
/// which `changed()` would miss for a receiver made after the signal.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

pub fn routes(
    ctx: &Context,
    sends: &Arc<SendQueue>,
    hub: &Arc<Hub>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let services = Services {
        hub: hub.clone(),
        pool: ctx.pool.clone(),
        sends: sends.clone(),
        rates: ctx.rates.clone(),
    };
    health::health(hub).or(connect(ctx, services)).unify()
}

/// GET /ws?token=...&since=...
fn connect(
    ctx: &Context,
    services: Services,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let max_frame = services.hub.config.max_frame_bytes;
    warp::path!("ws")
        .and(warp::get())
        .and(query_map())
        .and(warp::header::optional::<String>("authorization"))
        .and(with(ctx.auth.clone()))
        .and(with(services))
        .and(warp::ext::optional::<ConnSlot>())
        .and_then(
            |q: HashMap<String, String>,
             header: Option<String>,
             auth: Arc<Auth>,
             services: Services,
             slot: Option<ConnSlot>| async move {
                // Counted from here, not from the 101: a shutdown that begins
                // while the token is checked waits for this socket and closes
                // it with 1001, instead of racing the HTTP server's own
                // shutdown for the upgrade.
                let mut live = services.hub.connection_opened(slot);
                // In line before the token check, the start's first read.
                live.turn = Some(
                    services
                        .hub
                        .admission
                        .admit()
                        .await
                        .map_err(warp::reject::custom)?,
                );
                authorize(&services.hub, &auth, &q, header.as_deref())
                    .await
                    .map(|(user, since)| (services, user, since, live))
                    .map_err(warp::reject::custom)
            },
        )
        .untuple_one()
        .and(upgrade::websocket())
        .map(
            move |services: Services, user, since, live, upgrade: upgrade::Upgrade| {
                upgrade.reply(upgrade::socket_config(max_frame), move |socket| {
                    conn::run(socket, services, user, since, live)
                })
            },
        )
}

/// Checks the token (query `token` or `Authorization: Bearer`) and `since`
/// before upgrading, so failures are plain JSON errors.
async fn authorize(
    hub: &Hub,
    auth: &Auth,
    q: &HashMap<String, String>,
    header: Option<&str>,
) -> Result<(AuthUser, Option<i64>), ApiError> {
    if hub.is_shutting_down() {
        return Err(ApiError::DatabaseUnavailable);
    }
    let token = q
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| header.and_then(bearer_token))
        .ok_or(ApiError::Unauthorized("missing token"))?;
    let user = auth.authenticate(token).await?;
    // Per node, and checked before the upgrade so the refusal is a plain
    // HTTP error; sockets opening at the same moment may pass it together.
    if hub.registry.connections_of(user.id) >= hub.sockets_per_user {
        return Err(ApiError::TooManySockets);
    }
    let since = match q.get("since") {
        None => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(v) if v >= 0 => Some(v),
            _ => {
                return Err(ApiError::validation(
                    "since",
                    "must be an event id (an integer >= 0)",
                ));
            }
        },
    };
    Ok((user, since))
}
