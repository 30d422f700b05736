//! Pins: a chat's pinned messages. Admins pin in groups, either member in
//! a direct message; at most 50 per chat; each change is a durable event
//! to the chat's members, on every node, and goes with its message.

use crate::helpers::realtime::{connected, replayed_frames};
use crate::helpers::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn path(chat: i64, message: i64) -> String {
    format!("/api/v1/chats/{chat}/pins/{message}")
}

async fn pin(app: &TestApp, user: &TestUser, chat: i64, message: i64) -> (StatusCode, Value) {
    app.request(Method::PUT, &path(chat, message), Some(&user.token), None)
        .await
}

async fn unpin(app: &TestApp, user: &TestUser, chat: i64, message: i64) -> (StatusCode, Value) {
    app.delete(&path(chat, message), &user.token).await
}

async fn pinned(app: &TestApp, user: &TestUser, chat: i64) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/chats/{chat}/pins"), &user.token)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn ids(pins: &Value) -> Vec<i64> {
    pins.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

async fn send(app: &TestApp, user: &TestUser, chat: i64, content: &str) -> i64 {
    app.send_message(user, chat, content).await["id"]
        .as_i64()
        .unwrap()
}

/// Alice (admin) and Bob in a group.
async fn a_group(app: &TestApp) -> (TestUser, TestUser, i64) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    (alice, bob, chat)
}

#[tokio::test]
async fn pinned_messages_are_listed_most_recently_pinned_first_with_who_and_when() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let first = send(&app, &bob, chat, "the agenda").await;
    let second = send(&app, &bob, chat, "the minutes").await;

    // Act: the later message first; pinning twice changes nothing.
    for message in [second, first, first] {
        let (status, body) = pin(&app, &alice, chat, message).await;
        assert_eq!(status, 204, "{body}");
    }

    // Assert
    let pins = pinned(&app, &bob, chat).await;
    assert_eq!(ids(&pins), [first, second]);
    let top = &pins[0];
    assert_eq!(top["content"], "the agenda");
    assert_eq!(top["pinned_by"], alice.id);
    assert!(ts(&top["pinned_at"]) >= ts(&pins[1]["pinned_at"]), "{pins}");
    assert_eq!(
        top["reactions"],
        json!([]),
        "a message as REST shows it: {top}"
    );
}

#[tokio::test]
async fn in_a_group_only_admins_pin_and_unpin() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let message = send(&app, &bob, chat, "pin me").await;
    pin(&app, &alice, chat, message).await;

    // Act
    let (pin_status, pin_body) = pin(&app, &bob, chat, message).await;
    let (unpin_status, unpin_body) = unpin(&app, &bob, chat, message).await;

    // Assert
    assert_error(pin_status, &pin_body, 403, "not_chat_admin");
    assert_error(unpin_status, &unpin_body, 403, "not_chat_admin");
    assert_eq!(ids(&pinned(&app, &bob, chat).await), [message]);
}

#[tokio::test]
async fn in_a_direct_message_either_member_pins_and_unpins() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dm = app.create_dm(&alice, &bob).await;
    let message = send(&app, &alice, dm, "remember this").await;

    // Act & Assert
    let (status, body) = pin(&app, &bob, dm, message).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(ids(&pinned(&app, &alice, dm).await), [message]);
    let (status, body) = unpin(&app, &alice, dm, message).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(ids(&pinned(&app, &bob, dm).await), Vec::<i64>::new());
}

#[tokio::test]
async fn unpinning_what_is_not_pinned_is_204() {
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let message = send(&app, &bob, chat, "never pinned").await;

    let (status, body) = unpin(&app, &alice, chat, message).await;

    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn non_members_and_messages_of_other_chats_are_not_found() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let message = send(&app, &bob, chat, "ours").await;
    let other = app.create_group(&alice, "other", &[]).await;
    let elsewhere = send(&app, &alice, other, "theirs").await;
    let dave = app.register("dave").await;

    // Act & Assert: an outsider, for the chat and its pins.
    for (status, body) in [
        pin(&app, &dave, chat, message).await,
        unpin(&app, &dave, chat, message).await,
        app.get(&format!("/api/v1/chats/{chat}/pins"), &dave.token)
            .await,
    ] {
        assert_error(status, &body, 404, "not_found");
    }
    // A member, for a message the chat does not have.
    for (status, body) in [
        pin(&app, &alice, chat, elsewhere).await,
        unpin(&app, &alice, chat, elsewhere).await,
        pin(&app, &alice, chat, message + 1000).await,
    ] {
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(ids(&pinned(&app, &alice, other).await), Vec::<i64>::new());
}

#[tokio::test]
async fn a_chat_holds_at_most_50_pins_even_when_pinned_at_once() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let mut messages = Vec::new();
    for i in 0..55 {
        messages.push(send(&app, &bob, chat, &format!("m{i}")).await);
    }

    // Act
    let answers = join_all(messages.iter().map(|m| pin(&app, &alice, chat, *m))).await;

    // Assert
    let done = answers.iter().filter(|(s, _)| *s == 204).count();
    let refused: Vec<&(StatusCode, Value)> = answers.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!((done, refused.len()), (50, 5), "{answers:?}");
    assert_error(refused[0].0, &refused[0].1, 409, "too_many_pins");
    assert_eq!(ids(&pinned(&app, &bob, chat).await).len(), 50);
    let (status, _) = pin(&app, &alice, chat, messages[0]).await;
    assert_eq!(status, 204, "re-pinning a pinned one is still fine");
}

#[tokio::test]
async fn a_deleted_message_leaves_the_pins() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let kept = send(&app, &bob, chat, "kept").await;
    let gone = send(&app, &bob, chat, "gone").await;
    pin(&app, &alice, chat, kept).await;
    pin(&app, &alice, chat, gone).await;

    // Act
    app.delete(&format!("/api/v1/messages/{gone}"), &bob.token)
        .await;

    // Assert
    assert_eq!(ids(&pinned(&app, &alice, chat).await), [kept]);
}

#[tokio::test]
async fn members_hear_pins_and_unpins_once() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat) = a_group(&app).await;
    let message = send(&app, &alice, chat, "notice").await;
    let (mut on_bob, _) = connected(&app, &bob, None).await;

    // Act: a pin, a repeat (no change), an unpin and an unpin of nothing.
    pin(&app, &alice, chat, message).await;
    pin(&app, &alice, chat, message).await;
    unpin(&app, &alice, chat, message).await;
    unpin(&app, &alice, chat, message).await;

    // Assert
    let pinned = on_bob.next_json().await;
    assert_eq!(pinned["type"], "message_pinned", "{pinned}");
    assert_eq!(
        pinned["payload"],
        json!({"event_id": pinned["payload"]["event_id"], "chat_id": chat,
               "message_id": message, "user_id": alice.id})
    );
    let unpinned = on_bob.next_json().await;
    assert_eq!(unpinned["type"], "message_unpinned", "{unpinned}");
    assert_eq!(unpinned["payload"]["user_id"], alice.id);
    on_bob
        .expect_no("message_pinned", Duration::from_millis(400))
        .await;
}

fn kinds_about(frames: &[Value], message: i64) -> Vec<&str> {
    frames
        .iter()
        .filter(|f| f["payload"]["message_id"] == message)
        .map(|f| f["type"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn pins_are_replayed_and_not_once_their_message_is_deleted() {
    for replay_cache_bytes in [1 << 20, 0] {
        // Arrange: Bob is connected throughout, so the node holds the events
        // (and has dispatched each before he reconnects).
        let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
        let (alice, bob, chat) = a_group(&app).await;
        let kept = send(&app, &alice, chat, "kept").await;
        let gone = send(&app, &alice, chat, "gone").await;
        let (mut on_bob, ready) = connected(&app, &bob, None).await;
        let since = ready["last_event_id"].as_i64().unwrap();
        pin(&app, &alice, chat, gone).await;
        pin(&app, &alice, chat, kept).await;
        unpin(&app, &alice, chat, kept).await;
        on_bob.next_of_type("message_unpinned").await;

        // Act
        let before = replayed_frames(&app, &bob, since).await;
        app.delete(&format!("/api/v1/messages/{gone}"), &alice.token)
            .await;
        on_bob.next_of_type("message_deleted").await;
        let after = replayed_frames(&app, &bob, since).await;

        // Assert
        let pinned_and_unpinned = ["message_pinned", "message_unpinned"];
        assert_eq!(kinds_about(&before, kept), pinned_and_unpinned);
        assert_eq!(kinds_about(&before, gone), ["message_pinned"]);
        assert_eq!(kinds_about(&after, kept), pinned_and_unpinned);
        assert_eq!(
            kinds_about(&after, gone),
            ["message_deleted"],
            "{replay_cache_bytes}: {after:?}"
        );
    }
}

#[tokio::test]
async fn pins_through_either_node_reach_members_on_the_other_and_read_alike() {
    // Arrange: two nodes on one database; Bob listens on node B.
    let a = spawn_app().await;
    let b = spawn_node(&a.database_url, |_| {}).await;
    let (alice, bob, chat) = a_group(&a).await;
    let first = send(&a, &alice, chat, "first").await;
    let second = send(&a, &alice, chat, "second").await;
    let (mut bob_on_b, ready) = connected(&b, &bob, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();
    let (mut alice_on_a, _) = connected(&a, &alice, None).await;

    // Act: pins through node A and node B, an unpin through A.
    pin(&a, &alice, chat, first).await;
    pin(&b, &alice, chat, second).await;
    unpin(&a, &alice, chat, first).await;

    // Assert: both nodes deliver, then replay, the three in commit order...
    let expected = [
        ("message_pinned", first),
        ("message_pinned", second),
        ("message_unpinned", first),
    ]
    .map(|(kind, id)| (json!(kind), json!(id)));
    for ws in [&mut bob_on_b, &mut alice_on_a] {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let f = ws.next_json().await;
            if f["type"] == "message_pinned" || f["type"] == "message_unpinned" {
                seen.push((f["type"].clone(), f["payload"]["message_id"].clone()));
            }
        }
        assert_eq!(seen, expected);
    }
    for node in [&a, &b] {
        let frames = replayed_frames(node, &bob, since).await;
        let replayed: Vec<(Value, Value)> = frames
            .iter()
            .map(|f| (f["type"].clone(), f["payload"]["message_id"].clone()))
            .collect();
        assert_eq!(replayed, expected, "{frames:?}");
        // ...and list the same pins.
        assert_eq!(ids(&pinned(node, &bob, chat).await), [second]);
    }
}
