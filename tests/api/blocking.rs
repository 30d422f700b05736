//! Consent: a user may block another. The blocked user cannot put their
//! blocker into a new DM or a group, neither is shown the other's presence,
//! and the blocker does not hear the blocked user typing. Chats they share
//! keep working.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(600);

async fn block(app: &TestApp, who: &TestUser, whom: i64) -> u16 {
    app.put(
        &format!("/api/v1/users/{whom}/block"),
        &who.token,
        json!({}),
    )
    .await
    .0
    .as_u16()
}

/// The next presence frame about `user_id` (others' are skipped).
async fn presence_of(ws: &mut WsClient, user_id: i64) -> Value {
    loop {
        let frame = ws.next_of_type("presence").await;
        if frame["payload"]["user_id"] == user_id {
            return frame;
        }
    }
}

/// Asserts that within `wait` no presence or typing frame about `user_id` arrives.
async fn hears_nothing_of(ws: &mut WsClient, user_id: i64, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(frame) = ws
        .next_json_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        let ephemeral = frame["type"] == "presence" || frame["type"] == "typing";
        assert!(
            !(ephemeral && frame["payload"]["user_id"] == user_id),
            "heard {frame}"
        );
    }
}

fn ids(users: &Value) -> Vec<i64> {
    users
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {users}"))
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn blocking_and_unblocking_are_idempotent_and_listed() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;

    // Act / Assert
    assert_eq!(block(&app, &alice, bob.id).await, 204);
    assert_eq!(block(&app, &alice, bob.id).await, 204, "twice is once");
    assert_eq!(block(&app, &alice, carol.id).await, 204);
    let (_, listed) = app.get("/api/v1/users/blocked", &alice.token).await;
    assert_eq!(ids(&listed), [carol.id, bob.id], "most recent first");
    let (status, _) = app
        .delete(&format!("/api/v1/users/{}/block", bob.id), &alice.token)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .delete(&format!("/api/v1/users/{}/block", bob.id), &alice.token)
        .await;
    assert_eq!(status, 204, "unblocking someone not blocked is fine");
    let (_, listed) = app.get("/api/v1/users/blocked", &alice.token).await;
    assert_eq!(ids(&listed), [carol.id]);
    let (_, bobs) = app.get("/api/v1/users/blocked", &bob.token).await;
    assert_eq!(ids(&bobs), Vec::<i64>::new(), "a list of one's own blocks");

    let (status, body) = app
        .put(
            &format!("/api/v1/users/{}/block", alice.id),
            &alice.token,
            json!({}),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
    let (status, body) = app
        .put("/api/v1/users/999999/block", &alice.token, json!({}))
        .await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn a_blocked_user_cannot_put_their_blocker_into_a_new_dm_or_a_group() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    block(&app, &alice, bob.id).await;
    let bobs_group = app.create_group(&bob, "bob's", &[&carol]).await;

    // Act
    let (dm, dm_body) = app
        .post(
            "/api/v1/chats",
            &bob.token,
            json!({"is_group": false, "member_ids": [alice.id]}),
        )
        .await;
    let (group, group_body) = app
        .post(
            "/api/v1/chats",
            &bob.token,
            json!({"name": "g", "is_group": true, "member_ids": [carol.id, alice.id]}),
        )
        .await;
    let (add, add_body) = app
        .post(
            &format!("/api/v1/chats/{bobs_group}/members"),
            &bob.token,
            json!({"member_ids": [alice.id]}),
        )
        .await;

    // Assert: refused; the other way round is up to alice.
    assert_error(dm, &dm_body, 403, "blocked");
    assert_error(group, &group_body, 403, "blocked");
    assert_error(add, &add_body, 403, "blocked");
    let (status, _) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({"is_group": false, "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, 201, "the blocker may still start a DM");
}

#[tokio::test]
async fn a_blocker_hears_neither_typing_nor_presence_of_the_blocked_and_is_hidden_from_them() {
    // Arrange: all three share a group; alice blocked bob while connected.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut c, _) = connected(&app, &carol, None).await;
    assert_eq!(block(&app, &alice, bob.id).await, 204);

    // Act: bob comes online and types.
    let (mut b, _) = connected(&app, &bob, None).await;
    b.send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
        .await;

    // Assert: carol hears both (in whichever order); alice neither.
    let (mut online, mut typing) = (false, false);
    while !(online && typing) {
        let frame = c.next_json().await;
        let about_bob = frame["payload"]["user_id"] == bob.id;
        online |= about_bob && frame["type"] == "presence" && frame["payload"]["online"] == true;
        typing |= about_bob && frame["type"] == "typing";
    }
    hears_nothing_of(&mut a, bob.id, QUIET).await;

    // Act: alice reconnects (goes offline and online again).
    drop(a);
    let (_a, _) = connected(&app, &alice, None).await;

    // Assert: carol sees alice come and go; bob sees nothing of her.
    presence_of(&mut c, alice.id).await;
    hears_nothing_of(&mut b, alice.id, QUIET).await;

    // The group keeps working both ways.
    app.send_message(&bob, chat, "still here").await;
    assert_eq!(
        c.next_of_type("message").await["payload"]["content"],
        "still here"
    );
}

#[tokio::test]
async fn unblocking_lets_typing_through_again() {
    let app = spawn_app_with(|c| c.ws.typing_interval_ms = 0).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    block(&app, &alice, bob.id).await;
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut b, _) = connected(&app, &bob, None).await;
    let typing = json!({"type": "typing", "payload": {"chat_id": chat}});
    b.send_json(typing.clone()).await;
    hears_nothing_of(&mut a, bob.id, QUIET).await;

    app.delete(&format!("/api/v1/users/{}/block", bob.id), &alice.token)
        .await;
    // The unblock reaches the node through the listener; retry until it has.
    let mut heard = false;
    for _ in 0..20 {
        b.send_json(typing.clone()).await;
        if let Some(frame) = a.next_json_within(Duration::from_millis(250)).await
            && frame["type"] == "typing"
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "typing still hidden after the unblock");
}

/// Whether alice hears bob typing (before his next message) after a change
/// to her blocks written without a notification, as if it was announced
/// while the node's listener was away, and the listener's return; alice
/// blocked bob first when `blocked_before`.
async fn hears_typing_after_a_missed_block_change(blocked_before: bool, change: &str) -> bool {
    // Arrange: alice and bob share a group, both connected.
    let app = spawn_app_with(|c| c.ws.typing_interval_ms = 0).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    if blocked_before {
        assert_eq!(block(&app, &alice, bob.id).await, 204);
    }
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut b, _) = connected(&app, &bob, None).await;

    // Act: the change, the listener gone and back, then bob types and
    // says something.
    let db = pg::connect(&app.database_url).await;
    db.execute(change, &[&alice.id, &bob.id]).await.unwrap();
    assert_eq!(pg::kill_listeners(&app.database_url).await, 1);
    pg::await_listener_back(&app.database_url).await;
    b.send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
        .await;
    // On the same socket: its reader announces the typing before it reads
    // the send, so the message marks the end of what alice could hear. A
    // REST send could commit first and end the wait before the typing.
    let end =
        json!({"type": "message", "payload": {"chat_id": chat, "content": "after the change"}});
    b.send_json(end).await;

    // Every frame alice gets up to bob's message.
    let mut heard = false;
    loop {
        let frame = a.next_json().await;
        heard |= frame["type"] == "typing" && frame["payload"]["user_id"] == bob.id;
        if frame["type"] == "message" {
            assert_eq!(frame["payload"]["content"], "after the change");
            return heard;
        }
    }
}

#[tokio::test]
async fn a_block_made_while_the_listener_was_away_hides_typing_once_it_is_back() {
    let change = "insert into blocks (blocker_id, blocked_id) values ($1, $2)";
    assert!(!hears_typing_after_a_missed_block_change(false, change).await);
}

#[tokio::test]
async fn an_unblock_made_while_the_listener_was_away_lets_typing_through_once_it_is_back() {
    let change = "delete from blocks where blocker_id = $1 and blocked_id = $2";
    assert!(hears_typing_after_a_missed_block_change(true, change).await);
}
