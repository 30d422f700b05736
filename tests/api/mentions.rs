//! Mentions: `@username` naming a member of the chat. Messages carry who
//! they mention, chats count the caller's unread mentions beside their
//! unread messages, and `GET /api/v1/mentions` lists the messages that
//! mention the caller.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use crate::send_batches::behind_a_held_commit;
use futures_util::future::join_all;
use serde_json::{Value, json};

/// Alice, Bob and Carol in a group; Dave is not in it.
async fn three_and_an_outsider(app: &TestApp) -> (TestUser, TestUser, TestUser, TestUser, i64) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    (alice, bob, carol, dave, chat)
}

fn id_of(message: &Value) -> i64 {
    message["id"].as_i64().expect("a message id")
}

async fn counts(app: &TestApp, user: &TestUser, chat: i64) -> (i64, i64) {
    let (status, body) = app.get(&format!("/api/v1/chats/{chat}"), &user.token).await;
    assert_eq!(status, 200, "{body}");
    (
        body["unread_count"].as_i64().unwrap(),
        body["mention_count"].as_i64().unwrap(),
    )
}

async fn feed(app: &TestApp, user: &TestUser, query: &str) -> Vec<i64> {
    let (status, body) = app
        .get(&format!("/api/v1/mentions{query}"), &user.token)
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_message_mentions_each_member_it_names_once_in_order() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, carol, dave, chat) = three_and_an_outsider(&app).await;
    let (mut on_bob, _) = connected(&app, &bob, None).await;
    let text = format!(
        "@{} and @{}, not @{} nor {}@example.com; @{} again",
        carol.username.to_uppercase(),
        bob.username,
        dave.username,
        alice.username,
        carol.username,
    );

    // Act
    let sent = app.send_message(&alice, chat, &text).await;

    // Assert: REST, the live frame and a later read agree.
    let expected = json!([carol.id, bob.id]);
    assert_eq!(sent["mentions"], expected, "{sent}");
    let frame = on_bob.next_of_type("message").await;
    assert_eq!(frame["payload"]["mentions"], expected, "{frame}");
    let (_, fetched) = app
        .get(&format!("/api/v1/messages/{}", id_of(&sent)), &carol.token)
        .await;
    assert_eq!(fetched["mentions"], expected);
    let (_, plain) = app
        .post(
            "/api/v1/messages",
            &alice.token,
            json!({"chat_id": chat, "content": "nobody here"}),
        )
        .await;
    assert_eq!(plain["mentions"], json!([]));
}

#[tokio::test]
async fn a_mention_ending_a_sentence_still_names_the_member() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, _, chat) = three_and_an_outsider(&app).await;

    // Act
    let sent = app
        .send_message(&alice, chat, &format!("thanks @{}.", bob.username))
        .await;

    // Assert
    assert_eq!(sent["mentions"], json!([bob.id]));
}

#[tokio::test]
async fn chats_count_unread_mentions_beside_unread_messages_until_read() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, carol, _, chat) = three_and_an_outsider(&app).await;
    let to_bob = format!("@{} look", bob.username);
    app.send_message(&alice, chat, &to_bob).await;
    app.send_message(&carol, chat, "unrelated").await;
    let last = app.send_message(&carol, chat, &to_bob).await;
    // Bob's own mention of himself is no unread mention.
    app.send_message(&bob, chat, &to_bob).await;

    // Act & Assert
    assert_eq!(counts(&app, &bob, chat).await, (3, 2));
    assert_eq!(counts(&app, &carol, chat).await, (2, 0));
    let (_, list) = app.get("/api/v1/chats", &bob.token).await;
    assert_eq!(list[0]["mention_count"], 2, "{list}");
    let (status, marker) = app
        .post(
            &format!("/api/v1/chats/{chat}/read"),
            &bob.token,
            json!({"message_id": id_of(&last)}),
        )
        .await;
    assert_eq!(status, 200, "{marker}");
    assert_eq!(
        (&marker["unread_count"], &marker["mention_count"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(counts(&app, &bob, chat).await, (0, 0));
}

#[tokio::test]
async fn the_read_frame_acks_the_mention_count_too() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, _, chat) = three_and_an_outsider(&app).await;
    let first = app
        .send_message(&alice, chat, &format!("@{} one", bob.username))
        .await;
    app.send_message(&alice, chat, &format!("@{} two", bob.username))
        .await;
    let (mut ws, _) = connected(&app, &bob, None).await;

    // Act
    ws.send_json(
        json!({"type": "read", "payload": {"chat_id": chat, "message_id": id_of(&first)}}),
    )
    .await;

    // Assert
    let ack = ws.next_of_type("ack").await;
    assert_eq!(ack["payload"]["mention_count"], 1, "{ack}");
}

#[tokio::test]
async fn editing_a_mention_away_or_deleting_the_message_lowers_the_count() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, carol, _, chat) = three_and_an_outsider(&app).await;
    let (mut on_carol, _) = connected(&app, &carol, None).await;
    let first = app
        .send_message(&alice, chat, &format!("@{} one", bob.username))
        .await;
    let second = app
        .send_message(&alice, chat, &format!("@{} two", bob.username))
        .await;
    assert_eq!(counts(&app, &bob, chat).await.1, 2);

    // Act: the first now names Carol instead; the second goes.
    let (status, edited) = app
        .put(
            &format!("/api/v1/messages/{}", id_of(&first)),
            &alice.token,
            json!({"content": format!("@{} one", carol.username)}),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    app.delete(
        &format!("/api/v1/messages/{}", id_of(&second)),
        &alice.token,
    )
    .await;

    // Assert
    assert_eq!(edited["mentions"], json!([carol.id]));
    let update = on_carol.next_of_type("message_updated").await;
    assert_eq!(update["payload"]["mentions"], json!([carol.id]), "{update}");
    assert_eq!(counts(&app, &bob, chat).await.1, 0);
    assert_eq!(counts(&app, &carol, chat).await.1, 1);
    assert_eq!(feed(&app, &bob, "").await, Vec::<i64>::new());
    assert_eq!(feed(&app, &carol, "").await, [id_of(&first)]);
}

#[tokio::test]
async fn mention_counts_stop_at_1000_like_unread_counts() {
    // Arrange: 1,001 messages by Alice that mention Bob, stored directly.
    let app = spawn_app().await;
    let (alice, bob, _, _, chat) = three_and_an_outsider(&app).await;
    let db = pg::connect(&app.database_url).await;
    db.execute(
        "insert into messages (chat_id, sender_id, content, mentions)
         select $1, $2, 'm' || g, array[$3::bigint] from generate_series(1, 1001) g",
        &[&chat, &alice.id, &bob.id],
    )
    .await
    .unwrap();

    // Act & Assert
    assert_eq!(counts(&app, &bob, chat).await, (1000, 1000));
}

#[tokio::test]
async fn the_feed_lists_the_callers_mentions_newest_first_a_page_at_a_time() {
    // Arrange: mentions of Bob in two chats, and one of Carol.
    let app = spawn_app().await;
    let (alice, bob, carol, _, chat) = three_and_an_outsider(&app).await;
    let dm = app.create_dm(&carol, &bob).await;
    let mut mentioning_bob = Vec::new();
    for i in 0..5 {
        let (who, chat) = if i % 2 == 0 {
            (&alice, chat)
        } else {
            (&carol, dm)
        };
        let sent = app
            .send_message(who, chat, &format!("{i} @{}", bob.username))
            .await;
        mentioning_bob.push(id_of(&sent));
    }
    app.send_message(&alice, chat, &format!("@{}", carol.username))
        .await;
    mentioning_bob.reverse();

    // Act
    let first_page = feed(&app, &bob, "?limit=2").await;
    let next = feed(&app, &bob, &format!("?limit=2&before_id={}", first_page[1])).await;
    let all = feed(&app, &bob, "").await;

    // Assert
    assert_eq!(first_page, mentioning_bob[..2]);
    assert_eq!(next, mentioning_bob[2..4]);
    assert_eq!(all, mentioning_bob);
    let (_, body) = app.get("/api/v1/mentions?limit=1", &bob.token).await;
    assert_eq!(body[0]["mentions"], json!([bob.id]));
    assert_eq!(body[0]["reactions"], json!([]));
}

#[tokio::test]
async fn the_feed_shows_only_chats_the_caller_is_in() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, _, _, chat) = three_and_an_outsider(&app).await;
    let other = app.create_group(&alice, "other", &[&bob]).await;
    let kept = app
        .send_message(&alice, other, &format!("@{}", bob.username))
        .await;
    app.send_message(&alice, chat, &format!("@{}", bob.username))
        .await;

    // Act: Bob leaves the first chat.
    let (status, body) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &bob.token,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // Assert
    assert_eq!(feed(&app, &bob, "").await, [id_of(&kept)]);
}

#[tokio::test]
async fn the_feed_refuses_a_bad_page_naming_the_fields() {
    let app = spawn_app().await;
    let bob = app.register("bob").await;

    let (status, body) = app
        .get("/api/v1/mentions?limit=0&before_id=x", &bob.token)
        .await;

    assert_error(status, &body, 400, "validation_failed");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "before_id"]);
    let (status, body) = app
        .request(reqwest::Method::GET, "/api/v1/mentions", None, None)
        .await;
    assert_error(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn mentions_in_sends_committed_together_resolve_each_in_its_own_chat() {
    // Arrange: Dave is in the second chat only.
    let app = spawn_app().await;
    let (alice, bob, _, dave, chat) = three_and_an_outsider(&app).await;
    let other = app.create_group(&alice, "other", &[&dave]).await;
    let text = format!("@{} @{}", bob.username, dave.username);
    let chats = [chat, other, chat, other];

    // Act
    let results = behind_a_held_commit(
        &app,
        join_all(chats.iter().map(|c| {
            app.post(
                "/api/v1/messages",
                &alice.token,
                json!({"chat_id": c, "content": text}),
            )
        })),
    )
    .await;

    // Assert
    for (c, (status, body)) in chats.iter().zip(&results) {
        assert_eq!(*status, 201, "{body}");
        let expected = if *c == chat { bob.id } else { dave.id };
        assert_eq!(body["mentions"], json!([expected]), "{body}");
    }
}
