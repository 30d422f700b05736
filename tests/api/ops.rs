//! The operator's surface: probes, Prometheus metrics that move when what
//! they count happens, request ids.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// `GET /metrics` parsed: `name{labels}` (labels as written) to value.
pub(crate) async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    parse_metrics(&text)
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            (series.to_string(), value)
        })
        .collect()
}

pub(crate) fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

/// Scrapes until `series` exceeds `above` (some counters move after the
/// response that caused them, e.g. once a socket's task ends).
pub(crate) async fn wait_above(app: &TestApp, series: &str, above: f64) -> f64 {
    for _ in 0..100 {
        let now = value(&scrape(app).await, series);
        if now > above {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} stayed at {above}");
}

#[tokio::test]
async fn livez_answers_without_the_database_and_readyz_with_it() {
    let app = spawn_app().await;

    let (live, live_body) = app
        .request(reqwest::Method::GET, "/livez", None, None)
        .await;
    let (ready, ready_body) = app
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;

    assert_eq!((live, live_body), (StatusCode::OK, json!({"status": "ok"})));
    assert_eq!(
        (ready, ready_body),
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn metrics_count_requests_sockets_messages_replays_and_limits() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.limits.rate.enabled = true;
        c.limits.rate.register_per_ip = chatapp::config::Rate {
            per_minute: 1,
            burst: 2,
        };
    })
    .await;
    let before = scrape(&app).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;

    // Act: a request, a socket that receives a message and resumes, a refusal.
    app.request(reqwest::Method::GET, "/health", None, None)
        .await;
    let (mut ws, ready) = connected(&app, &bob, None).await;
    app.send_message(&alice, chat, "hello").await;
    ws.next_of_type("message").await;
    drop(ws);
    let since = ready["last_event_id"].as_i64().unwrap();
    let (_again, _) = connected(&app, &bob, Some(since)).await;
    let (status, _) = app
        .request(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"username": unique_name("third"), "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 429);

    // Assert
    let after = scrape(&app).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"chatapp_http_requests_total{method="GET",route="/health",status="200"}"#),
        1.0
    );
    assert!(
        moved(
            r#"chatapp_http_request_duration_seconds_count{method="POST",route="/api/v1/messages"}"#
        ) >= 1.0
    );
    assert_eq!(moved("chatapp_ws_connections_opened_total"), 2.0);
    assert_eq!(moved("chatapp_ws_events_delivered_total"), 1.0);
    assert!(moved("chatapp_send_batch_size_count") >= 1.0);
    assert!(moved("chatapp_send_commit_duration_seconds_count") >= 1.0);
    assert!(moved("chatapp_listen_lag_seconds_count") >= 1.0);
    assert_eq!(moved(r#"chatapp_ws_replays_total{source="memory"}"#), 1.0);
    assert!(moved("chatapp_ws_replayed_events_total") >= 1.0);
    assert_eq!(
        moved(r#"chatapp_rate_limited_total{action="register"}"#),
        1.0
    );
    wait_above(
        &app,
        r#"chatapp_ws_connections_closed_total{code="client"}"#,
        0.0,
    )
    .await;
    for present in [
        "chatapp_ws_connections",
        "chatapp_ws_slow_consumer_disconnects_total",
        "chatapp_db_pool_connections_in_use",
        "chatapp_db_pool_connections_idle",
        "chatapp_db_pool_waits_total",
        "chatapp_bcrypt_queue_depth",
        "chatapp_bcrypt_jobs_total",
        "chatapp_listener_reconnects_total",
        "chatapp_presence_update_failures_total",
        "chatapp_presence_resyncs_total",
    ] {
        assert!(after.contains_key(present), "{present} missing");
    }
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("chatapp_build_info{version=")),
        "build info missing"
    );
    assert!(
        after.keys().all(|k| !k.contains(&format!("/{chat}"))),
        "a raw path became a label"
    );
}

#[tokio::test]
async fn a_killed_listener_connection_counts_as_a_reconnect() {
    let app = spawn_app().await;
    pg::kill_listeners(&app.database_url).await;

    wait_above(&app, "chatapp_listener_reconnects_total", 0.0).await;
}

#[tokio::test]
async fn metrics_can_be_served_on_a_listener_of_their_own() {
    // Arrange
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|c| c.metrics.listen = Some(format!("127.0.0.1:{port}"))).await;

    // Act
    let mut apart = None;
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            apart = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (main, _) = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await;

    // Assert
    assert!(apart.is_some_and(|t| t.contains("chatapp_build_info")));
    assert_eq!(main, 404, "not on the public listener");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_quote_it() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let given = app
        .http
        .get(app.url("/api/v1/auth/me"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    let made = app.http.get(app.url("/health")).send().await.unwrap();
    let odd = app
        .http
        .get(app.url("/health"))
        .header("x-request-id", "spaces are not welcome")
        .send()
        .await
        .unwrap();

    // Assert: a sensible id is kept, else one is made.
    assert_eq!(given.headers()["x-request-id"], "trace-42");
    let body: Value = given.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-42", "{body}");
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!made_id.is_empty());
    let odd_id = odd.headers()["x-request-id"].to_str().unwrap();
    assert!(
        odd_id != "spaces are not welcome" && odd_id != made_id,
        "{odd_id}"
    );
}

#[tokio::test]
async fn a_documented_path_with_another_method_is_405_with_allow() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;

    let response = app
        .http
        .patch(app.url("/api/v1/chats/1"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["allow"],
        "DELETE, GET, HEAD, PUT, OPTIONS"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_made_up_method_is_counted_as_other_not_by_its_name() {
    let app = spawn_app().await;

    let method = reqwest::Method::from_bytes(b"BREW").unwrap();
    let response = app
        .http
        .request(method, app.url("/api/v1/chats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    let metrics = scrape(&app).await;
    let series = |m: &str| {
        format!(
            "chatapp_http_requests_total{{method=\"{m}\",route=\"/api/v1/chats\",status=\"405\"}}"
        )
    };
    assert_eq!(value(&metrics, &series("other")), 1.0, "{metrics:?}");
    assert_eq!(value(&metrics, &series("BREW")), 0.0);
}
