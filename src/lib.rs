//! chatapp: a real-time chat backend. `build()` assembles the whole service
//! bound to a listener, so `main` and the tests start it the same way.

pub mod auth;
pub mod chats;
pub mod config;
pub mod contract;
pub mod db;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
#[cfg(test)]
mod layers;
pub mod limits;
pub mod logging;
pub mod membership;
pub mod message_json;
pub mod messages;
pub mod metrics;
pub mod migrate;
pub mod ops;
pub mod password;
pub mod presence;
pub mod server;
pub mod support;
pub mod users;
pub mod validate;
pub mod web;
pub mod ws;

use auth::Auth;
use config::{Config, ConfigError};
use http::Context;
use messages::SendQueue;
use password::Hasher;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warp::Filter;
use ws::Hub;

/// Why the server could not start; each keeps its cause.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Database(Box<dyn StdError + Send + Sync>),
    Migrate(migrate::MigrateError),
    Bind(std::io::Error),
    Thread(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(_) => f.write_str("invalid configuration"),
            StartError::Migrate(_) => f.write_str("cannot migrate the database"),
            StartError::Database(_) => f.write_str("cannot connect to the database"),
            StartError::Bind(_) => f.write_str("cannot listen"),
            StartError::Thread(_) => f.write_str("cannot start a database thread"),
        }
    }
}

impl StdError for StartError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Database(e) => Some(&**e),
            StartError::Migrate(e) => Some(e),
            StartError::Bind(e) | StartError::Thread(e) => Some(e),
        }
    }
}

impl StartError {
    fn database(e: impl Into<Box<dyn StdError + Send + Sync>>) -> StartError {
        StartError::Database(e.into())
    }
}

/// A built service, listening but not yet serving.
pub struct App {
    listener: tokio::net::TcpListener,
    config: Arc<Config>,
    ctx: Context,
    hasher: Arc<Hasher>,
    sends: Arc<SendQueue>,
    hub: Arc<Hub>,
    metrics: Arc<metrics::Metrics>,
    draining: Arc<AtomicBool>,
}

/// Applies pending migrations on a dedicated connection.
pub async fn run_migrations(config: &Config) -> Result<Vec<&'static str>, StartError> {
    let mut client = db::connect(
        &config.database.url,
        Duration::from_secs(config.database.connect_timeout_secs),
    )
    .await
    .map_err(StartError::database)?;
    migrate::run(&mut client).await.map_err(StartError::Migrate)
}

/// Migrates, connects and binds `host:port` (port 0 picks a free one).
pub async fn build(config: Config) -> Result<App, StartError> {
    config.validate().map_err(StartError::Config)?;
    let addr = config.listen_addr().map_err(StartError::Config)?;
    let token_key = match &config.auth.token_key {
        Some(hex) => config::parse_token_key(hex).map_err(StartError::Config)?,
        None => {
            log::warn!(
                "auth.token_key is not set: using a random key; tokens will not survive a restart or be shared between nodes"
            );
            support::random_bytes()
        }
    };
    run_migrations(&config).await?;
    let pool = db::pool(&config.database).map_err(StartError::database)?;
    let pipeline = db::Pipeline::new(&config.database, SendQueue::statements())
        .map_err(StartError::database)?;
    let auth =
        Auth::new(token_key, &config.auth, &config.database).map_err(StartError::database)?;
    auth.warm_up().await;
    let listen_thread = db::DbThread::start("chatapp-listen").map_err(StartError::Thread)?;
    let send_thread = db::DbThread::start("chatapp-send").map_err(StartError::Thread)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let rates = Arc::new(limits::RateLimits::new(
        &config.limits.rate,
        metrics.clone(),
    ));
    tokio::spawn(tidy_rate_limits(rates.clone()));
    tokio::spawn(messages::search::maintain(pool.clone()));
    let setup = messages::SendSetup {
        pipeline,
        pool: pool.clone(),
        max_chars: config.limits.message_chars,
        rates: rates.clone(),
        metrics: metrics.clone(),
    };
    let sends = SendQueue::start(setup, &send_thread);
    let hasher = Hasher::new(config.auth.bcrypt_cost, config.limits.bcrypt_queue)
        .await
        .map_err(StartError::database)?;
    let listener = listen(addr).map_err(StartError::Bind)?;
    let hub = Hub::start(
        &config,
        pool.clone(),
        metrics.clone(),
        &listen_thread,
        send_thread,
    )
    .await
    .map_err(StartError::database)?;
    let hasher = Arc::new(hasher);
    metrics.register_collector(Box::new(ops::NodeState {
        hub: hub.clone(),
        pool: pool.clone(),
        hasher: hasher.clone(),
    }));
    let ctx = Context {
        pool,
        auth: Arc::new(auth),
        limits: Arc::new(config.limits.clone()),
        rates,
    };
    Ok(App {
        listener,
        config: Arc::new(config),
        ctx,
        hasher,
        sends: Arc::new(sends),
        hub,
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
    })
}

/// Drops idle keys from the rate limits every few seconds, for as long as
/// the runtime lives.
async fn tidy_rate_limits(rates: Arc<limits::RateLimits>) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        rates.tidy();
    }
}

/// Binds `addr` with `TCP_NODELAY` on the listening socket, which Linux
/// copies to every accepted socket (warp accepts them itself and offers no
/// hook to set it). Without it a WebSocket's small frames wait for the
/// client's delayed ACK whenever an earlier write is still unacknowledged
/// (up to 40 ms on Linux).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's own `TcpListener::bind` do on Unix: a restarted
    // server can bind while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl App {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The node's real-time hub (tests inspect it).
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The node's token issuer and checker.
    pub fn auth(&self) -> Arc<Auth> {
        self.ctx.auth.clone()
    }

    /// The one line a starting node logs: what it is, where it listens,
    /// which database (no credentials), and what differs from the defaults.
    pub fn describe(&self) -> String {
        let database = config::database_target(&self.config.database.url);
        let settings = self.config.non_default_settings();
        let settings = if settings.is_empty() {
            "none".to_string()
        } else {
            settings.join(", ")
        };
        format!(
            "chatapp {} listening on {}, node {}, database {database}, non-default settings: {settings}",
            env!("CARGO_PKG_VERSION"),
            self.local_addr(),
            self.hub.node_id,
        )
    }

    /// Serves until `shutdown` resolves. Then `/readyz` answers 503 for
    /// `http.drain_delay_secs` while requests are still served (load
    /// balancers route around the node), then in-flight requests finish,
    /// WebSockets close with 1001 after flushing their queues, and the pool
    /// closes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hub = self.hub.clone();
        let draining = self.draining.clone();
        let drain_delay = Duration::from_secs(self.config.http.drain_delay_secs);
        // WebSockets are upgraded connections the HTTP server no longer tracks:
        // close them once the drain delay is over, so graceful shutdown can finish.
        tokio::spawn(async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            if !drain_delay.is_zero() {
                log::info!("draining for {drain_delay:?} before closing connections");
                tokio::time::sleep(drain_delay).await;
            }
            hub.shutdown().await;
            let _ = stop_tx.send(());
        });
        if let Some(addr) = &self.config.metrics.listen {
            self.serve_metrics_apart(addr);
        }
        let service = warp::service(self.routes());
        let serving = server::Serving {
            config: &self.config.http,
            drain: Duration::from_millis(self.hub.config.close_flush_timeout_ms)
                + Duration::from_secs(5),
            metrics: self.metrics.clone(),
        };
        let stopped = async {
            let _ = stop_rx.await;
        };
        server::serve(self.listener, service, serving, stopped).await;
        log::info!("server stopped");
    }

    /// `GET /metrics` on a listener of its own (`metrics.listen`), until
    /// the runtime stops.
    fn serve_metrics_apart(&self, addr: &str) {
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            return;
        };
        let routes = ops::metrics(&self.metrics);
        tokio::spawn(async move {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => warp::serve(routes).incoming(listener).run().await,
                Err(e) => log::error!("cannot serve metrics on {addr}: {e}"),
            }
        });
    }

    /// The whole HTTP surface.
    fn routes(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone + use<>
    {
        let ctx = &self.ctx;
        // The busiest routes first: a request is tried against each route
        // in turn until one takes it.
        let api = warp::path!("api" / "v1" / ..).and(
            messages::routes(ctx, &self.sends)
                .or(chats::routes(ctx))
                .unify()
                .or(users::routes(ctx, &self.hasher))
                .unify()
                .boxed(),
        );
        let timeout = Duration::from_secs(self.config.database.connect_timeout_secs);
        let readiness = ops::Readiness {
            pool: ctx.pool.clone(),
            hub: self.hub.clone(),
            draining: self.draining.clone(),
            timeout,
        };
        // Without `metrics.listen`, the metrics are served here; with it, a
        // request here finds nothing.
        let metrics = ops::metrics(&self.metrics)
            .and(warp::any().map({
                let apart = self.config.metrics.listen.is_some();
                move || apart
            }))
            .and_then(|response, apart: bool| async move {
                if apart {
                    Err(warp::reject::not_found())
                } else {
                    Ok::<_, warp::Rejection>(response)
                }
            });
        let routes = contract::methods_guard()
            .and(
                api.or(health::route(&ctx.pool, timeout))
                    .unify()
                    .or(ops::livez())
                    .unify()
                    .or(ops::readyz(&readiness))
                    .unify()
                    .or(metrics)
                    .unify()
                    .or(ws::routes(ctx, &self.sends, &self.hub))
                    .unify()
                    .or(contract::openapi())
                    .unify()
                    .or(contract::asyncapi())
                    .unify()
                    .or(contract::docs::page())
                    .unify()
                    .or(contract::docs::asset())
                    .unify()
                    .or(web::routes())
                    .unify()
                    .or(contract::options()),
            )
            .unify()
            .boxed();
        // An empty origin list means no CORS headers at all (same-origin clients only).
        let routes = match cors(&self.config.cors.origins) {
            Some(cors) => routes.with(cors).map(warp::Reply::into_response).boxed(),
            None => routes,
        };
        routes
            .recover(error::recover)
            .unify()
            .map(warp::Reply::into_response)
    }
}

fn cors(origins: &[String]) -> Option<warp::cors::Builder> {
    if origins.is_empty() {
        return None;
    }
    let builder = warp::cors()
        .allow_methods(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600);
    Some(if origins.iter().any(|o| o == "*") {
        builder.allow_any_origin()
    } else {
        builder.allow_origins(origins.iter().map(String::as_str))
    })
}

#[cfg(test)]
mod tests {
    use super::listen;

    #[tokio::test]
    async fn accepted_sockets_send_small_frames_without_waiting_for_acks() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();

        let (accepted, _) = listener.accept().await.unwrap();

        assert!(
            accepted.nodelay().unwrap(),
            "Nagle is on for accepted sockets"
        );
    }
}
