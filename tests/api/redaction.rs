//! Deleted means gone: once a message is deleted no API, no replay and no
//! row of the event log returns its text, and an edit leaves no readable
//! old version behind.

use crate::helpers::realtime::replayed_frames;
use crate::helpers::*;
use serde_json::{Value, json};

const SECRET: &str = "the secret plan";
const EDITED: &str = "the revised plan";

/// Alice posts, edits and deletes a message, then adds Carol to the group.
async fn posted_edited_deleted_then_carol_added(app: &TestApp) -> (TestUser, i64, i64) {
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let chat = app.create_group(&alice, "plans", &[]).await;
    let sent = app.send_message(&alice, chat, SECRET).await;
    let id = sent["id"].as_i64().unwrap();
    let (status, body) = app
        .put(
            &format!("/api/v1/messages/{id}"),
            &alice.token,
            json!({"content": EDITED}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .delete(&format!("/api/v1/messages/{id}"), &alice.token)
        .await;
    assert_eq!(status, 204, "{body}");
    app.add_members(&alice, chat, &[carol.id]).await;
    (carol, chat, id)
}

#[track_caller]
fn assert_no_plan_in(frames: &[Value], message_id: i64) {
    for frame in frames {
        let text = frame.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(EDITED),
            "deleted text replayed: {frame}"
        );
    }
    let deleted = frames
        .iter()
        .filter(|f| f["type"] == "message_deleted" && f["payload"]["message_id"] == message_id)
        .count();
    assert_eq!(
        deleted, 1,
        "the deletion itself is replayed once: {frames:?}"
    );
}

async fn deleted_text_is_never_replayed(replay_cache_bytes: usize) {
    // Arrange
    let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
    let (carol, _chat, id) = posted_edited_deleted_then_carol_added(&app).await;

    // Act
    let frames = replayed_frames(&app, &carol, 0).await;

    // Assert
    assert_no_plan_in(&frames, id);
}

#[tokio::test]
async fn a_deleted_message_is_replayed_as_its_deletion_only_from_the_nodes_memory() {
    deleted_text_is_never_replayed(chatapp::config::Config::default().ws.replay_cache_bytes).await;
}

#[tokio::test]
async fn a_deleted_message_is_replayed_as_its_deletion_only_from_the_log() {
    deleted_text_is_never_replayed(0).await;
}

#[tokio::test]
async fn no_row_of_the_event_log_holds_a_deleted_or_edited_text() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "plans", &[]).await;
    let kept = app.send_message(&alice, chat, SECRET).await;
    let kept_id = kept["id"].as_i64().unwrap();
    let (carol, _, _) = posted_edited_deleted_then_carol_added(&app).await;

    // Act: the kept message is edited, the other one was deleted.
    let (status, _) = app
        .put(
            &format!("/api/v1/messages/{kept_id}"),
            &alice.token,
            json!({"content": "nothing to see"}),
        )
        .await;
    assert_eq!(status, 200);

    // Assert: neither text survives anywhere in the log, over REST or in replay.
    let db = pg::connect(&app.database_url).await;
    let leaked: i64 = db
        .query_one(
            "select count(*) from events
             where payload::text ~ '(secret plan|revised plan|nothing to see)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "the log holds message text");
    let frames = replayed_frames(&app, &carol, 0).await;
    assert!(
        frames.iter().all(|f| !f.to_string().contains(" plan")),
        "{frames:?}"
    );
    let (status, body) = app
        .get(&format!("/api/v1/messages/{kept_id}"), &alice.token)
        .await;
    assert_eq!(
        (status.as_u16(), body["content"].as_str()),
        (200, Some("nothing to see"))
    );
}

#[tokio::test]
async fn an_edited_message_replays_with_its_current_text_from_memory_and_from_the_log() {
    for replay_cache_bytes in [1 << 20, 0] {
        // Arrange
        let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
        let alice = app.register("alice").await;
        let bob = app.register("bob").await;
        let chat = app.create_group(&alice, "g", &[&bob]).await;
        let sent = app.send_message(&alice, chat, "first draft").await;
        let id = sent["id"].as_i64().unwrap();
        app.put(
            &format!("/api/v1/messages/{id}"),
            &alice.token,
            json!({"content": "final"}),
        )
        .await;

        // Act
        let frames = replayed_frames(&app, &bob, 0).await;

        // Assert: both the message and its update carry the current text.
        let about: Vec<&Value> = frames
            .iter()
            .filter(|f| f["payload"]["message_id"] == id)
            .collect();
        let kinds: Vec<&str> = about.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "message_updated"], "{frames:?}");
        for frame in about {
            assert_eq!(frame["payload"]["content"], "final", "{frame}");
            assert_eq!(frame["payload"]["is_edited"], true, "{frame}");
        }
    }
}
