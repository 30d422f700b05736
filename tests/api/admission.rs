//! Session starts wait in line (`ws.session_starts` at once, in arrival
//! order) instead of failing when many arrive together, as when a node dies
//! and its clients all come to this one; a start arriving at a full line is
//! refused 503 `busy` with `Retry-After`.

use crate::helpers::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Opens a session for `user` and returns its `ready` payload.
async fn ready_of(addr: std::net::SocketAddr, user: TestUser) -> Value {
    let (_ws, ready, _) = realtime::opened(addr, &user, None).await;
    ready
}

#[tokio::test]
async fn starts_past_the_limit_wait_their_turn_and_one_at_a_full_line_is_told_when_to_retry() {
    // Arrange: one start at a time and one in line; the token check, a
    // start's first read, stalls behind a lock on users.
    let app = spawn_app_with(|c| {
        c.ws.session_starts = 1;
        c.ws.session_start_queue = 1;
    })
    .await;
    let (alice, bob, carol) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let blocker = pg::connect(&app.database_url).await;
    blocker
        .batch_execute("begin; lock table users in access exclusive mode")
        .await
        .unwrap();

    // Act: alice's start takes the turn and waits on the lock, bob's waits
    // for the turn, carol's finds the line full.
    let first = tokio::spawn(ready_of(app.addr, alice.clone()));
    pg::until_a_statement_waits_for_a_lock(&app.database_url, 400).await;
    let second = tokio::spawn(ready_of(app.addr, bob.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.hub.session_starts_waiting() < 1 {
        assert!(Instant::now() < deadline, "bob's start never got in line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = app
        .http
        .get(app.url(&format!("/ws?token={}", carol.token)))
        .send()
        .await
        .unwrap();

    // Assert: carol is refused with a time to wait; once the lock goes,
    // alice and bob both start, nobody else refused.
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "busy", "{body}");
    blocker.batch_execute("rollback").await.unwrap();
    let within = Duration::from_secs(10);
    let ready = tokio::time::timeout(within, first).await.unwrap().unwrap();
    assert_eq!(ready["user_id"], alice.id, "{ready}");
    let ready = tokio::time::timeout(within, second).await.unwrap().unwrap();
    assert_eq!(ready["user_id"], bob.id, "{ready}");
    assert_eq!(app.hub.session_starts_waiting(), 0);
}
