//! Replies: a message may answer an earlier one of its chat, and every
//! message (REST, live frames, replay) shows what it answers as that
//! original is now: a preview of its current text, or that it is deleted,
//! never the text it had.

use crate::helpers::realtime::{connected, replayed_frames};
use crate::helpers::*;
use crate::send_batches::behind_a_held_commit;
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn reply(
    app: &TestApp,
    user: &TestUser,
    chat: i64,
    content: &str,
    reply_to_id: i64,
) -> (reqwest::StatusCode, Value) {
    app.post(
        "/api/v1/messages",
        &user.token,
        json!({"chat_id": chat, "content": content, "reply_to_id": reply_to_id}),
    )
    .await
}

fn id_of(message: &Value) -> i64 {
    message["id"].as_i64().expect("a message id")
}

/// Alice and Bob in a group, and Alice's message there.
async fn a_group_with_a_message(app: &TestApp, text: &str) -> (TestUser, TestUser, i64, i64) {
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let original = id_of(&app.send_message(&alice, chat, text).await);
    (alice, bob, chat, original)
}

#[tokio::test]
async fn a_reply_shows_its_original_everywhere_a_message_is_read() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat, original) = a_group_with_a_message(&app, "lunch at noon?").await;

    // Act
    let (status, sent) = reply(&app, &bob, chat, "yes!", original).await;

    // Assert
    assert_eq!(status, 201, "{sent}");
    let expected = json!({"id": original, "sender_id": alice.id,
                          "content": "lunch at noon?", "deleted": false});
    assert_eq!(sent["reply_to"], expected, "{sent}");
    let (_, fetched) = app
        .get(&format!("/api/v1/messages/{}", id_of(&sent)), &alice.token)
        .await;
    assert_eq!(fetched["reply_to"], expected, "{fetched}");
    let (_, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &alice.token)
        .await;
    assert_eq!(history[0]["reply_to"], expected, "{history}");
    assert_eq!(
        history[1]["reply_to"],
        Value::Null,
        "not a reply: {history}"
    );
}

#[tokio::test]
async fn a_reply_previews_the_first_200_characters_of_its_original() {
    // Arrange: 250 characters, some of them several bytes long.
    let app = spawn_app().await;
    let long: String = "é👍x".repeat(84).chars().take(250).collect();
    let (_, bob, chat, original) = a_group_with_a_message(&app, &long).await;

    // Act
    let (status, sent) = reply(&app, &bob, chat, "tl;dr?", original).await;

    // Assert
    assert_eq!(status, 201, "{sent}");
    let preview: String = long.chars().take(200).collect();
    assert_eq!(sent["reply_to"]["content"], preview);
}

#[tokio::test]
async fn a_reply_to_anything_but_a_message_of_the_same_chat_is_invalid() {
    // Arrange: Bob is in both chats; Carol's chat does not have him.
    let app = spawn_app().await;
    let (alice, bob, chat, _) = a_group_with_a_message(&app, "here").await;
    let other = app.create_group(&alice, "other", &[&bob]).await;
    let elsewhere = id_of(&app.send_message(&alice, other, "there").await);
    let carol = app.register("carol").await;
    let hidden_chat = app.create_group(&carol, "hidden", &[]).await;
    let hidden = id_of(&app.send_message(&carol, hidden_chat, "secret").await);
    let deleted = id_of(&app.send_message(&alice, chat, "gone soon").await);
    let (status, _) = app
        .delete(&format!("/api/v1/messages/{deleted}"), &alice.token)
        .await;
    assert_eq!(status, 204);

    for reply_to_id in [elsewhere, hidden, deleted, 999_999_999, 0, -5] {
        // Act
        let (status, body) = reply(&app, &bob, chat, "re", reply_to_id).await;

        // Assert
        assert_error(status, &body, 400, "invalid_reply");
        assert!(
            body["error"].as_str().unwrap().contains("reply_to_id"),
            "the error names the field: {body}"
        );
    }
    let (_, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &bob.token)
        .await;
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "nothing stored: {history}"
    );
}

#[tokio::test]
async fn a_non_member_replying_is_told_the_chat_does_not_exist() {
    // Arrange
    let app = spawn_app().await;
    let (_, _, chat, original) = a_group_with_a_message(&app, "members only").await;
    let carol = app.register("carol").await;

    // Act
    let (status, body) = reply(&app, &carol, chat, "let me in", original).await;

    // Assert
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn a_retried_reply_returns_the_stored_one_even_once_its_original_is_gone() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat, original) = a_group_with_a_message(&app, "vote?").await;
    let body = json!({"chat_id": chat, "content": "aye", "reply_to_id": original,
                      "client_id": "vote-1"});
    let (status, first) = app.post("/api/v1/messages", &bob.token, body.clone()).await;
    assert_eq!(status, 201, "{first}");
    app.delete(&format!("/api/v1/messages/{original}"), &alice.token)
        .await;

    // Act
    let (status, again) = app.post("/api/v1/messages", &bob.token, body).await;

    // Assert
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        again["reply_to"],
        json!({"id": original, "sender_id": null, "content": null, "deleted": true})
    );
}

#[tokio::test]
async fn a_reply_over_websocket_is_acked_and_reaches_members_with_its_original() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat, original) = a_group_with_a_message(&app, "ship it?").await;
    let (mut on_bob, _) = connected(&app, &bob, None).await;
    let (mut on_alice, _) = connected(&app, &alice, None).await;

    // Act
    on_bob
        .send_json(json!({"type": "message", "ref": "r1",
                          "payload": {"chat_id": chat, "content": "shipped", "reply_to_id": original}}))
        .await;
    on_bob
        .send_json(json!({"type": "message", "ref": "r2",
                          "payload": {"chat_id": chat, "content": "?", "reply_to_id": original + 1000}}))
        .await;

    // Assert
    let ack = on_bob.next_of_type("ack").await;
    assert_eq!(ack["ref"], "r1", "{ack}");
    let error = on_bob.next_of_type("error").await;
    assert_eq!(error["payload"]["code"], "invalid_reply", "{error}");
    assert_eq!(error["payload"]["ref"], "r2", "{error}");
    let frame = on_alice.next_of_type("message").await;
    assert_eq!(frame["payload"]["message_id"], ack["payload"]["message_id"]);
    assert_eq!(
        frame["payload"]["reply_to"],
        json!({"id": original, "sender_id": alice.id, "content": "ship it?", "deleted": false})
    );
}

#[tokio::test]
async fn an_edited_or_deleted_original_shows_as_it_is_now_in_its_replies() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat, original) = a_group_with_a_message(&app, "meet at 5").await;
    let (_, sent) = reply(&app, &bob, chat, "ok", original).await;
    let path = format!("/api/v1/messages/{}", id_of(&sent));

    // Act & Assert: an edit shows its new text...
    let (status, _) = app
        .put(
            &format!("/api/v1/messages/{original}"),
            &alice.token,
            json!({"content": "meet at 6"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, now) = app.get(&path, &bob.token).await;
    assert_eq!(now["reply_to"]["content"], "meet at 6", "{now}");

    // ...and a deletion leaves the id only.
    app.delete(&format!("/api/v1/messages/{original}"), &alice.token)
        .await;
    let (_, now) = app.get(&path, &bob.token).await;
    assert_eq!(
        now["reply_to"],
        json!({"id": original, "sender_id": null, "content": null, "deleted": true})
    );
}

fn reply_frames(frames: &[Value], reply_id: i64) -> Vec<&Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["payload"]["message_id"] == reply_id)
        .collect()
}

#[tokio::test]
async fn a_replayed_reply_previews_the_originals_current_text_from_memory_and_from_the_log() {
    for replay_cache_bytes in [1 << 20, 0] {
        // Arrange: Bob is connected throughout, so the node holds the frames
        // (and has dispatched the change before he reconnects).
        let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
        let (alice, bob, chat, original) = a_group_with_a_message(&app, "draft one").await;
        let (mut on_bob, _) = connected(&app, &bob, None).await;
        let (_, sent) = reply(&app, &bob, chat, "looks good", original).await;
        on_bob.next_of_type("message").await;

        // Act
        app.put(
            &format!("/api/v1/messages/{original}"),
            &alice.token,
            json!({"content": "draft two"}),
        )
        .await;
        on_bob.next_of_type("message_updated").await;
        let frames = replayed_frames(&app, &bob, 0).await;

        // Assert
        let replies = reply_frames(&frames, id_of(&sent));
        assert_eq!(replies.len(), 1, "{frames:?}");
        assert_eq!(replies[0]["payload"]["reply_to"]["content"], "draft two");
        assert!(
            frames.iter().all(|f| !f.to_string().contains("draft one")),
            "{replay_cache_bytes}: the old text was replayed: {frames:?}"
        );
    }
}

#[tokio::test]
async fn a_reply_to_a_deleted_original_replays_without_its_text_from_memory_and_from_the_log() {
    for replay_cache_bytes in [1 << 20, 0] {
        // Arrange
        let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
        let (alice, bob, chat, original) = a_group_with_a_message(&app, "the secret plan").await;
        let (mut on_bob, _) = connected(&app, &bob, None).await;
        let (_, sent) = reply(&app, &bob, chat, "agreed", original).await;
        on_bob.next_of_type("message").await;

        // Act
        app.delete(&format!("/api/v1/messages/{original}"), &alice.token)
            .await;
        on_bob.next_of_type("message_deleted").await;
        let frames = replayed_frames(&app, &bob, 0).await;

        // Assert
        let replies = reply_frames(&frames, id_of(&sent));
        assert_eq!(replies.len(), 1, "{frames:?}");
        assert_eq!(
            replies[0]["payload"]["reply_to"],
            json!({"id": original, "sender_id": null, "content": null, "deleted": true})
        );
        assert!(
            frames
                .iter()
                .all(|f| !f.to_string().contains("secret plan")),
            "{replay_cache_bytes}: the deleted text was replayed: {frames:?}"
        );
    }
}

/// Holds an edit (or a deletion) of `message` open as the server runs one:
/// the row locked `for update`, the change made, its event appended (so
/// the `event_seq` lock is held too). `commit` then finishes it.
async fn an_open_change(
    app: &TestApp,
    chat: i64,
    message: i64,
    change: &str,
    kind: &str,
) -> tokio_postgres::Client {
    let tx = pg::connect(&app.database_url).await;
    tx.batch_execute("begin").await.unwrap();
    tx.execute(
        "select 1 from messages where id = $1 for update",
        &[&message],
    )
    .await
    .unwrap();
    tx.execute(change, &[&message]).await.unwrap();
    let event = json!([{"chat_id": chat, "kind": kind, "user_ids": [],
                        "payload": {"chat_id": chat, "message_id": message}}]);
    tx.query(chatapp::events::EMIT_SQL.as_str(), &[&event])
        .await
        .unwrap();
    tx
}

/// Waits until some statement waits for a lock, then `commit`s `tx`.
async fn commit_once_someone_waits(app: &TestApp, tx: tokio_postgres::Client) {
    pg::until_a_statement_waits_for_a_lock(&app.database_url, 400).await;
    tx.batch_execute("commit").await.unwrap();
}

#[tokio::test]
async fn a_reply_sent_while_its_original_is_being_edited_previews_the_edit() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, chat, original) = a_group_with_a_message(&app, "old plan").await;
    let edit = an_open_change(
        &app,
        chat,
        original,
        "update messages set content = 'new plan', is_edited = true where id = $1",
        "message_updated",
    )
    .await;

    // Act
    let ((status, sent), ()) = tokio::join!(
        reply(&app, &bob, chat, "fine", original),
        commit_once_someone_waits(&app, edit)
    );

    // Assert: the reply, whose event follows the edit's, shows the edit.
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["reply_to"]["content"], "new plan", "{sent}");
}

#[tokio::test]
async fn a_reply_sent_while_its_original_is_being_deleted_is_invalid() {
    // Arrange
    let app = spawn_app().await;
    let (_, bob, chat, original) = a_group_with_a_message(&app, "going").await;
    let deletion = an_open_change(
        &app,
        chat,
        original,
        "delete from messages where id = $1",
        "message_deleted",
    )
    .await;

    // Act
    let ((status, body), ()) = tokio::join!(
        reply(&app, &bob, chat, "wait", original),
        commit_once_someone_waits(&app, deletion)
    );

    // Assert
    assert_error(status, &body, 400, "invalid_reply");
}

#[tokio::test]
async fn replies_committed_together_keep_their_own_originals_and_outcomes() {
    // Arrange
    let app = spawn_app().await;
    let (alice, bob, chat, first) = a_group_with_a_message(&app, "first").await;
    let second = id_of(&app.send_message(&alice, chat, "second").await);
    let other = app.create_group(&alice, "other", &[&bob]).await;
    let elsewhere = id_of(&app.send_message(&alice, other, "elsewhere").await);
    let targets = [
        Some(first),
        Some(second),
        None,
        Some(elsewhere),
        Some(first),
    ];

    // Act
    let results = behind_a_held_commit(
        &app,
        join_all(targets.iter().map(|target| {
            app.post(
                "/api/v1/messages",
                &bob.token,
                json!({"chat_id": chat, "content": "re", "reply_to_id": target}),
            )
        })),
    )
    .await;

    // Assert
    for (target, (status, body)) in targets.iter().zip(&results) {
        match target {
            Some(id) if *id == elsewhere => assert_error(*status, body, 400, "invalid_reply"),
            Some(id) => {
                assert_eq!(*status, 201, "{body}");
                assert_eq!(body["reply_to"]["id"], *id, "{body}");
                let text = if *id == first { "first" } else { "second" };
                assert_eq!(body["reply_to"]["content"], text, "{body}");
            }
            None => {
                assert_eq!(*status, 201, "{body}");
                assert_eq!(body["reply_to"], Value::Null, "{body}");
            }
        }
    }
}
