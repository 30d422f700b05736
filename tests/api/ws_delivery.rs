//! REST → WebSocket delivery (issue 3): every REST write produces its event on
//! each connection of each user allowed to see it, and nothing more after
//! access ends; account changes close sockets.

use crate::helpers::ws::Closed;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Long enough for a frame that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(600);

/// An open connection for `user`, past its `ready` frame.
async fn connected(app: &TestApp, user: &TestUser) -> WsClient {
    let mut ws = app.connect_ws(user, None).await;
    ws.next_of_type("ready").await;
    ws
}

/// The next durable event (skipping ephemeral frames such as presence).
async fn next_event(ws: &mut WsClient) -> Value {
    loop {
        let f = ws.next_json().await;
        if f["payload"]["event_id"].is_i64() {
            return f;
        }
    }
}

/// The types of the next `n` durable events.
async fn next_event_types(ws: &mut WsClient, n: usize) -> Vec<String> {
    let mut kinds = Vec::new();
    for _ in 0..n {
        let f = next_event(ws).await;
        kinds.push(f["type"].as_str().unwrap().to_string());
    }
    kinds
}

#[tokio::test]
async fn rest_message_send_reaches_every_member_connection() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut a = connected(&app, &alice).await;
    let mut b = connected(&app, &bob).await;

    // Act
    let (status, sent) = app
        .post(
            "/api/v1/messages",
            &alice.token,
            json!({"chat_id": chat, "content": "hi", "client_id": "rest-1"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");

    // Assert
    for ws in [&mut a, &mut b] {
        let frame = next_event(ws).await;
        assert_eq!(frame["type"], "message", "{frame}");
        let p = &frame["payload"];
        assert_eq!(p["message_id"], sent["id"]);
        assert_eq!(p["chat_id"], chat);
        assert_eq!(p["content"], "hi");
        assert_eq!(p["sender_id"], alice.id);
        assert_eq!(p["username"], alice.username.as_str());
        assert_eq!(p["client_id"], "rest-1");
        assert_eq!(p["created_at"], sent["created_at"]);
        assert!(p["timestamp"].is_string());
    }
}

#[tokio::test]
async fn rest_message_edit_delivers_message_updated() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let msg = app.send_message(&alice, chat, "draft").await;
    let mut b = connected(&app, &bob).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/messages/{}", msg["id"]),
            &alice.token,
            json!({"content": "final"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let frame = next_event(&mut b).await;
    assert_eq!(frame["type"], "message_updated", "{frame}");
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
    assert_eq!(frame["payload"]["chat_id"], chat);
    assert_eq!(frame["payload"]["content"], "final");
    assert_eq!(frame["payload"]["is_edited"], true);
}

#[tokio::test]
async fn rest_message_delete_delivers_message_deleted() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let msg = app.send_message(&bob, chat, "oops").await;
    let mut b = connected(&app, &bob).await;

    let (status, body) = app
        .delete(&format!("/api/v1/messages/{}", msg["id"]), &bob.token)
        .await;
    assert_eq!(status, 204, "{body}");

    let frame = next_event(&mut b).await;
    assert_eq!(frame["type"], "message_deleted", "{frame}");
    assert_eq!(frame["payload"]["chat_id"], chat);
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
    assert!(frame["payload"]["event_id"].is_i64());
}

#[tokio::test]
async fn creating_a_chat_delivers_chat_created_and_subscribes_the_members_at_once() {
    // Arrange: bob is connected before the chat exists.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut b = connected(&app, &bob).await;
    let mut a = connected(&app, &alice).await;

    // Act
    let chat = app.create_group(&alice, "new room", &[&bob]).await;

    // Assert: both get the full chat, members included.
    for ws in [&mut a, &mut b] {
        let frame = next_event(ws).await;
        assert_eq!(frame["type"], "chat_created", "{frame}");
        let p = &frame["payload"];
        assert_eq!(p["id"], chat);
        assert_eq!(p["name"], "new room");
        assert_eq!(p["is_group"], true);
        let mut members: Vec<i64> = p["members"]
            .as_array()
            .expect("members listed")
            .iter()
            .map(|m| m["user_id"].as_i64().unwrap())
            .collect();
        members.sort_unstable();
        assert_eq!(members, vec![alice.id, bob.id]);
    }
    // Bob is subscribed without reconnecting.
    let msg = app.send_message(&alice, chat, "welcome").await;
    let frame = next_event(&mut b).await;
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
}

#[tokio::test]
async fn creating_a_dm_delivers_chat_created_to_both() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut b = connected(&app, &bob).await;

    let dm = app.create_dm(&alice, &bob).await;

    let frame = next_event(&mut b).await;
    assert_eq!(frame["type"], "chat_created", "{frame}");
    assert_eq!(frame["payload"]["id"], dm);
    assert_eq!(frame["payload"]["is_group"], false);
    let msg = app.send_message(&alice, dm, "psst").await;
    let frame = next_event(&mut b).await;
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
}

#[tokio::test]
async fn adding_a_member_tells_them_chat_created_and_the_chat_member_added_and_a_note() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut b = connected(&app, &bob).await;
    let mut c = connected(&app, &carol).await;

    // Act
    app.add_members(&alice, chat, &[carol.id]).await;

    // Assert: carol learns of the chat; bob learns of carol.
    let created = next_event(&mut c).await;
    assert_eq!(created["type"], "chat_created", "{created}");
    assert_eq!(created["payload"]["id"], chat);
    let added = next_event(&mut b).await;
    assert_eq!(added["type"], "member_added", "{added}");
    assert_eq!(added["payload"]["chat_id"], chat);
    assert_eq!(added["payload"]["members"][0]["user_id"], carol.id);
    let note = next_event(&mut b).await;
    assert_eq!(note["type"], "system", "{note}");
    assert_eq!(note["payload"]["chat_id"], chat);
    let text = note["payload"]["message"].as_str().unwrap();
    assert!(
        text.contains(&alice.username) && text.contains(&carol.username),
        "{text}"
    );
    // Carol is subscribed on the same connection.
    let msg = app.send_message(&bob, chat, "hi carol").await;
    let frame = c.next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], msg["id"]);
    // Bob, already a member, gets no chat_created for it.
    b.expect_no("chat_created", Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn renaming_a_chat_delivers_chat_updated_and_a_system_note() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "old", &[&bob]).await;
    let mut b = connected(&app, &bob).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}"),
            &alice.token,
            json!({"name": "new"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let updated = next_event(&mut b).await;
    assert_eq!(updated["type"], "chat_updated", "{updated}");
    assert_eq!(updated["payload"]["id"], chat);
    assert_eq!(updated["payload"]["name"], "new");
    let note = next_event(&mut b).await;
    assert_eq!(note["type"], "system", "{note}");
    assert!(
        note["payload"]["message"].as_str().unwrap().contains("new"),
        "{note}"
    );
}

#[tokio::test]
async fn promoting_a_member_delivers_chat_updated_and_a_system_note() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut b = connected(&app, &bob).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &alice.token,
            json!({"is_admin": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        next_event_types(&mut b, 2).await,
        ["chat_updated", "system"]
    );
}

#[tokio::test]
async fn removed_member_gets_member_removed_then_nothing_more_from_that_chat() {
    // Arrange: bob is in two chats with alice.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let other = app.create_group(&alice, "other", &[&bob]).await;
    let mut b = connected(&app, &bob).await;
    let mut a = connected(&app, &alice).await;

    // Act
    let (status, body) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // Assert: bob and the chat hear of it.
    let removed = next_event(&mut b).await;
    assert_eq!(removed["type"], "member_removed", "{removed}");
    assert_eq!(removed["payload"]["chat_id"], chat);
    assert_eq!(removed["payload"]["user_id"], bob.id);
    assert_eq!(
        next_event_types(&mut a, 2).await,
        ["member_removed", "system"]
    );
    // Nothing more from that chat reaches bob: his next event is from the other chat.
    app.send_message(&alice, chat, "after removal").await;
    app.send_message(&carol, chat, "after removal too").await;
    let later = app.send_message(&alice, other, "still here").await;
    loop {
        let frame = next_event(&mut b).await;
        assert_ne!(frame["payload"]["chat_id"], chat, "leaked: {frame}");
        if frame["payload"]["message_id"] == later["id"] {
            break;
        }
    }
    // And he can no longer resume it on this connection.
    b.send_json(json!({"type": "join_chat", "payload": {"chat_id": chat}}))
        .await;
    let reply = b.next_of_type("error").await;
    assert_eq!(reply["payload"]["code"], "not_found");
}

#[tokio::test]
async fn a_member_leaving_gets_member_removed_and_the_chat_a_note() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut a = connected(&app, &alice).await;
    let mut b = connected(&app, &bob).await;

    let (status, body) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &bob.token,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    assert_eq!(next_event(&mut b).await["type"], "member_removed");
    assert_eq!(
        next_event_types(&mut a, 2).await,
        ["member_removed", "system"]
    );
    app.send_message(&alice, chat, "bye").await;
    b.expect_no("message", QUIET).await;
}

#[tokio::test]
async fn deleting_a_chat_delivers_chat_deleted_to_every_member_connection_even_paused_ones() {
    // Arrange: bob paused the chat on one connection.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "doomed", &[&bob]).await;
    let mut a = connected(&app, &alice).await;
    let mut b = connected(&app, &bob).await;
    let mut b_paused = connected(&app, &bob).await;
    b_paused
        .send_json(json!({"type": "leave_chat", "payload": {"chat_id": chat}}))
        .await;
    assert_eq!(b_paused.next_of_type("ack").await["type"], "ack");

    // Act
    let (status, body) = app
        .delete(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    assert_eq!(status, 204, "{body}");

    // Assert
    for ws in [&mut a, &mut b, &mut b_paused] {
        let frame = next_event(ws).await;
        assert_eq!(frame["type"], "chat_deleted", "{frame}");
        assert_eq!(frame["payload"]["chat_id"], chat);
    }
    // The connections are no longer subscribed to it.
    for ws in [&mut a, &mut b, &mut b_paused] {
        ws.send_json(json!({"type": "join_chat", "payload": {"chat_id": chat}}))
            .await;
        let reply = ws.next_of_type("error").await;
        assert_eq!(reply["payload"]["code"], "not_found", "{reply}");
    }
    let health = app.ws_health().await;
    assert_eq!(health["active_rooms"], 0, "{health}");
}

#[tokio::test]
async fn rest_read_marker_tells_the_chat_members() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let msg = app.send_message(&alice, chat, "read me").await;
    let mut a = connected(&app, &alice).await;

    let (status, body) = app
        .post(
            &format!("/api/v1/chats/{chat}/read"),
            &bob.token,
            json!({"message_id": msg["id"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_read_message_id"], msg["id"]);

    let read = a.next_of_type("read").await;
    assert_eq!(
        read["payload"],
        json!({"chat_id": chat, "user_id": bob.id, "message_id": msg["id"]})
    );
}

#[tokio::test]
async fn a_user_with_two_connections_gets_every_event_on_both() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut phone = connected(&app, &bob).await;
    let mut laptop = connected(&app, &bob).await;

    // Act: one of each kind of chat write.
    let msg = app.send_message(&alice, chat, "one").await;
    let id = msg["id"].as_i64().unwrap();
    app.put(
        &format!("/api/v1/messages/{id}"),
        &alice.token,
        json!({"content": "uno"}),
    )
    .await;
    app.delete(&format!("/api/v1/messages/{id}"), &alice.token)
        .await;
    app.put(
        &format!("/api/v1/chats/{chat}"),
        &alice.token,
        json!({"name": "renamed"}),
    )
    .await;
    app.post(
        &format!("/api/v1/chats/{chat}/members"),
        &alice.token,
        json!({"member_ids": [carol.id]}),
    )
    .await;
    let new_chat = app.create_group(&alice, "second", &[&bob]).await;
    app.delete(&format!("/api/v1/chats/{new_chat}"), &alice.token)
        .await;

    // Assert: both connections see the same events in the same order.
    let expected = [
        "message",
        "message_updated",
        "message_deleted",
        "chat_updated",
        "system",
        "member_added",
        "system",
        "chat_created",
        "chat_deleted",
    ];
    let mut seen = Vec::new();
    for ws in [&mut phone, &mut laptop] {
        let mut frames = Vec::new();
        for _ in 0..expected.len() {
            frames.push(next_event(ws).await);
        }
        let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, expected);
        seen.push(frames);
    }
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn deleting_an_account_closes_its_connections_with_4003() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let mut a = connected(&app, &alice).await;
    let mut b1 = connected(&app, &bob).await;
    let mut b2 = connected(&app, &bob).await;

    // Act
    let (status, body) = app.delete_account(&bob).await;
    assert_eq!(status, 204, "{body}");

    // Assert
    assert_eq!(b1.closed().await, Closed::Code(4003));
    assert_eq!(b2.closed().await, Closed::Code(4003));
    let removed = next_event(&mut a).await;
    assert_eq!(removed["type"], "member_removed", "{removed}");
    assert_eq!(removed["payload"]["user_id"], bob.id);
    assert_eq!(removed["payload"]["chat_id"], chat);
    // Alice stays connected.
    a.send_json(json!({"type": "ping"})).await;
    a.next_of_type("pong").await;
}

#[tokio::test]
async fn a_password_change_closes_connections_holding_older_tokens_with_4001() {
    // Arrange
    let app = spawn_app().await;
    let bob = app.register("bob").await;
    let mut old = connected(&app, &bob).await;

    // Act
    app.change_password(&bob, "another good password").await;

    // Assert
    assert_eq!(old.closed().await, Closed::Code(4001));
    // A connection with a fresh token stays open.
    let (status, login) = app.login(&bob.username, "another good password").await;
    assert_eq!(status, 200, "{login}");
    let fresh = TestUser {
        token: login["token"].as_str().unwrap().to_string(),
        ..bob.clone()
    };
    let mut new = connected(&app, &fresh).await;
    new.send_json(json!({"type": "ping"})).await;
    new.next_of_type("pong").await;
}

#[tokio::test]
async fn a_display_name_change_does_not_close_connections() {
    let app = spawn_app().await;
    let bob = app.register("bob").await;
    let mut ws = connected(&app, &bob).await;

    let (status, body) = app
        .put(
            &format!("/api/v1/users/{}", bob.id),
            &bob.token,
            json!({"display_name": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    ws.send_json(json!({"type": "ping"})).await;
    ws.next_of_type("pong").await;
}

#[tokio::test]
async fn a_token_that_expires_closes_its_connection_with_4001() {
    // Arrange: tokens live at least 60 s by configuration, so mint a short one
    // with the server's own key, exactly as login does.
    let app = spawn_app().await;
    let bob = app.register("bob").await;
    let short = chatapp::auth::issue_token(app.auth.key(), bob.id, &bob.username, 0, 2)
        .expect("token issued");
    let short_lived = TestUser {
        token: short.token,
        ..bob.clone()
    };
    let mut expiring = connected(&app, &short_lived).await;
    let mut lasting = connected(&app, &bob).await;

    // Act + Assert: it closes once the token expires (within the wait).
    assert_eq!(expiring.closed().await, Closed::Code(4001));
    // The long-lived token's connection is untouched.
    lasting.send_json(json!({"type": "ping"})).await;
    lasting.next_of_type("pong").await;
}

#[tokio::test]
async fn chat_updated_carries_no_members_read_position() {
    // Arrange: bob has read carol's three messages; alice has not.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let mut last = Value::Null;
    for i in 0..3 {
        last = app.send_message(&carol, chat, &format!("m{i}")).await["id"].clone();
    }
    app.post(
        &format!("/api/v1/chats/{chat}/read"),
        &bob.token,
        json!({"message_id": last}),
    )
    .await;
    let mut b = connected(&app, &bob).await;

    // Act
    app.put(
        &format!("/api/v1/chats/{chat}"),
        &alice.token,
        json!({"name": "renamed"}),
    )
    .await;

    // Assert: no one's unread count or read marker rides along.
    let updated = b.next_of_type("chat_updated").await;
    assert_eq!(updated["payload"]["name"], "renamed");
    let payload = updated["payload"].as_object().unwrap();
    assert!(!payload.contains_key("unread_count"), "{updated}");
    assert!(!payload.contains_key("last_read_message_id"), "{updated}");
}

#[tokio::test]
async fn the_member_promoted_when_the_last_admin_leaves_is_announced_in_chat_updated() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let mut c = connected(&app, &carol).await;

    // Act: alice, the only admin, leaves.
    app.delete(
        &format!("/api/v1/chats/{chat}/members/{}", alice.id),
        &alice.token,
    )
    .await;

    // Assert: the chat's new admin shows in its members.
    let updated = c.next_of_type("chat_updated").await;
    let admins: Vec<i64> = updated["payload"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["is_admin"] == true)
        .map(|m| m["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(admins, [bob.id], "{updated}");
}
