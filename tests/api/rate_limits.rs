//! Rate limits: per client address for registering and logging in, a
//! backoff per account after failed logins, per user for sends (REST and
//! WebSocket alike), chat creation, member adds, typing, read markers and
//! other frames. Over a limit: 429 `rate_limited` with `Retry-After`, or an
//! `error` frame with the frame's `ref` — never a disconnect.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use chatapp::config::{Config, Rate};
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A limit of `burst` and then one a minute: the next one is refused.
const fn burst(n: u32) -> Rate {
    Rate {
        per_minute: 1,
        burst: n,
    }
}

fn limited(edit: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.limits.rate.enabled = true;
        edit(c);
    }
}

/// POSTs `body` with an optional token and `X-Forwarded-For`; the status,
/// `Retry-After` (seconds) and body.
async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    forwarded_for: Option<&str>,
    body: Value,
) -> (u16, Option<u64>, Value) {
    let mut req = app.http.post(app.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

/// The statuses of `n` sends of `body` over REST with `token`, one after another.
async fn sends(app: &TestApp, token: &str, body: &Value, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(
            post(app, "/api/v1/messages", Some(token), None, body.clone())
                .await
                .0,
        );
    }
    statuses
}

fn register_body() -> Value {
    json!({"username": unique_name("rl"), "password": PASSWORD})
}

#[tokio::test]
async fn registrations_past_the_per_address_limit_get_429_with_retry_after() {
    // Arrange
    let app = spawn_app_with(limited(|c| c.limits.rate.register_per_ip = burst(3))).await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(&app, "/api/v1/auth/register", None, None, register_body()).await);
    }

    // Assert
    let codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
    assert_eq!(codes, [201, 201, 201, 429]);
    let (_, retry, body) = &statuses[3];
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_limit() {
    let app = spawn_app_with(limited(|c| {
        c.limits.rate.register_per_ip = burst(1);
        c.limits.trust_forwarded_for = true;
    }))
    .await;
    let via = |ip| {
        post(
            &app,
            "/api/v1/auth/register",
            None,
            Some(ip),
            register_body(),
        )
    };

    assert_eq!(via("10.0.0.1, 192.0.2.1").await.0, 201);
    assert_eq!(via("10.0.0.2, 192.0.2.2").await.0, 201);
    assert_eq!(
        via("10.0.0.9, 192.0.2.1").await.0,
        429,
        "the last entry counts"
    );
}

#[tokio::test]
async fn logins_past_the_per_address_limit_get_429() {
    let app = spawn_app_with(limited(|c| c.limits.rate.login_per_ip = burst(2))).await;
    let alice = app.register("alice").await;
    let body = json!({"username": alice.username, "password": PASSWORD});

    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(
            post(&app, "/api/v1/auth/login", None, None, body.clone())
                .await
                .0,
        );
    }

    assert_eq!(codes, [200, 200, 429]);
}

#[tokio::test]
async fn failed_logins_make_the_account_wait_even_with_the_right_password() {
    // Arrange: two failures are free, then each try waits.
    let app = spawn_app_with(limited(|c| c.limits.rate.failed_logins_before_backoff = 2)).await;
    let alice = app.register("alice").await;
    let wrong = json!({"username": alice.username, "password": "guess guess guess"});
    let right = json!({"username": alice.username.to_uppercase(), "password": PASSWORD});
    for _ in 0..3 {
        let (status, _, _) = post(&app, "/api/v1/auth/login", None, None, wrong.clone()).await;
        assert_eq!(status, 401);
    }

    // Act
    let (status, retry, body) = post(&app, "/api/v1/auth/login", None, None, right.clone()).await;

    // Assert: refused without a password check until the backoff passes.
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert_eq!(retry, Some(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = post(&app, "/api/v1/auth/login", None, None, right).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rest_sends_and_chat_creation_are_limited_per_user() {
    // Arrange
    let app = spawn_app_with(limited(|c| {
        c.limits.rate.messages = burst(3);
        c.limits.rate.chats_created = burst(2);
    }))
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let body = json!({"chat_id": chat, "content": "hi"});

    // Act
    let alices = sends(&app, &alice.token, &body, 4).await;
    let bobs = post(&app, "/api/v1/messages", Some(&bob.token), None, body)
        .await
        .0;
    let mut chats = Vec::new();
    for name in ["g2", "g3"] {
        let body = json!({"name": name, "is_group": true});
        chats.push(post(&app, "/api/v1/chats", Some(&alice.token), None, body).await);
    }

    // Assert
    assert_eq!(alices, [201, 201, 201, 429]);
    assert_eq!(bobs, 201, "another user's limit is their own");
    let codes: Vec<u16> = chats.iter().map(|c| c.0).collect();
    assert_eq!(codes, [201, 429], "the first chat was one of two");
    assert_eq!(chats[1].2["code"], "rate_limited");
}

#[tokio::test]
async fn sends_with_a_revoked_token_do_not_use_up_the_new_tokens_sends() {
    // Arrange: a token stolen before a password change is refused by the
    // send itself, after the limit is counted; it has a limit of its own.
    let app = spawn_app_with(limited(|c| c.limits.rate.messages = burst(2))).await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let new_password = "a brand new password";
    app.change_password(&alice, new_password).await;
    let (_, login) = app.login(&alice.username, new_password).await;
    let fresh = login["token"].as_str().unwrap().to_string();
    let body = json!({"chat_id": chat, "content": "hi"});

    // Act
    let stolen = sends(&app, &alice.token, &body, 3).await;
    let own = sends(&app, &fresh, &body, 3).await;

    // Assert
    assert_eq!(stolen, [401, 401, 429]);
    assert_eq!(own, [201, 201, 429], "the account's own limit, untouched");
}

#[tokio::test]
async fn websocket_frames_over_a_limit_get_rate_limited_errors_and_stay_connected() {
    // Arrange: three sends allowed, and a single bad frame would close the socket.
    let app = spawn_app_with(limited(|c| {
        c.limits.rate.messages = burst(3);
        c.limits.rate.frames = burst(2);
        c.ws.max_bad_frames = 1;
    }))
    .await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let (mut ws, _) = connected(&app, &alice, None).await;

    // Act: five pipelined sends, then three pings.
    for i in 0..5 {
        let frame = json!({"type": "message", "payload": {"chat_id": chat, "content": format!("m{i}")}, "ref": i});
        ws.stream
            .feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    let mut replies = Vec::new();
    while replies.len() < 5 {
        let frame = ws.next_json().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            replies.push(frame);
        }
    }
    for i in 0..3 {
        ws.send_json(json!({"type": "ping", "ref": format!("p{i}")}))
            .await;
    }
    let mut pings = Vec::new();
    while pings.len() < 3 {
        let frame = ws.next_json().await;
        if frame["type"] == "pong" || frame["type"] == "error" {
            pings.push(frame);
        }
    }

    // Assert: each refusal names its frame and when to retry; the socket lives.
    let kinds: Vec<&str> = replies
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ack", "ack", "ack", "error", "error"]);
    for refused in &replies[3..] {
        assert_eq!(refused["payload"]["code"], "rate_limited", "{refused}");
        assert!(
            refused["payload"]["retry_after_ms"].as_u64().is_some(),
            "{refused}"
        );
        assert!(refused["payload"]["ref"].is_i64(), "{refused}");
    }
    let kinds: Vec<&str> = pings.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pong", "pong", "error"]);
    assert_eq!(pings[2]["payload"]["ref"], "p2");
    let stored = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await
        .1;
    assert_eq!(stored.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn typing_over_its_limit_is_dropped_without_a_reply() {
    // Arrange
    let app = spawn_app_with(limited(|c| {
        c.limits.rate.typing = burst(1);
        c.ws.typing_interval_ms = 0;
    }))
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut b, _) = connected(&app, &bob, None).await;

    // Act
    for _ in 0..3 {
        a.send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
            .await;
    }

    // Assert: bob hears one, alice gets no error.
    assert_eq!(
        b.next_of_type("typing").await["payload"]["user_id"],
        alice.id
    );
    b.expect_no("typing", Duration::from_millis(500)).await;
    a.expect_no("error", Duration::from_millis(200)).await;
}

#[tokio::test]
async fn logins_past_the_bcrypt_queue_are_refused_as_busy_not_queued() {
    // Arrange: two password checks waiting or running at most.
    let app = spawn_app_with(|c| {
        c.auth.bcrypt_cost = 10;
        c.limits.bcrypt_queue = 2;
    })
    .await;
    let alice = app.register("alice").await;
    let body = json!({"username": alice.username, "password": PASSWORD});

    // Act: eight at once.
    let logins = futures_util::future::join_all(
        (0..8).map(|_| post(&app, "/api/v1/auth/login", None, None, body.clone())),
    )
    .await;

    // Assert: each either logged in or was told to come back; no 500, no wait in line.
    let ok = logins.iter().filter(|l| l.0 == 200).count();
    let busy: Vec<&(u16, Option<u64>, Value)> = logins.iter().filter(|l| l.0 == 503).collect();
    assert_eq!(ok + busy.len(), 8, "{logins:?}");
    assert!(ok >= 2 && !busy.is_empty(), "{ok} ok, {} busy", busy.len());
    for (_, retry, body) in busy {
        assert_eq!(body["code"], "busy");
        assert_eq!(*retry, Some(1));
    }
}
