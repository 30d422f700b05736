//! Every request has a bounded cost: deep offsets, slow statements, large
//! groups, many sockets and long unread counts all stop at a configured
//! cap with a clear error, and a group of the largest allowed size works
//! for every member.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use serde_json::{Value, json};

/// `n` users written straight to the database; their ids.
async fn insert_users(app: &TestApp, n: i64) -> Vec<i64> {
    let db = pg::connect(&app.database_url).await;
    let prefix = unique_name("mass");
    db.query(
        "insert into users (username, password_hash)
         select $1 || '_' || g, 'x' from generate_series(1, $2::bigint) g returning id",
        &[&prefix, &n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn an_offset_past_the_cap_is_a_400_naming_it() {
    let app = spawn_app_with(|c| c.limits.max_offset = 100).await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    for path in [
        "/api/v1/users?offset=101".to_string(),
        "/api/v1/chats?offset=101".to_string(),
        format!("/api/v1/messages/chat/{chat}?offset=101"),
        format!("/api/v1/chats/{chat}/members?offset=101"),
    ] {
        let (status, body) = app.get(&path, &alice.token).await;
        assert_error(status, &body, 400, "validation_failed");
        assert_eq!(body["fields"][0]["field"], "offset", "{path}: {body}");
    }
    let (status, _) = app.get("/api/v1/users?offset=100", &alice.token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_statement_past_the_time_limit_is_a_503_not_a_500() {
    // Arrange: the chats table locked from outside, so listing them waits.
    let app = spawn_app_with(|c| c.database.statement_timeout_ms = 300).await;
    let alice = app.register("alice").await;
    let mut holder = pg::connect(&app.database_url).await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("lock table chats in access exclusive mode")
        .await
        .unwrap();

    // Act
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.get("/api/v1/chats", &alice.token),
    )
    .await;

    // Assert
    let (status, body) = answer.expect("an answer, not a request held by the lock");
    assert_error(status, &body, 503, "query_timeout");
    tx.rollback().await.unwrap();
    let (status, _) = app.get("/api/v1/chats", &alice.token).await;
    assert_eq!(status, 200, "the pool's connections are still good");
}

#[tokio::test]
async fn a_group_stops_at_its_member_cap_and_a_request_at_its_id_cap() {
    // Arrange
    let app = spawn_app_with(|c| {
        c.limits.group_members = 3;
        c.limits.ids_per_request = 4;
    })
    .await;
    let alice = app.register("alice").await;
    let others = insert_users(&app, 5).await;

    // Act / Assert: creating past the cap, adding past it, naming too many ids.
    let (status, body) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({"name": "g", "is_group": true, "member_ids": &others[..3]}),
        )
        .await;
    assert_error(status, &body, 409, "chat_full");
    let chat = app.create_group(&alice, "g", &[]).await;
    let members = format!("/api/v1/chats/{chat}/members");
    let add = |ids: &[i64]| app.post(&members, &alice.token, json!({ "member_ids": ids }));
    let (status, _) = add(&others[..2]).await;
    assert_eq!(status, 200);
    let (status, body) = add(&others[2..3]).await;
    assert_error(status, &body, 409, "chat_full");
    let (status, body) = add(&others[..5]).await;
    assert_error(status, &body, 400, "validation_failed");
    let (_, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    assert_eq!(
        detail["member_count"], 3,
        "the refused add left nothing behind"
    );
}

#[tokio::test]
async fn the_socket_past_the_per_user_cap_is_refused_with_429() {
    // Arrange
    let app = spawn_app_with(|c| c.limits.sockets_per_user = 2).await;
    let alice = app.register("alice").await;
    let (_first, _) = connected(&app, &alice, None).await;
    let (_second, _) = connected(&app, &alice, None).await;

    // Act: the third one, as a plain upgrade request.
    let response = app
        .http
        .get(app.url(&format!("/ws?token={}", alice.token)))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();

    // Assert
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(status, &body, 429, "too_many_sockets");
}

#[tokio::test]
async fn unread_counts_stop_at_a_thousand() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let db = pg::connect(&app.database_url).await;
    db.execute(
        "insert into messages (chat_id, sender_id, content)
         select $1, $2, 'm' || g from generate_series(1, 1500) g",
        &[&chat, &bob.id],
    )
    .await
    .unwrap();

    let (_, chats) = app.get("/api/v1/chats", &alice.token).await;

    assert_eq!(chats[0]["unread_count"], 1000, "{}", chats[0]);
}

#[tokio::test]
async fn a_read_marker_answers_the_unread_count_capped_as_chats_show_it() {
    // Arrange: 1,200 messages from bob that alice has not read.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let db = pg::connect(&app.database_url).await;
    let ids: Vec<i64> = db
        .query(
            "insert into messages (chat_id, sender_id, content)
             select $1, $2, 'm' || g from generate_series(1, 1202) g returning id",
            &[&chat, &bob.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut ws, _) = connected(&app, &alice, None).await;

    // Act: over REST, then with a `read` frame, each leaves 1,200+ unread.
    let (status, rest) = app
        .post(
            &format!("/api/v1/chats/{chat}/read"),
            &alice.token,
            json!({ "message_id": ids[0] }),
        )
        .await;
    ws.send_json(
        json!({"type": "read", "ref": "r", "payload": {"chat_id": chat, "message_id": ids[1]}}),
    )
    .await;
    let ack = ws.next_of_type("ack").await;

    // Assert: both answer what the chat itself says, 1,000.
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["unread_count"], 1000, "{rest}");
    assert_eq!(ack["payload"]["last_read_message_id"], ids[1], "{ack}");
    assert_eq!(ack["payload"]["unread_count"], 1000, "{ack}");
    let (_, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    assert_eq!(detail["unread_count"], 1000, "{detail}");
}

#[tokio::test]
async fn a_chat_lists_its_first_hundred_members_and_pages_the_rest() {
    // Arrange: a group of 1 + 250.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let others = insert_users(&app, 250).await;
    let (status, chat) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({"name": "big", "is_group": true, "member_ids": others}),
        )
        .await;
    assert_eq!(status, 201);
    let chat = chat["id"].as_i64().unwrap();

    // Act
    let (_, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    let mut paged = Vec::new();
    for offset in (0..300).step_by(100) {
        let (status, page) = app
            .get(
                &format!("/api/v1/chats/{chat}/members?limit=100&offset={offset}"),
                &alice.token,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        paged.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|m| m["user_id"].clone()),
        );
    }
    let outsider = app.register("outsider").await;
    let (status, body) = app
        .get(&format!("/api/v1/chats/{chat}/members"), &outsider.token)
        .await;

    // Assert
    assert_eq!(detail["member_count"], 251);
    assert_eq!(detail["members"].as_array().unwrap().len(), 100);
    assert_eq!(detail["members"][0]["user_id"], alice.id, "by join time");
    assert_eq!(paged.len(), 251);
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn a_group_of_the_largest_size_is_filled_and_renamed_without_disconnecting_anyone() {
    // Arrange: 1,200 members, whose full list is ~140 KiB; three of them
    // connected, on queues of 256 KiB (the default is 4 MiB). The frames of
    // one add (a dozen, ~12 KiB each) can be dispatched in one go, before
    // the writer takes any: a queue smaller than that burst closes the
    // connection as slow or not depending on scheduling alone.
    let app = spawn_app_with(|c| c.ws.queue_bytes = 256 * 1024).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "crowd", &[&bob, &carol]).await;
    let (mut sockets, mut readies) = (Vec::new(), Vec::new());
    for user in [&alice, &bob, &carol] {
        let (ws, ready) = connected(&app, user, None).await;
        sockets.push(ws);
        readies.push(ready);
    }
    let others = insert_users(&app, 1_197).await;

    // Act: filled in two adds (the id cap), then renamed.
    for ids in others.chunks(1000) {
        app.add_members(&alice, chat, ids).await;
    }
    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &alice.token,
            json!({"name": "still here"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Assert: everyone connected gets the rename and stays connected, and
    // no frame on the way carries the whole member list.
    for ws in &mut sockets {
        let renamed = loop {
            let frame = ws.next_json().await;
            let bytes = frame.to_string().len();
            assert!(
                bytes < 32 * 1024,
                "a {} frame of {bytes} bytes",
                frame["type"]
            );
            if frame["type"] == "chat_updated" {
                break frame;
            }
        };
        assert_eq!(renamed["payload"]["name"], "still here");
        assert_eq!(renamed["payload"]["member_count"], 1_200);
    }
    app.send_message(&alice, chat, "everyone?").await;
    for ws in &mut sockets {
        let message = ws.next_of_type("message").await;
        assert_eq!(message["payload"]["content"], "everyone?");
    }
    for ws in &mut sockets {
        ws.send_json(json!({"type": "ping"})).await;
        assert_eq!(ws.next_of_type("pong").await["type"], "pong");
    }
}
