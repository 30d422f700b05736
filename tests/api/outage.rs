//! The database goes away and comes back: health says 503 "degraded",
//! requests get 503 `database_unavailable` (never a 500 or a hang), and the
//! server recovers on its own once PostgreSQL is back on the same port.
//!
//! Uses a private PostgreSQL cluster it can stop, never the shared one.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `GET /health`; an outage must never make it hang.
async fn health(app: &TestApp) -> (StatusCode, Value) {
    tokio::time::timeout(
        Duration::from_secs(20),
        app.request(Method::GET, "/health", None, None),
    )
    .await
    .expect("GET /health answered within 20 s")
}

/// Polls `check` until it returns true, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_the_server_recovers() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(pg::PrivateCluster::create)
            .await
            .unwrap(),
    );
    let url = cluster.migrated_database().await;
    let app = spawn_node(&url, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "ops", &[&bob]).await;
    app.send_message(&bob, chat, "before the outage").await;

    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");

    // Arrange: PostgreSQL goes away.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();

    // Health reports the outage, within the configured connect timeout (2 s) plus slack.
    let started = Instant::now();
    let (status, body) = health(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_ne!(body["database"], "ok");
    assert_eq!(body["service"], "chatapp");
    assert!(
        body["version"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "health took {:?}",
        started.elapsed()
    );

    // Every kind of request that needs the database gets a 503, never a 500.
    let requests = [
        (
            Method::GET,
            "/api/v1/auth/me".to_string(),
            Some(&alice.token),
            None,
        ),
        (
            Method::GET,
            "/api/v1/users".to_string(),
            Some(&alice.token),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/chats/{chat}"),
            Some(&alice.token),
            None,
        ),
        (
            Method::POST,
            "/api/v1/messages".to_string(),
            Some(&alice.token),
            Some(json!({ "chat_id": chat, "content": "during the outage" })),
        ),
        (
            Method::POST,
            "/api/v1/auth/login".to_string(),
            None,
            Some(json!({ "username": alice.username, "password": PASSWORD })),
        ),
        (
            Method::POST,
            "/api/v1/auth/register".to_string(),
            None,
            Some(json!({ "username": unique_name("late"), "password": PASSWORD })),
        ),
    ];
    // Sent together: each may wait out the pool's connect timeout.
    let started = Instant::now();
    let all =
        futures_util::future::join_all(requests.into_iter().map(|(method, path, token, body)| {
            let app = &app;
            async move {
                let resp = app
                    .request(method.clone(), &path, token.map(String::as_str), body)
                    .await;
                (method, path, resp)
            }
        }));
    let responses = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("requests answered within 20 s during the outage");
    for (method, path, (status, resp)) in responses {
        assert_eq!(status, 503, "{method} {path}: {resp}");
        assert_error(status, &resp, 503, "database_unavailable");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "requests took {:?} to fail",
        started.elapsed()
    );
    // Health keeps saying so (the pool does not pretend to have recovered).
    let (status, _) = health(&app).await;
    assert_eq!(status, 503);

    // Act: PostgreSQL returns on the same port.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();

    // Assert: the same server recovers without a restart.
    eventually(Duration::from_secs(30), "health to be ok again", || async {
        health(&app).await.0 == StatusCode::OK
    })
    .await;
    let (_, body) = health(&app).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");

    eventually(
        Duration::from_secs(30),
        "authenticated requests",
        || async { app.get("/api/v1/auth/me", &alice.token).await.0 == StatusCode::OK },
    )
    .await;
    let sent = app.send_message(&alice, chat, "after the outage").await;
    let (status, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &bob.token)
        .await;
    assert_eq!(status, 200, "{history}");
    let contents: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["after the outage", "before the outage"]);
    assert_eq!(history[0]["id"], sent["id"]);
    let (status, body) = app.login(&bob.username, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn health_is_200_ok_with_service_version_timestamp_and_database() {
    let app = spawn_app().await;

    let (status, body) = health(&app).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "chatapp");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["database"], "ok");
    let timestamp = body["timestamp"].as_str().expect("timestamp string");
    let parsed =
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("not RFC 3339: {timestamp}: {e}"));
    assert!(timestamp.ends_with('Z'), "not UTC: {timestamp}");
    let skew = (time::OffsetDateTime::now_utc() - parsed).abs();
    assert!(skew < time::Duration::minutes(1), "timestamp {timestamp}");
}
