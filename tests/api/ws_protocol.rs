//! The WebSocket protocol (issue 3): connecting, the ready frame, and every
//! client frame type with its reply, validation and limits.

use crate::helpers::realtime::connected;
use crate::helpers::ws::Closed;
use crate::helpers::*;
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Long enough for a frame that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(600);

/// A plain HTTP GET of `/ws` with WebSocket upgrade headers, as a browser would send it.
async fn upgrade_request(app: &TestApp, query: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = app
        .http
        .get(app.url(&format!("/ws{query}")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}"));
    (status, body)
}

/// The error payload of an `error` frame.
fn error_payload(frame: &Value) -> &Value {
    assert_eq!(frame["type"], "error", "expected an error frame: {frame}");
    &frame["payload"]
}

/// Sends a frame and returns the reply to it, skipping event broadcasts.
async fn reply_to(ws: &mut WsClient, frame: Value) -> Value {
    reply_and_events(ws, frame).await.0
}

/// Sends a frame; returns the reply and the broadcasts that arrived before it.
async fn reply_and_events(ws: &mut WsClient, frame: Value) -> (Value, Vec<Value>) {
    ws.send_json(frame).await;
    let mut skipped = Vec::new();
    loop {
        let f = ws.next_json().await;
        if matches!(f["type"].as_str(), Some("ack" | "error" | "pong")) {
            return (f, skipped);
        }
        skipped.push(f);
    }
}

/// A group of `owner` and `others`, and an open connection (past `ready`) for each.
async fn group_with_sockets(
    app: &TestApp,
    owner: &TestUser,
    others: &[&TestUser],
) -> (i64, Vec<WsClient>) {
    let chat = app.create_group(owner, "room", others).await;
    let mut sockets = Vec::new();
    for user in std::iter::once(owner).chain(others.iter().copied()) {
        let mut ws = app.connect_ws(user, None).await;
        ws.next_of_type("ready").await;
        sockets.push(ws);
    }
    (chat, sockets)
}

#[tokio::test]
async fn connecting_with_query_token_sends_ready_with_user_chats_and_head() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let g1 = app.create_group(&alice, "one", &[&bob]).await;
    let g2 = app.create_dm(&alice, &bob).await;
    let _not_mine = app.create_group(&bob, "bob only", &[]).await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    let head: i64 = db
        .query_one("select last_id from event_seq", &[])
        .await
        .unwrap()
        .get(0);

    // Act
    let mut ws = app.connect_ws(&alice, None).await;
    let ready = ws.next_json().await;

    // Assert: ready is the very first frame.
    assert_eq!(ready["type"], "ready", "{ready}");
    let p = &ready["payload"];
    assert_eq!(p["user_id"], alice.id);
    assert_eq!(p["last_event_id"], head);
    let mut chats: Vec<i64> = p["chat_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    chats.sort_unstable();
    let mut expected = vec![g1, g2];
    expected.sort_unstable();
    assert_eq!(chats, expected);
    assert_eq!(
        p["recovered"], false,
        "no since means nothing was recovered"
    );
}

#[tokio::test]
async fn connecting_with_authorization_bearer_header_works() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );

    // Act
    let (stream, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade with a bearer header");
    let mut ws = WsClient::from_stream(stream);

    // Assert
    let ready = ws.next_of_type("ready").await;
    assert_eq!(ready["payload"]["user_id"], alice.id);
    assert_eq!(ready["payload"]["chat_ids"], json!([chat]));
}

#[tokio::test]
async fn bad_or_missing_token_is_a_401_json_error_before_the_upgrade() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut tampered = alice.token.clone();
    tampered.pop();
    tampered.push(if alice.token.ends_with('A') { 'B' } else { 'A' });
    let cases: Vec<(&str, String, Option<String>)> = vec![
        ("no token at all", String::new(), None),
        ("empty query token", "?token=".into(), None),
        ("garbage query token", "?token=garbage".into(), None),
        ("tampered query token", format!("?token={tampered}"), None),
        (
            "garbage bearer header",
            String::new(),
            Some("Bearer garbage".into()),
        ),
        (
            "non-bearer scheme",
            String::new(),
            Some(format!("Basic {}", alice.token)),
        ),
    ];
    for (case, query, auth) in cases {
        let (status, body) = upgrade_request(&app, &query, auth.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        assert_eq!(body["code"], "unauthorized", "{case}: {body}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }

    // The WebSocket client sees the refusal as a failed handshake with status 401.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=garbage", app.addr))
        .await
        .expect_err("handshake must fail");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn revoked_token_is_refused_before_the_upgrade() {
    // Arrange: a password change revokes the old token.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.change_password(&alice, "a brand new password").await;

    // Act
    let (status, body) = upgrade_request(&app, &format!("?token={}", alice.token), None).await;

    // Assert
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "unauthorized");
}

#[tokio::test]
async fn invalid_since_is_a_400_before_the_upgrade() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for since in ["abc", "-1", "1.5"] {
        let (status, body) =
            upgrade_request(&app, &format!("?token={}&since={since}", alice.token), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "since={since}: {body}");
        assert_eq!(body["code"], "validation_failed", "since={since}: {body}");
    }
}

#[tokio::test]
async fn message_frame_is_stored_acked_with_ref_and_broadcast_in_seed_shape() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;

    // Act
    let (ack, early) = reply_and_events(
        &mut ws[0],
        json!({"type": "message", "ref": "r-1",
               "payload": {"chat_id": chat, "content": "  hello over ws  ", "client_id": "c-1"}}),
    )
    .await;

    // Assert: the ack names the stored message and its event, echoing ref.
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "r-1", "{ack}");
    let message_id = ack["payload"]["message_id"].as_i64().expect("message_id");
    let event_id = ack["payload"]["event_id"].as_i64().expect("event_id");

    // Bob gets the message frame with the seed's fields plus the new ones.
    let frame = ws[1].next_of_type("message").await;
    let p = &frame["payload"];
    assert_eq!(p["message_id"], message_id);
    assert_eq!(p["event_id"], event_id);
    assert_eq!(
        p["content"], "hello over ws",
        "content is trimmed like REST"
    );
    assert_eq!(p["sender_id"], alice.id);
    assert_eq!(p["username"], alice.username.as_str());
    assert_eq!(p["chat_id"], chat);
    assert_eq!(p["client_id"], "c-1");
    assert!(p["timestamp"].is_string(), "{frame}");
    assert!(p["created_at"].is_string(), "{frame}");

    // The sender's own connection gets the same event (before or after the ack).
    let own = match early.into_iter().find(|f| f["type"] == "message") {
        Some(f) => f,
        None => ws[0].next_of_type("message").await,
    };
    assert_eq!(own["payload"]["event_id"], event_id);

    // It was stored exactly like POST /messages.
    let (status, stored) = app
        .get(&format!("/api/v1/messages/{message_id}"), &bob.token)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["content"], "hello over ws");
    assert_eq!(stored["client_id"], "c-1");
    assert_eq!(stored["chat_id"], chat);
}

#[tokio::test]
async fn a_message_sent_over_the_socket_produces_the_same_event_as_one_sent_over_rest() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;

    // Act
    app.post(
        "/api/v1/messages",
        &alice.token,
        json!({"chat_id": chat, "content": "same", "client_id": "via-rest"}),
    )
    .await;
    ws[0]
        .send_json(json!({"type": "message", "payload": {"chat_id": chat, "content": "same", "client_id": "via-ws"}}))
        .await;

    // Assert: identical frames but for ids and times.
    let mut rest = ws[1].next_of_type("message").await;
    let mut sock = ws[1].next_of_type("message").await;
    for f in [&mut rest, &mut sock] {
        let p = f["payload"].as_object_mut().unwrap();
        for volatile in [
            "message_id",
            "event_id",
            "client_id",
            "timestamp",
            "created_at",
            "updated_at",
        ] {
            assert!(p.remove(volatile).is_some(), "{volatile} missing");
        }
    }
    assert_eq!(rest, sock);
}

#[tokio::test]
async fn message_frame_obeys_rest_validation_and_permissions() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[]).await;
    let bobs_chat = app.create_group(&bob, "private", &[]).await;
    let long = "x".repeat(4001);
    let long_id = "i".repeat(65);
    let cases = [
        (
            "empty content",
            json!({"chat_id": chat, "content": ""}),
            "validation_failed",
        ),
        (
            "blank content",
            json!({"chat_id": chat, "content": "   "}),
            "validation_failed",
        ),
        (
            "too long content",
            json!({"chat_id": chat, "content": long}),
            "validation_failed",
        ),
        (
            "missing chat_id",
            json!({"content": "hi"}),
            "validation_failed",
        ),
        (
            "zero chat_id",
            json!({"chat_id": 0, "content": "hi"}),
            "validation_failed",
        ),
        (
            "client_id over 64 chars",
            json!({"chat_id": chat, "content": "hi", "client_id": long_id}),
            "validation_failed",
        ),
        (
            "non-member chat",
            json!({"chat_id": bobs_chat, "content": "hi"}),
            "not_found",
        ),
        (
            "nonexistent chat",
            json!({"chat_id": 999_999, "content": "hi"}),
            "not_found",
        ),
        (
            "chat_id of wrong type",
            json!({"chat_id": "one", "content": "hi"}),
            "invalid_payload",
        ),
    ];

    for (i, (case, payload, code)) in cases.into_iter().enumerate() {
        // Act
        let reference = format!("bad-{i}");
        let reply = reply_to(
            &mut ws[0],
            json!({"type": "message", "payload": payload, "ref": reference}),
        )
        .await;

        // Assert
        let p = error_payload(&reply);
        assert_eq!(p["code"], code, "{case}: {reply}");
        assert_eq!(
            p["ref"],
            reference.as_str(),
            "{case}: ref is echoed: {reply}"
        );
        assert!(p["error"].is_string(), "{case}: {reply}");
    }

    // Nothing was stored in either chat.
    for (chat, user) in [(chat, &alice), (bobs_chat, &bob)] {
        let (status, history) = app
            .get(&format!("/api/v1/messages/chat/{chat}"), &user.token)
            .await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(history, json!([]));
    }
}

#[tokio::test]
async fn pipelined_message_frames_are_committed_together_and_answered_in_the_order_sent() {
    // Arrange: 20 message frames written at once, the 8th refused (empty).
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "pipelined", &[&bob]).await;
    let (mut ws, _) = realtime::connected(&app, &alice, None).await;
    let refused = 7;
    let content = |i: usize| {
        if i == refused {
            String::new()
        } else {
            format!("m{i}")
        }
    };

    // Act: no frame waits for the ack of the one before it.
    for i in 0..20 {
        let frame = json!({"type": "message", "payload": {"chat_id": chat, "content": content(i)}, "ref": i});
        ws.stream
            .feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    let mut replies = Vec::new();
    while replies.len() < 20 {
        let frame = ws.next_json().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            replies.push(frame);
        }
    }

    // Assert: one reply per frame, in frame order, the refusal in its place.
    // An ack carries `ref` beside its payload, an error frame inside it.
    let ref_of = |r: &Value| r["ref"].as_i64().or(r["payload"]["ref"].as_i64());
    let refs: Vec<Option<i64>> = replies.iter().map(ref_of).collect();
    assert_eq!(refs, (0..20).map(Some).collect::<Vec<_>>());
    assert_eq!(replies[refused]["type"], "error");
    assert_eq!(replies[refused]["payload"]["code"], "validation_failed");
    let acked: Vec<i64> = replies
        .iter()
        .filter(|r| r["type"] == "ack")
        .map(|r| r["payload"]["message_id"].as_i64().unwrap())
        .collect();
    assert!(acked.is_sorted(), "acked ids out of order: {acked:?}");
    // Stored in the order sent, and in fewer transactions than messages: the
    // reader queued sends while earlier ones were being committed.
    let db = crate::helpers::pg::connect(&app.database_url).await;
    let rows = db
        .query(
            "select content, xmin::text from messages where chat_id = $1 order by id",
            &[&chat],
        )
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let sent: Vec<String> = (0..20).filter(|&i| i != refused).map(content).collect();
    assert_eq!(stored, sent);
    let transactions: std::collections::HashSet<String> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        transactions.len() < sent.len(),
        "each send was committed alone: the reader waited for every commit"
    );
}

#[tokio::test]
async fn reader_stops_reading_at_32_unanswered_frames_until_the_oldest_is_answered() {
    // Arrange: two chats; every send held at its commit by a lock on
    // `messages` taken from outside. A typing frame has no reply and is
    // forwarded as soon as it is read, so the other member sees when the
    // sender's frames are being read.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = app.create_group(&alice, "first", &[&bob]).await;
    let second = app.create_group(&alice, "second", &[&bob]).await;
    let (mut sender, _) = realtime::connected(&app, &alice, None).await;
    let (mut watcher, _) = realtime::connected(&app, &bob, None).await;
    let mut db = crate::helpers::pg::connect(&app.database_url).await;
    let lock = db.transaction().await.unwrap();
    lock.batch_execute("lock table messages in share mode")
        .await
        .unwrap();
    let message = |i: usize| json!({"type": "message", "payload": {"chat_id": first, "content": format!("m{i}")}, "ref": i});
    let typing = |chat: i64| json!({"type": "typing", "payload": {"chat_id": chat}});

    // Act: 31 sends waiting for their commit, then a typing frame.
    for i in 0..31 {
        sender.send_json(message(i)).await;
    }
    sender.send_json(typing(first)).await;

    // Assert: still read.
    let seen = watcher.next_of_type("typing").await;
    assert_eq!(seen["payload"]["chat_id"], first);

    // Act: a 32nd send fills the pipeline; a typing frame follows it.
    sender.send_json(message(31)).await;
    sender.send_json(typing(second)).await;

    // Assert: not read while the oldest send is unanswered...
    watcher.expect_no("typing", QUIET).await;

    // ...and read once the commits go through, every send answered in order.
    lock.rollback().await.unwrap();
    let mut refs = Vec::new();
    while refs.len() < 32 {
        let ack = sender.next_of_type("ack").await;
        refs.push(ack["ref"].as_i64().unwrap());
    }
    assert_eq!(refs, (0..32).collect::<Vec<_>>());
    let seen = watcher.next_of_type("typing").await;
    assert_eq!(seen["payload"]["chat_id"], second);
}

#[tokio::test]
async fn message_frame_retry_with_same_client_id_returns_the_same_message_once() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;
    let frame = json!({"type": "message", "payload": {"chat_id": chat, "content": "once", "client_id": "retry-1"}});

    // Act
    let first = reply_to(&mut ws[0], frame.clone()).await;
    let second = reply_to(&mut ws[0], frame).await;
    let (status, rest) = app
        .post(
            "/api/v1/messages",
            &alice.token,
            json!({"chat_id": chat, "content": "once", "client_id": "retry-1"}),
        )
        .await;

    // Assert: one message, reported three times.
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(second["type"], "ack", "{second}");
    let id = &first["payload"]["message_id"];
    assert_eq!(&second["payload"]["message_id"], id);
    assert_eq!(second["payload"]["duplicate"], true, "{second}");
    assert_eq!(
        status, 200,
        "a REST retry of a WS send is a duplicate: {rest}"
    );
    assert_eq!(&rest["id"], id);
    // Bob heard of it once: the next message he sees is a later one.
    let later = app.send_message(&alice, chat, "later").await;
    let frame = ws[1].next_of_type("message").await;
    assert_eq!(&frame["payload"]["message_id"], id);
    let frame = ws[1].next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], later["id"]);
}

#[tokio::test]
async fn leave_chat_pauses_and_join_chat_resumes_delivery_on_that_connection_only() {
    // Arrange: alice has two connections; bob writes.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut paused = app.connect_ws(&alice, None).await;
    paused.next_of_type("ready").await;
    let mut other = app.connect_ws(&alice, None).await;
    other.next_of_type("ready").await;

    // Act: pause on one connection, then a message arrives.
    let ack = reply_to(
        &mut paused,
        json!({"type": "leave_chat", "payload": {"chat_id": chat}, "ref": 7}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], 7);
    let missed = app.send_message(&bob, chat, "while paused").await;

    // Assert: the other connection still gets it.
    let frame = other.next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], missed["id"]);

    // Act: resume, then another message.
    let ack = reply_to(
        &mut paused,
        json!({"type": "join_chat", "payload": {"chat_id": chat}}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = app.send_message(&bob, chat, "after resume").await;

    // Assert: the paused connection skipped the first and gets the second.
    let frame = paused.next_of_type("message").await;
    assert_eq!(
        frame["payload"]["message_id"], live["id"],
        "a paused connection must not get the chat's events"
    );
    // Pausing did not unsubscribe the user: the other connection got both.
    let frame = other.next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], live["id"]);
}

#[tokio::test]
async fn join_or_leave_chat_of_a_chat_you_are_not_in_is_not_found() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (_, mut ws) = group_with_sockets(&app, &alice, &[]).await;
    let bobs_chat = app.create_group(&bob, "private", &[]).await;
    for kind in ["join_chat", "leave_chat"] {
        for chat in [bobs_chat, 999_999] {
            let reply = reply_to(
                &mut ws[0],
                json!({"type": kind, "payload": {"chat_id": chat}, "ref": "j"}),
            )
            .await;
            let p = error_payload(&reply);
            assert_eq!(p["code"], "not_found", "{kind} {chat}: {reply}");
            assert_eq!(p["ref"], "j", "{reply}");
        }
    }
    // join_chat must not have subscribed alice to bob's chat.
    app.send_message(&bob, bobs_chat, "secret").await;
    ws[0].expect_no("message", QUIET).await;
}

#[tokio::test]
async fn typing_reaches_other_members_but_not_the_typer() {
    // Arrange: alice has a second connection; carol is in no shared chat.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;
    let _carols = app.create_group(&carol, "c", &[]).await;
    let mut alice2 = app.connect_ws(&alice, None).await;
    alice2.next_of_type("ready").await;
    let mut carol_ws = app.connect_ws(&carol, None).await;
    carol_ws.next_of_type("ready").await;

    // Act
    ws[0]
        .send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
        .await;

    // Assert
    let frame = ws[1].next_of_type("typing").await;
    assert_eq!(
        frame["payload"],
        json!({"chat_id": chat, "user_id": alice.id, "username": alice.username})
    );
    // The typer's connections (and non-members) get no typing frame.
    alice2.expect_no("typing", QUIET).await;
    ws[0].expect_no("typing", Duration::from_millis(50)).await;
    carol_ws
        .expect_no("typing", Duration::from_millis(50))
        .await;
}

#[tokio::test]
async fn typing_is_forwarded_at_most_once_per_two_seconds_per_user_per_chat() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;
    let chat2 = app.create_group(&alice, "second", &[&bob]).await;
    let mut bob2 = app.connect_ws(&bob, None).await;
    bob2.next_of_type("ready").await;

    // Act: five typing frames in quick succession.
    for _ in 0..5 {
        ws[0]
            .send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
            .await;
    }

    // Assert: exactly one reaches bob within the window.
    let first = bob2.next_of_type("typing").await;
    assert_eq!(first["payload"]["chat_id"], chat);
    bob2.expect_no("typing", Duration::from_millis(1000)).await;

    // The limit is per chat and per user: other pairs are forwarded at once.
    ws[0]
        .send_json(json!({"type": "typing", "payload": {"chat_id": chat2}}))
        .await;
    let second = bob2.next_of_type("typing").await;
    assert_eq!(second["payload"]["chat_id"], chat2);
    ws[1]
        .send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
        .await;
    let from_bob = ws[0].next_of_type("typing").await;
    assert_eq!(from_bob["payload"]["user_id"], bob.id);
}

#[tokio::test]
async fn typing_is_forwarded_again_once_the_interval_has_passed() {
    let app = spawn_app_with(|c| c.ws.typing_interval_ms = 300).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;
    let typing = json!({"type": "typing", "payload": {"chat_id": chat}});

    ws[0].send_json(typing.clone()).await;
    ws[1].next_of_type("typing").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    ws[0].send_json(typing).await;

    let again = ws[1].next_of_type("typing").await;
    assert_eq!(again["payload"]["user_id"], alice.id);
}

#[tokio::test]
async fn typing_in_a_chat_you_are_not_in_is_not_found() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (_, mut ws) = group_with_sockets(&app, &alice, &[]).await;
    let bobs_chat = app.create_group(&bob, "private", &[]).await;
    let mut bob_ws = app.connect_ws(&bob, None).await;
    bob_ws.next_of_type("ready").await;

    let reply = reply_to(
        &mut ws[0],
        json!({"type": "typing", "payload": {"chat_id": bobs_chat}, "ref": "t"}),
    )
    .await;

    assert_eq!(error_payload(&reply)["code"], "not_found", "{reply}");
    assert_eq!(error_payload(&reply)["ref"], "t");
    bob_ws.expect_no("typing", QUIET).await;
}

#[tokio::test]
async fn read_frame_moves_the_marker_forward_only_and_tells_the_members() {
    // Arrange: bob sent two messages alice has not read.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[&bob]).await;
    let m1 = app.send_message(&bob, chat, "one").await["id"]
        .as_i64()
        .unwrap();
    let m2 = app.send_message(&bob, chat, "two").await["id"]
        .as_i64()
        .unwrap();

    // Act: read up to m2.
    let ack = reply_to(
        &mut ws[0],
        json!({"type": "read", "payload": {"chat_id": chat, "message_id": m2}, "ref": "r"}),
    )
    .await;

    // Assert
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "r");
    assert_eq!(ack["payload"]["last_read_message_id"], m2);
    assert_eq!(ack["payload"]["unread_count"], 0);
    let read = ws[1].next_of_type("read").await;
    assert_eq!(
        read["payload"],
        json!({"chat_id": chat, "user_id": alice.id, "message_id": m2})
    );

    // Act: an older read does not move the marker back, and tells nobody.
    let ack = reply_to(
        &mut ws[0],
        json!({"type": "read", "payload": {"chat_id": chat, "message_id": m1}}),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["payload"]["last_read_message_id"], m2);
    ws[1].expect_no("read", QUIET).await;
    let (status, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["last_read_message_id"], m2);
    assert_eq!(detail["unread_count"], 0);
}

#[tokio::test]
async fn read_frame_for_unknown_message_or_foreign_chat_is_not_found() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (chat, mut ws) = group_with_sockets(&app, &alice, &[]).await;
    let bobs_chat = app.create_group(&bob, "private", &[]).await;
    let bobs_msg = app.send_message(&bob, bobs_chat, "secret").await["id"]
        .as_i64()
        .unwrap();
    let cases = [
        ("unknown message", chat, 999_999),
        ("message of another chat", chat, bobs_msg),
        ("chat you are not in", bobs_chat, bobs_msg),
    ];
    for (case, chat_id, message_id) in cases {
        let reply = reply_to(
            &mut ws[0],
            json!({"type": "read", "payload": {"chat_id": chat_id, "message_id": message_id}}),
        )
        .await;
        assert_eq!(
            error_payload(&reply)["code"],
            "not_found",
            "{case}: {reply}"
        );
    }
}

#[tokio::test]
async fn ping_gets_pong_with_ref() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;

    let pong = reply_to(&mut ws, json!({"type": "ping", "ref": "p-9"})).await;

    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["ref"], "p-9");
}

#[tokio::test]
async fn a_websocket_ping_is_answered_with_a_pong_of_the_same_bytes_in_order_with_frames() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;
    ws.next_of_type("presence_snapshot").await;
    let payloads: [&[u8]; 3] = [b"", b"hello", &[0, 0xff, 0x80, b'x']];

    // Act: pings (one payload not UTF-8) around a JSON ping.
    for payload in payloads {
        ws.stream
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .unwrap();
    }
    ws.send_json(json!({"type": "ping", "ref": "after"})).await;

    // Assert: a pong per ping, each with its ping's bytes, before the reply
    // to the frame sent after them.
    let mut pongs = Vec::new();
    let reply = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(5), ws.stream.next()).await {
            Ok(Some(Ok(Message::Pong(bytes)))) => pongs.push(bytes.to_vec()),
            Ok(Some(Ok(Message::Text(text)))) => break crate::helpers::ws::server_frame(&text),
            other => panic!("expected pongs then a reply, got {other:?}"),
        }
    };
    assert_eq!(pongs, payloads.map(<[u8]>::to_vec));
    assert_eq!(reply["ref"], "after", "{reply}");
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read_after_ready() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    // Arrange: the upgrade request and a first frame in one write, so the
    // server reads the frame's bytes while reading the request.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        alice.token, app.addr
    );
    let payload = json!({"type": "ping", "ref": "early"}).to_string();
    let mask = [7u8, 1, 2, 9];
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();

    // Act
    tcp.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the handshake's answer");
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let rest = head.split_off(end);
    let mut ws = crate::helpers::ws::WsClient::from_stream(
        tokio_tungstenite::WebSocketStream::from_partially_read(
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            rest,
            Role::Client,
            None,
        )
        .await,
    );

    // Assert: `ready` first, then the answer to the frame sent early.
    assert_eq!(ws.next_json().await["type"], "ready");
    assert_eq!(ws.next_of_type("pong").await["ref"], "early");
}

#[tokio::test]
async fn a_client_that_closes_gets_a_close_frame_back() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;

    // Act
    ws.stream.close(None).await.unwrap();

    // Assert: the server answers the closing handshake, then the stream ends.
    assert_eq!(ws.closed().await, Closed::Code(1000));
}

#[tokio::test]
async fn invalid_frames_get_an_error_frame_and_the_connection_stays_open() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (mut ws, _) = connected(&app, &alice, None).await;
    let cases = [
        ("not json", "not json", "invalid_json"),
        ("truncated json", r#"{"type": "ping""#, "invalid_json"),
        ("json array", "[1, 2]", "invalid_frame"),
        (
            "unknown type",
            r#"{"type": "dance", "payload": {}}"#,
            "unknown_type",
        ),
        ("missing type", r#"{"payload": {}}"#, "unknown_type"),
        (
            "payload of the wrong shape",
            r#"{"type": "typing", "payload": {"chat_id": "x"}}"#,
            "invalid_payload",
        ),
    ];

    for (case, text, code) in cases {
        // Act
        ws.send_text(text).await;

        // Assert
        let reply = ws.next_json().await;
        assert_eq!(error_payload(&reply)["code"], code, "{case}: {reply}");
    }
    // An unknown type keeps the client's ref.
    ws.send_text(r#"{"type": "dance", "ref": "u1"}"#).await;
    let reply = ws.next_json().await;
    assert_eq!(error_payload(&reply)["ref"], "u1", "{reply}");
    // Binary frames are refused the same way.
    ws.stream
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    let reply = ws.next_json().await;
    assert_eq!(error_payload(&reply)["code"], "invalid_frame", "{reply}");

    // The connection is still usable.
    let pong = reply_to(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_client_flooding_garbage_is_closed_with_1008() {
    // Arrange
    let app = spawn_app_with(|c| c.ws.max_bad_frames = 3).await;
    let alice = app.register("alice").await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;

    // Act
    send_garbage(&mut ws, 10).await;

    // Assert
    assert_eq!(ws.closed().await, Closed::Code(1008));
}

/// Sends `n` frames that are not JSON, or fewer if the server closes first.
async fn send_garbage(ws: &mut WsClient, n: usize) {
    for _ in 0..n {
        if ws
            .stream
            .send(Message::Text("garbage".into()))
            .await
            .is_err()
        {
            break;
        }
    }
}

#[tokio::test]
async fn well_formed_refusals_do_not_count_as_garbage() {
    // Arrange: refusals of valid frames (not_found) are ordinary replies.
    let app = spawn_app_with(|c| c.ws.max_bad_frames = 3).await;
    let alice = app.register("alice").await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;

    // Act
    for _ in 0..10 {
        let reply = reply_to(
            &mut ws,
            json!({"type": "leave_chat", "payload": {"chat_id": 999_999}}),
        )
        .await;
        assert_eq!(error_payload(&reply)["code"], "not_found");
    }

    // Assert
    let pong = reply_to(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_the_connection_with_1009() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    let mut ws = app.connect_ws(&alice, None).await;
    ws.next_of_type("ready").await;

    // A frame just under the limit is read (and refused on its content).
    let near =
        json!({"type": "message", "payload": {"chat_id": chat, "content": "x".repeat(60 * 1024)}});
    let reply = reply_to(&mut ws, near).await;
    assert_eq!(
        error_payload(&reply)["code"],
        "validation_failed",
        "{reply}"
    );

    // Act
    let over =
        json!({"type": "message", "payload": {"chat_id": chat, "content": "x".repeat(64 * 1024)}});
    let _ = ws.stream.send(Message::Text(over.to_string().into())).await;

    // Assert
    assert_eq!(ws.closed().await, Closed::Code(1009));
}

/// What ends a connection, in [`a_connection_keeps_its_limits_after_its_first_message`].
#[derive(Clone, Copy, Debug)]
enum Ending {
    Garbage,
    Expiry,
    PasswordChange,
    Idle,
}

#[tokio::test]
async fn a_connection_keeps_its_limits_after_its_first_message() {
    // A client's first message moves its reader to the readers' thread
    // (`ws::conn`); every limit the reader enforces must hold there too.
    for ending in [
        Ending::Garbage,
        Ending::Expiry,
        Ending::PasswordChange,
        Ending::Idle,
    ] {
        // Arrange
        let app = spawn_app_with(|c| {
            c.ws.max_bad_frames = 3;
            if matches!(ending, Ending::Idle) {
                c.ws.ping_interval_ms = 200;
                c.ws.idle_timeout_ms = 1000;
            }
        })
        .await;
        let alice = app.register("alice").await;
        let chat = app.create_group(&alice, "g", &[]).await;
        let user = match ending {
            Ending::Expiry => TestUser {
                token: chatapp::auth::issue_token(app.auth.key(), alice.id, &alice.username, 0, 3)
                    .expect("token issued")
                    .token,
                ..alice.clone()
            },
            _ => alice.clone(),
        };
        let mut ws = app.connect_ws(&user, None).await;
        ws.next_of_type("ready").await;
        let send = json!({"type": "message", "payload": {"chat_id": chat, "content": "hi"}});
        let ack = reply_to(&mut ws, send).await;
        assert_eq!(ack["type"], "ack", "{ending:?}: {ack}");

        // Act
        match ending {
            Ending::Garbage => send_garbage(&mut ws, 10).await,
            Ending::PasswordChange => app.change_password(&alice, "another good password").await,
            // The token runs out, or the client stops reading (and so
            // answering pings) past the idle timeout.
            Ending::Expiry | Ending::Idle => {}
        }
        if matches!(ending, Ending::Idle) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while app.ws_health().await["connections"] != 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the silent client was not dropped"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // Assert
        let closed = ws.closed().await;
        match ending {
            Ending::Garbage => assert_eq!(closed, Closed::Code(1008)),
            Ending::Expiry | Ending::PasswordChange => {
                assert_eq!(closed, Closed::Code(4001), "{ending:?}")
            }
            // A close frame, or a reset when the client finally answers
            // the pings on a socket the server has closed.
            Ending::Idle => assert!(
                matches!(closed, Closed::Code(4000) | Closed::Dropped),
                "{closed:?}"
            ),
        }
    }
}

#[tokio::test]
async fn an_authorized_request_that_is_not_a_websocket_upgrade_is_400_upgrade_required() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let full = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    // Each case drops or spoils one header of an otherwise valid upgrade.
    let cases: [(&str, Option<&str>); 5] = [
        ("connection", None),
        ("connection", Some("keep-alive")),
        ("upgrade", Some("h2c")),
        ("sec-websocket-version", Some("8")),
        ("sec-websocket-key", None),
    ];
    for (spoiled, value) in cases {
        let mut req = app.http.get(app.url(&format!("/ws?token={}", alice.token)));
        for (name, good) in full {
            match (name == spoiled, value) {
                (false, _) => req = req.header(name, good),
                (true, Some(bad)) => req = req.header(name, bad),
                (true, None) => {}
            }
        }

        // Act
        let resp = req.send().await.expect("request sent");

        // Assert
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON error body");
        assert_error(status, &body, 400, "upgrade_required");
        assert!(
            body["error"].as_str().is_some(),
            "{spoiled}={value:?}: {body}"
        );
    }
}
