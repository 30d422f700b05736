//! What operators probe and scrape: `/livez` (the process serves),
//! `/readyz` (the database answers, this node's LISTEN connection is up,
//! and it is not draining) and `/metrics` (Prometheus), plus the collector
//! that reads the node's state at scrape time.

use crate::config::Config;
use crate::db::Pool;
use crate::http::with;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::password::Hasher;
use crate::ws::Hub;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// What the readiness probe looks at.
#[derive(Clone)]
pub struct Readiness {
    pub pool: Pool,
    pub hub: Arc<Hub>,
    /// Set on SIGTERM: the node is about to stop, route around it.
    pub draining: Arc<AtomicBool>,
    pub timeout: Duration,
}

/// GET /livez
pub fn livez() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("livez")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({ "status": "ok" })).into_response())
}

/// GET /readyz
pub fn readyz(
    readiness: &Readiness,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("readyz")
        .and(warp::get())
        .and(with(readiness.clone()))
        .then(ready)
}

async fn ready(readiness: Readiness) -> Response {
    if readiness.draining.load(Ordering::SeqCst) {
        return unready("draining", true, readiness.hub.is_listening());
    }
    let database = async {
        let client = readiness.pool.get().await.ok()?;
        client.simple_query("select 1").await.ok()
    };
    let database = matches!(
        tokio::time::timeout(readiness.timeout, database).await,
        Ok(Some(_))
    );
    let listener = readiness.hub.is_listening();
    if database && listener {
        warp::reply::json(&json!({ "status": "ready" })).into_response()
    } else {
        unready("unavailable", database, listener)
    }
}

fn unready(status: &str, database: bool, listener: bool) -> Response {
    let body = json!({ "status": status, "database": database, "listener": listener });
    warp::reply::with_status(warp::reply::json(&body), StatusCode::SERVICE_UNAVAILABLE)
        .into_response()
}

/// GET /metrics
pub fn metrics(
    metrics: &Arc<Metrics>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with(metrics.clone()))
        .map(|metrics: Arc<Metrics>| {
            warp::reply::with_header(metrics.render(), "content-type", CONTENT_TYPE).into_response()
        })
}

/// Asks the server `config` describes for `GET /livez` (on loopback when it
/// listens on every address), within two seconds.
pub async fn probe_livez(config: &Config) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.listen_addr().map_err(|e| e.to_string())?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .map_err(|_| format!("{addr} did not answer within 2 s"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        let status = String::from_utf8_lossy(&answer);
        Err(format!(
            "{addr} answered {}",
            status.lines().next().unwrap_or("nothing")
        ))
    }
}

/// Reads, at scrape time, what the node keeps counts of anyway: its
/// registry, its pool, its password queue.
pub struct NodeState {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub hasher: Arc<Hasher>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeState")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.hub.registry.stats();
        let e = &mut encoder;
        counter(
            e,
            "ws_events_delivered",
            "Frames of durable events queued for connections",
            stats.events_delivered,
        )?;
        counter(
            e,
            "ws_slow_consumer_disconnects",
            "Connections closed because their queue overflowed (4008)",
            stats.slow_consumer_disconnects,
        )?;
        gauge(
            e,
            "ws_connected_users",
            "Users with at least one WebSocket on this node",
            stats.connected_users as i64,
        )?;
        gauge(
            e,
            "ws_active_rooms",
            "Chats with at least one subscribed connection on this node",
            stats.active_rooms as i64,
        )?;
        let pool = self.pool.state();
        gauge(
            e,
            "db_pool_connections_in_use",
            "Pooled database connections checked out",
            i64::from(pool.connections - pool.idle_connections),
        )?;
        gauge(
            e,
            "db_pool_connections_idle",
            "Pooled database connections waiting to be used",
            i64::from(pool.idle_connections),
        )?;
        counter(
            e,
            "db_pool_waits",
            "Connection checkouts that had to wait for one",
            pool.statistics.get_waited,
        )?;
        counter(
            e,
            "db_pool_timeouts",
            "Connection checkouts that gave up waiting",
            pool.statistics.get_timed_out,
        )?;
        gauge(
            e,
            "bcrypt_queue_depth",
            "Password checks waiting or running",
            self.hasher.queued() as i64,
        )?;
        counter(
            e,
            "bcrypt_skipped",
            "Queued password checks skipped because their client had gone",
            self.hasher.skipped(),
        )?;
        counter(
            e,
            "bcrypt_jobs",
            "Password hashes and checks run",
            self.hasher.done(),
        )?;
        Ok(())
    }
}
