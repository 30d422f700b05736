//! Reactions: members react to a message with an emoji or a :shortcode:,
//! at most 20 different ones per message; every change is a durable event
//! to the chat's members, on every node, and goes with its message.

use crate::helpers::realtime::{connected, replayed_frames};
use crate::helpers::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Every byte but the unreserved ASCII ones percent-encoded, as a client
/// puts an emoji in a path.
fn encoded(emoji: &str) -> String {
    emoji
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn path(message: i64, emoji: &str) -> String {
    format!("/api/v1/messages/{message}/reactions/{}", encoded(emoji))
}

async fn react(app: &TestApp, user: &TestUser, message: i64, emoji: &str) -> (StatusCode, Value) {
    app.request(Method::PUT, &path(message, emoji), Some(&user.token), None)
        .await
}

async fn unreact(app: &TestApp, user: &TestUser, message: i64, emoji: &str) -> (StatusCode, Value) {
    app.delete(&path(message, emoji), &user.token).await
}

async fn reactions_seen_by(app: &TestApp, user: &TestUser, message: i64) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/messages/{message}"), &user.token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["reactions"].clone()
}

/// Alice, Bob and Carol in a group, and Alice's message there.
async fn a_message_among_three(app: &TestApp) -> (TestUser, TestUser, TestUser, i64, i64) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let message = app.send_message(&alice, chat, "pizza tonight?").await;
    (alice, bob, carol, chat, message["id"].as_i64().unwrap())
}

#[tokio::test]
async fn a_reaction_is_counted_once_per_user_and_shown_to_each_as_theirs_or_not() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, carol, _, message) = a_message_among_three(&app).await;

    // Act
    let (first, body) = react(&app, &bob, message, "👍").await;
    let (again, _) = react(&app, &bob, message, "👍").await;
    let (_, by_alice) = react(&app, &alice, message, "👍").await;

    // Assert
    assert_eq!((first, again), (StatusCode::OK, StatusCode::OK), "{body}");
    assert_eq!(
        body["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}])
    );
    assert_eq!(
        by_alice["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}])
    );
    assert_eq!(
        reactions_seen_by(&app, &carol, message).await,
        json!([{"emoji": "👍", "count": 2, "me": false}])
    );
}

#[tokio::test]
async fn reactions_are_listed_in_the_order_they_were_first_used() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, chat, message) = a_message_among_three(&app).await;
    for (who, emoji) in [
        (&bob, "🍕"),
        (&alice, ":yum:"),
        (&alice, "🍕"),
        (&bob, "❤️"),
    ] {
        let (status, body) = react(&app, who, message, emoji).await;
        assert_eq!(status, 200, "{body}");
    }

    // Act: the first one goes away entirely, then comes back.
    unreact(&app, &bob, message, "🍕").await;
    unreact(&app, &alice, message, "🍕").await;
    react(&app, &bob, message, "🍕").await;

    // Assert: over REST, history included.
    let expected = json!([
        {"emoji": ":yum:", "count": 1, "me": true},
        {"emoji": "❤️", "count": 1, "me": false},
        {"emoji": "🍕", "count": 1, "me": false},
    ]);
    assert_eq!(reactions_seen_by(&app, &alice, message).await, expected);
    let (_, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await;
    assert_eq!(history[0]["reactions"], expected, "{history}");
}

#[tokio::test]
async fn taking_a_reaction_back_is_204_whether_or_not_there_was_one() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, carol, _, message) = a_message_among_three(&app).await;
    react(&app, &bob, message, "😂").await;
    react(&app, &carol, message, "😂").await;

    // Act
    let (removed, _) = unreact(&app, &bob, message, "😂").await;
    let (absent, _) = unreact(&app, &bob, message, "😂").await;
    let (never, _) = unreact(&app, &bob, message, "🙈").await;

    // Assert
    assert_eq!([removed, absent, never], [StatusCode::NO_CONTENT; 3]);
    assert_eq!(
        reactions_seen_by(&app, &bob, message).await,
        json!([{"emoji": "😂", "count": 1, "me": false}])
    );
}

#[tokio::test]
async fn only_members_of_the_messages_chat_react_and_others_are_told_it_does_not_exist() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, _, _, message) = a_message_among_three(&app).await;
    let outsider = app.register("dave").await;
    react(&app, &bob, message, "👀").await;

    for (status, body) in [
        react(&app, &outsider, message, "👀").await,
        unreact(&app, &outsider, message, "👀").await,
        react(&app, &bob, message + 1000, "👀").await,
        unreact(&app, &bob, message + 1000, "👀").await,
    ] {
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(
        reactions_seen_by(&app, &bob, message).await,
        json!([{"emoji": "👀", "count": 1, "me": true}])
    );
}

#[tokio::test]
async fn a_reaction_is_one_emoji_or_a_shortcode_stored_exactly_as_sent() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, _, _, message) = a_message_among_three(&app).await;
    let accepted = [
        "❤",
        "❤️",
        "👍🏽",
        "👨‍👩‍👧‍👦",
        "🇺🇦",
        "1️⃣",
        ":+1:",
        ":party_parrot:",
        ":a-b:",
    ];

    // Act
    for emoji in accepted {
        let (status, body) = react(&app, &bob, message, emoji).await;
        assert_eq!(status, 200, "{emoji}: {body}");
    }

    // Assert
    let listed: Vec<Value> = reactions_seen_by(&app, &bob, message)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["emoji"].clone())
        .collect();
    assert_eq!(
        listed,
        accepted.map(Value::from),
        "❤ and ❤️ are two reactions"
    );
}

#[tokio::test]
async fn anything_else_is_400_naming_the_emoji() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, _, _, message) = a_message_among_three(&app).await;
    let long_shortcode = format!(":{}:", "x".repeat(33));
    let refused = [
        "a",
        "ok",
        "+1",
        ":Thumbs:",
        ":a b:",
        "::",
        &long_shortcode,
        "👍👍",
        "👍 ",
        "\u{200B}",
        "\u{FE0F}",
        "\u{00A0}",
        "\t",
        &"🏳️‍🌈".repeat(2),
    ];

    for emoji in refused {
        // Act
        let (status, body) = react(&app, &bob, message, emoji).await;
        let (removal, removal_body) = unreact(&app, &bob, message, emoji).await;

        // Assert
        assert_error(status, &body, 400, "invalid_emoji");
        assert!(body["error"].as_str().unwrap().contains("emoji"), "{body}");
        assert_error(removal, &removal_body, 400, "invalid_emoji");
    }
    for raw in ["%00", "%F0%9F", "%zz", "%"] {
        let (status, body) = app
            .request(
                Method::PUT,
                &format!("/api/v1/messages/{message}/reactions/{raw}"),
                Some(&bob.token),
                None,
            )
            .await;
        assert_error(status, &body, 400, "invalid_emoji");
    }
    assert_eq!(reactions_seen_by(&app, &bob, message).await, json!([]));
}

#[tokio::test]
async fn a_message_carries_at_most_20_different_reactions() {
    // Arrange: 20 different ones, from two users.
    let app = spawn_app().await;
    let (alice, bob, _, _, message) = a_message_among_three(&app).await;
    for i in 0..20 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        let (status, body) = react(&app, who, message, &format!(":e{i}:")).await;
        assert_eq!(status, 200, "{body}");
    }

    // Act
    let (status, body) = react(&app, &bob, message, ":e20:").await;
    let (existing, _) = react(&app, &bob, message, ":e0:").await;

    // Assert: a 21st is refused; more people may still use the 20.
    assert_error(status, &body, 409, "too_many_reactions");
    assert_eq!(existing, 200);
    let reactions = reactions_seen_by(&app, &bob, message).await;
    assert_eq!(reactions.as_array().unwrap().len(), 20, "{reactions}");
    assert_eq!(
        reactions[0],
        json!({"emoji": ":e0:", "count": 2, "me": true})
    );
}

#[tokio::test]
async fn concurrent_reactions_never_take_a_message_past_20() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, _, _, message) = a_message_among_three(&app).await;

    // Act
    let answers = join_all((0..30).map(|i| {
        let (app, bob) = (&app, &bob);
        async move { react(app, bob, message, &format!(":r{i}:")).await.0 }
    }))
    .await;

    // Assert
    let ok = answers.iter().filter(|s| **s == StatusCode::OK).count();
    let full = answers.iter().filter(|s| s.as_u16() == 409).count();
    assert_eq!((ok, full), (20, 10), "{answers:?}");
    let reactions = reactions_seen_by(&app, &bob, message).await;
    assert_eq!(reactions.as_array().unwrap().len(), 20, "{reactions}");
}

#[tokio::test]
async fn members_hear_each_change_once_and_outsiders_nothing() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, chat, message) = a_message_among_three(&app).await;
    let outsider = app.register("dave").await;
    app.create_group(&outsider, "elsewhere", &[]).await;
    let (mut on_alice, _) = connected(&app, &alice, None).await;
    let (mut on_outsider, _) = connected(&app, &outsider, None).await;

    // Act: an add, a repeat (no change), a removal and a removal of nothing.
    react(&app, &bob, message, "🎉").await;
    react(&app, &bob, message, "🎉").await;
    unreact(&app, &bob, message, "🎉").await;
    unreact(&app, &bob, message, "🎉").await;

    // Assert
    let added = on_alice.next_of_type("reaction_added").await;
    let payload = &added["payload"];
    assert_eq!(
        (
            &payload["chat_id"],
            &payload["message_id"],
            &payload["user_id"],
            &payload["emoji"]
        ),
        (&json!(chat), &json!(message), &json!(bob.id), &json!("🎉"))
    );
    let removed = on_alice.next_json().await;
    assert_eq!(removed["type"], "reaction_removed", "{removed}");
    assert_eq!(removed["payload"]["emoji"], "🎉");
    assert!(removed["payload"]["event_id"].as_i64() > payload["event_id"].as_i64());
    on_alice
        .expect_no("reaction_added", Duration::from_millis(400))
        .await;
    on_outsider
        .expect_no("reaction_added", Duration::from_millis(100))
        .await;
}

fn kinds_about(frames: &[Value], message: i64) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["payload"]["message_id"] == message)
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn reactions_are_replayed_in_order_and_not_once_their_message_is_deleted() {
    for replay_cache_bytes in [1 << 20, 0] {
        // Arrange: Carol is connected throughout, so the node holds the
        // events (and has dispatched each before she reconnects).
        let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
        let (alice, bob, carol, chat, message) = a_message_among_three(&app).await;
        let kept = app.send_message(&alice, chat, "still here").await["id"]
            .as_i64()
            .unwrap();
        let (mut on_carol, _) = connected(&app, &carol, None).await;
        react(&app, &bob, message, ":secret_plan:").await;
        react(&app, &bob, kept, "👍").await;
        unreact(&app, &bob, kept, "👍").await;
        react(&app, &alice, kept, "🙌").await;
        while on_carol.next_of_type("reaction_added").await["payload"]["emoji"] != "🙌" {}

        // Act
        let before = replayed_frames(&app, &carol, 0).await;
        app.delete(&format!("/api/v1/messages/{message}"), &alice.token)
            .await;
        on_carol.next_of_type("message_deleted").await;
        let after = replayed_frames(&app, &carol, 0).await;

        // Assert
        assert_eq!(
            kinds_about(&before, kept),
            [
                "message",
                "reaction_added",
                "reaction_removed",
                "reaction_added"
            ],
            "{replay_cache_bytes}: {before:?}"
        );
        assert_eq!(
            kinds_about(&before, message),
            ["message", "reaction_added"],
            "{replay_cache_bytes}"
        );
        assert_eq!(kinds_about(&after, kept), kinds_about(&before, kept));
        assert_eq!(
            kinds_about(&after, message),
            ["message_deleted"],
            "{replay_cache_bytes}: {after:?}"
        );
        assert!(
            after.iter().all(|f| !f.to_string().contains("secret_plan")),
            "{after:?}"
        );
    }
}

#[tokio::test]
async fn a_deleted_message_takes_its_reactions_along() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, _, message) = a_message_among_three(&app).await;
    react(&app, &bob, message, "👋").await;

    // Act
    app.delete(&format!("/api/v1/messages/{message}"), &alice.token)
        .await;

    // Assert
    let left = app
        .db_count(
            "select count(*) from reactions where message_id = $1",
            message,
        )
        .await;
    assert_eq!(left, 0);
    let (status, body) = react(&app, &bob, message, "👋").await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn reactions_through_either_node_reach_members_on_the_other_in_order() {
    // Arrange: two nodes on one database; Carol on node B, Alice on node A.
    let a = spawn_app().await;
    let b = spawn_node(&a.database_url, |_| {}).await;
    let (alice, bob, carol, _, message) = a_message_among_three(&a).await;
    let (mut carol_on_b, ready) = connected(&b, &carol, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();
    let (mut alice_on_a, _) = connected(&a, &alice, None).await;

    // Act: a reaction through node A, then one through B, then a removal through A.
    react(&a, &bob, message, "🔥").await;
    react(&b, &alice, message, "🔥").await;
    unreact(&a, &bob, message, "🔥").await;

    // Assert: both nodes deliver the three in commit order...
    let mut seen = Vec::new();
    for ws in [&mut carol_on_b, &mut alice_on_a] {
        let mut events = Vec::new();
        while events.len() < 3 {
            let f = ws.next_json().await;
            if f["type"].as_str().unwrap().starts_with("reaction_") {
                events.push((f["type"].clone(), f["payload"]["user_id"].clone()));
            }
        }
        seen.push(events);
    }
    let expected = vec![
        (json!("reaction_added"), json!(bob.id)),
        (json!("reaction_added"), json!(alice.id)),
        (json!("reaction_removed"), json!(bob.id)),
    ];
    assert_eq!(seen, [expected.clone(), expected.clone()]);
    // ...replay them alike...
    for node in [&a, &b] {
        let frames = replayed_frames(node, &carol, since).await;
        let replayed: Vec<(Value, Value)> = frames
            .iter()
            .map(|f| (f["type"].clone(), f["payload"]["user_id"].clone()))
            .collect();
        assert_eq!(replayed, expected, "{frames:?}");
    }
    // ...and answer the same over REST.
    for node in [&a, &b] {
        assert_eq!(
            reactions_seen_by(node, &alice, message).await,
            json!([{"emoji": "🔥", "count": 1, "me": true}])
        );
    }
}
