//! chatapp: a real-time chat backend. `build()` assembles the whole service
//! bound to a listener, so `main` and the tests start it the same way.

pub mod auth;
pub mod chats;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod logging;
pub mod messages;
pub mod migrate;
pub mod password;
pub mod users;
pub mod ws;

use config::{Config, ConfigError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;

/// Everything a handler may need, shared behind an `Arc` (see [`http::State`]).
pub struct AppState {
    pub config: Config,
    pub pool: db::Pool,
    /// Sends waiting to be committed together (see [`messages::SendQueue`]).
    pub sends: messages::SendQueue,
    /// The connection token checks are pipelined on.
    pub token_checks: db::Pipeline,
    pub token_key: auth::TokenKey,
    /// A bcrypt hash of nothing in particular, so logins for unknown users cost
    /// the same as real ones.
    pub dummy_hash: String,
    pub hub: Arc<ws::Hub>,
}

#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Database(String),
    Migrate(migrate::MigrateError),
    Bind(std::io::Error),
    Thread(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Database(e) => write!(f, "cannot connect to the database: {e}"),
            StartError::Migrate(e) => write!(f, "{e}"),
            StartError::Bind(e) => write!(f, "cannot listen: {e}"),
            StartError::Thread(e) => write!(f, "cannot start the database thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A built service, listening but not yet serving.
pub struct App {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

/// Applies pending migrations on a dedicated connection.
pub async fn run_migrations(config: &Config) -> Result<Vec<&'static str>, StartError> {
    let mut client = db::connect(
        &config.database.url,
        Duration::from_secs(config.database.connect_timeout_secs),
    )
    .await
    .map_err(|e| StartError::Database(e.to_string()))?;
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
            random_bytes()
        }
    };
    run_migrations(&config).await?;
    let pool = db::pool(&config.database).map_err(|e| StartError::Database(e.to_string()))?;
    let pipeline = db::Pipeline::new(&config.database, messages::pipelined_statements())
        .map_err(|e| StartError::Database(e.to_string()))?;
    let token_checks = auth::token_check_pipeline(&config.database)
        .map_err(|e| StartError::Database(e.to_string()))?;
    // Connect and prepare now, so the first requests do not wait for it; a
    // failure here is retried by the first request that needs the connection.
    if let Err(e) = token_checks.get().await {
        log::warn!("cannot prepare a pipelined connection yet: {e:?}");
    }
    let db_thread = db::DbThread::start().map_err(StartError::Thread)?;
    let sends = messages::SendQueue::start(pipeline, &db_thread);
    let cost = config.auth.bcrypt_cost;
    let dummy_hash = password::hash_password("dummy password".into(), cost)
        .await
        .map_err(|e| StartError::Database(format!("{e:?}")))?;
    let listener = listen(addr).map_err(StartError::Bind)?;
    let hub = ws::Hub::start(&config, pool.clone(), &db_thread)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    let state = Arc::new(AppState {
        config,
        pool,
        sends,
        token_checks,
        token_key: auth::TokenKey::new(token_key),
        dummy_hash,
        hub,
    });
    Ok(App { listener, state })
}

/// Binds `addr` with `TCP_NODELAY` on the listening socket, which Linux
/// copies to every accepted socket (warp accepts them itself and offers no
/// hook to set it). Without it a WebSocket's small frames wait for the
/// client's delayed ACK whenever an earlier write is still unacknowledged:
/// up to 40 ms per frame in the `fanout` benchmark.
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

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish,
    /// closes WebSockets with 1001 after flushing their queues, and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hub = state.hub.clone();
        // WebSockets are upgraded connections the HTTP server no longer tracks:
        // close them as soon as shutdown starts, so graceful shutdown can finish.
        tokio::spawn(async move {
            shutdown.await;
            hub.shutdown().await;
            let _ = stop_tx.send(());
        });
        warp::serve(routes(state.clone()))
            .incoming(self.listener)
            .graceful(async {
                let _ = stop_rx.await;
            })
            .run()
            .await;
        log::info!("server stopped");
    }
}

/// The whole HTTP surface.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
    let api = warp::path!("api" / "v1" / ..).and(
        auth::routes(state.clone())
            .or(users::routes(state.clone()))
            .unify()
            .or(chats::routes(state.clone()))
            .unify()
            .or(messages::routes(state.clone()))
            .unify()
            .boxed(),
    );
    let routes = health::route(state.clone())
        .or(ws::routes(state.clone()))
        .unify()
        .or(api)
        .unify()
        .boxed();
    // An empty origin list means no CORS headers at all (same-origin clients only).
    let routes = match cors(&state.config.cors.origins) {
        Some(cors) => routes.with(cors).map(warp::Reply::into_response).boxed(),
        None => routes,
    };
    routes
        .recover(error::recover)
        .unify()
        .with(warp::log::custom(logging::log_request))
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

/// 32 bytes from the OS's CSPRNG.
pub fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
