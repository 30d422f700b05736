//! The connection pool and the small helpers every resource's SQL shares.

use crate::config::DatabaseConfig;
use crate::error::ApiError;
use bb8_postgres::PostgresConnectionManager;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

pub type Pool = bb8::Pool<PostgresConnectionManager<NoTls>>;
pub type PooledClient<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<NoTls>>;

/// Builds the pool without connecting: the server starts (and reports 503)
/// even while the database is briefly unreachable, and recovers when it returns.
pub fn pool(cfg: &DatabaseConfig) -> Result<Pool, tokio_postgres::Error> {
    let mut pg: tokio_postgres::Config = cfg.url.parse()?;
    pg.connect_timeout(Duration::from_secs(cfg.connect_timeout_secs));
    if pg.get_application_name().is_none() {
        pg.application_name("chatapp");
    }
    session_defaults(&mut pg);
    // Request queries only: the listener, the pipelines and migrations have
    // connections of their own.
    let options = format!(
        "{} -c statement_timeout={}",
        pg.get_options().unwrap_or(""),
        cfg.statement_timeout_ms
    );
    pg.options(options.trim());
    let manager = PostgresConnectionManager::new(pg, NoTls);
    Ok(bb8::Pool::builder()
        .max_size(cfg.pool_size)
        // A broken connection shows up as `is_closed()`; checking every checkout
        // with a round trip would cost every request a query.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(cfg.connect_timeout_secs))
        .build_unchecked(manager))
}

/// Settings every chatapp session runs with.
///
/// JIT off: our statements are short OLTP queries, but row estimates on tiny
/// tables (the one-row `event_seq`, set-returning JSON functions) can push
/// their cost past `jit_above_cost`, and compiling then costs more than the
/// statement itself, on every execution.
pub fn session_defaults(pg: &mut tokio_postgres::Config) {
    let mut options = pg.get_options().unwrap_or("").to_string();
    if !options.contains("jit=") {
        options.push_str(" -c jit=off");
    }
    pg.options(options.trim());
}

/// A thread of its own for work that must not wait behind the socket
/// writers: one reads the sockets that send messages (see `ws::conn`) and
/// runs the send commits (with their pipeline connection), another the
/// event listener. On the main runtime each step of a send — the commit's
/// response, its NOTIFY, the sender's frame — was a task woken by I/O that
/// waited in the run queue behind the socket writers woken before it, so
/// under fan-out load commits came later and writers found fewer frames
/// per wake-up. Here the kernel schedules them beside the runtime's
/// workers. A send read and its commit share a thread: on a full machine
/// every hand-over to another thread waits for a core. The commits and the
/// listener are apart because the dispatch walks a chat's whole room
/// (10,000 queues for a 10,000-member chat): on one thread the next
/// commit's answer waited behind that walk. Each thread stops when the
/// runtime that started it is dropped.
#[derive(Clone)]
pub struct DbThread {
    handle: tokio::runtime::Handle,
}

impl DbThread {
    /// Starts the thread `name`; call it on the runtime whose lifetime it shares.
    pub fn start(name: &str) -> std::io::Result<DbThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        // Dropped with the calling runtime's tasks (a test's runtime, or the
        // process's at exit), which ends the thread and its tasks with it.
        tokio::spawn(async move {
            let _stop_when_dropped = stop_tx;
            std::future::pending::<()>().await
        });
        Ok(DbThread { handle })
    }

    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// Opens a connection outside the pool (migrations, LISTEN).
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut pg: tokio_postgres::Config = url.parse()?;
    pg.connect_timeout(timeout);
    session_defaults(&mut pg);
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// One connection shared by all callers, for statements that serialise anyway
/// (message sends, committed in batches by `messages::SendQueue`) or are too
/// cheap to be worth a pool checkout (the token check every request runs).
/// tokio-postgres pipelines the queries issued concurrently on a connection,
/// so they go out back to back and PostgreSQL runs them one after another on
/// one backend, each committed on its own. Every message send takes the
/// `event_seq` row lock (see `events`): on one backend sends cost no lock
/// waits, where a pool of backends convoys on that lock (BENCHMARKS.md has
/// the figures). Statements are prepared once per connection; a broken
/// connection is replaced on the next call.
pub struct Pipeline {
    config: tokio_postgres::Config,
    statements: Vec<(&'static str, &'static [Type])>,
    current: Mutex<Option<Arc<Pipelined>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// A live pipeline connection with its prepared statements, in the order given.
pub struct Pipelined {
    pub client: Client,
    pub statements: Vec<Statement>,
}

impl Pipeline {
    pub fn new(
        cfg: &DatabaseConfig,
        statements: Vec<(&'static str, &'static [Type])>,
    ) -> Result<Pipeline, tokio_postgres::Error> {
        let mut pg: tokio_postgres::Config = cfg.url.parse()?;
        pg.connect_timeout(Duration::from_secs(cfg.connect_timeout_secs));
        if pg.get_application_name().is_none() {
            pg.application_name("chatapp");
        }
        session_defaults(&mut pg);
        // Every pipelined statement is a handful of index lookups whose best
        // plan does not depend on the values, so plan once. Left to `auto`,
        // PostgreSQL compared the generic plan of the send batch with custom
        // plans of the small first batches, kept planning every execution, and
        // spent a third of the send backend's CPU there (BENCHMARKS.md).
        let options = format!(
            "{} -c plan_cache_mode=force_generic_plan",
            pg.get_options().unwrap_or("")
        );
        pg.options(options.trim());
        Ok(Pipeline {
            config: pg,
            statements,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    pub async fn get(&self) -> Result<Arc<Pipelined>, ApiError> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            log::warn!("cannot connect to the database: {e}");
            ApiError::DatabaseUnavailable
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::warn!("pipeline connection closed: {e}");
            }
        });
        let mut statements = Vec::with_capacity(self.statements.len());
        for (sql, types) in &self.statements {
            statements.push(client.prepare_typed(sql, types).await?);
        }
        let live = Arc::new(Pipelined { client, statements });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
        Ok(live)
    }

    fn live(&self) -> Option<Arc<Pipelined>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| !c.client.is_closed())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::DbThread;
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::time::Duration;

    #[test]
    fn the_database_thread_stops_with_the_runtime_that_started_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (held, dropped) = channel::<()>();
        runtime.block_on(async {
            let db_thread = DbThread::start("test-db").unwrap();
            db_thread.spawn(async move {
                let _held = held;
                std::future::pending::<()>().await
            });
        });

        drop(runtime);

        assert_eq!(
            dropped.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected),
            "the task on the database thread outlived the runtime"
        );
    }
}
