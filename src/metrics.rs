//! Prometheus metrics (`GET /metrics`, the text format), recorded with
//! `prometheus-client`. Names follow Prometheus conventions: a `chatapp_`
//! prefix, base units, `_total` counters, `_seconds` histograms, route
//! templates (never raw paths or ids) as labels.
//!
//! What is counted on a hot path costs an atomic add at most: deliveries
//! and slow-consumer closes are the registry's own counters, and the pool,
//! the registry's sizes and the password queue are read at scrape time by
//! a collector (see `lib`), never updated as they change.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Mutex;
use std::time::Duration;

/// A request method as a label: the standard ones by name, any other as
/// `other` (a client choosing methods must not grow the label set).
pub fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The documented path (`/api/v1/chats/{id}`), or `other`.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// The WebSocket close code, or `client` (the client closed) or `error`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayLabels {
    /// `memory`, `log` or `not_recovered`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    /// `view` (the node's view of recently read chats) or `read`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A node's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub ws_open: Gauge,
    /// Session starts waiting for their turn (`ws::admission`).
    pub ws_starts_waiting: Gauge,
    pub ws_opened: Counter,
    pub ws_closed: Family<CloseLabels, Counter>,
    pub replays: Family<ReplayLabels, Counter>,
    pub replayed_events: Counter,
    pub snapshot_chats: Family<SnapshotLabels, Counter>,
    pub send_batch_size: Histogram,
    pub send_commit: Histogram,
    pub listen_lag: Histogram,
    pub listener_reconnects: Counter,
    /// Presence updates and fan-outs that failed after their retries (`ws::presence`).
    pub presence_update_failures: Counter,
    /// Times the node re-recorded its sessions from its connections after one.
    pub presence_resyncs: Counter,
    pub rate_limited: Family<ActionLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets, 0.5 ms to ~16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chatapp");
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            ws_open: Gauge::default(),
            ws_starts_waiting: Gauge::default(),
            ws_opened: Counter::default(),
            ws_closed: Family::default(),
            replays: Family::default(),
            replayed_events: Counter::default(),
            snapshot_chats: Family::default(),
            send_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            send_commit: latency(),
            listen_lag: latency(),
            listener_reconnects: Counter::default(),
            presence_update_failures: Counter::default(),
            presence_resyncs: Counter::default(),
            rate_limited: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            metrics.http_duration.clone(),
        );
        r.register(
            "ws_connections",
            "WebSocket connections open on this node",
            metrics.ws_open.clone(),
        );
        r.register(
            "ws_session_starts_waiting",
            "WebSocket session starts waiting for their turn",
            metrics.ws_starts_waiting.clone(),
        );
        r.register(
            "ws_connections_opened",
            "WebSocket connections opened",
            metrics.ws_opened.clone(),
        );
        r.register(
            "ws_connections_closed",
            "WebSocket connections closed, by close code",
            metrics.ws_closed.clone(),
        );
        r.register(
            "ws_replays",
            "Connections resuming with since, by where the replay came from",
            metrics.replays.clone(),
        );
        r.register(
            "ws_replayed_events",
            "Events sent to resuming connections",
            metrics.replayed_events.clone(),
        );
        r.register(
            "presence_snapshot_chats",
            "Chats whose members presence snapshots took, by source: the node's view or a read",
            metrics.snapshot_chats.clone(),
        );
        r.register(
            "send_batch_size",
            "Messages committed together in one group commit",
            metrics.send_batch_size.clone(),
        );
        r.register_with_unit(
            "send_commit_duration",
            "Time a group commit of messages takes",
            Unit::Seconds,
            metrics.send_commit.clone(),
        );
        r.register_with_unit(
            "listen_lag",
            "Time from an event's commit to its dispatch on this node",
            Unit::Seconds,
            metrics.listen_lag.clone(),
        );
        r.register(
            "listener_reconnects",
            "Times the node's LISTEN connection was re-established",
            metrics.listener_reconnects.clone(),
        );
        r.register(
            "presence_update_failures",
            "Presence updates (a batch of changes, a re-sync, or a fan-out to this node's sockets) that failed after their retries",
            metrics.presence_update_failures.clone(),
        );
        r.register(
            "presence_resyncs",
            "Times this node re-recorded its users' sessions from its connections after a presence update failed",
            metrics.presence_resyncs.clone(),
        );
        r.register(
            "rate_limited",
            "Requests and frames refused by a rate limit, by action",
            metrics.rate_limited.clone(),
        );
        r.register(
            "build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        *metrics.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        metrics
    }

    /// Adds metrics read at scrape time.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Every metric, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_text::encode(&mut text, &registry) {
            log::error!("cannot encode metrics: {e}");
        }
        text
    }

    pub fn http_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    pub fn ws_closed(&self, code: String) {
        self.ws_open.dec();
        self.ws_closed.get_or_create(&CloseLabels { code }).inc();
    }

    pub fn replay(&self, source: &'static str) {
        self.replays.get_or_create(&ReplayLabels { source }).inc();
    }

    /// The counter of snapshot chats taken from `source` (`view` or `read`),
    /// for a holder that counts without the rest of the metrics.
    pub fn snapshot_chats(&self, source: &'static str) -> Counter {
        self.snapshot_chats
            .get_or_create(&SnapshotLabels { source })
            .clone()
    }

    pub fn limited(&self, action: &'static str) {
        self.rate_limited
            .get_or_create(&ActionLabels { action })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_counters_with_total_and_durations_in_seconds() {
        let metrics = Metrics::new();
        metrics.http_request("GET", "/health", 200, Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains(
                "chatapp_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("chatapp_http_request_duration_seconds_count"),
            "{text}"
        );
        assert!(text.contains("chatapp_build_info{version="), "{text}");
    }
}
