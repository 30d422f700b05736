//! The connection pool and the small helpers every resource's SQL shares.

use crate::config::DatabaseConfig;
use bb8_postgres::PostgresConnectionManager;
use std::time::Duration;
use tokio_postgres::NoTls;

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
/// their cost past `jit_above_cost`, and compiling then costs 10-40 ms per
/// execution — measured as the dominant cost of a message send.
pub fn session_defaults(pg: &mut tokio_postgres::Config) {
    let mut options = pg.get_options().unwrap_or("").to_string();
    if !options.contains("jit=") {
        options.push_str(" -c jit=off");
    }
    pg.options(options.trim());
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
