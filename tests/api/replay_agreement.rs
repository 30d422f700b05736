//! Replay from a node's memory and replay from the log are the same frames,
//! and both show each message as REST history shows it now, whatever
//! happened to it, or to its sender, after it was sent. Each test runs one
//! scenario against two nodes of one database, one replaying from memory
//! and one from the log, and compares what a resuming client gets from each.

use crate::helpers::realtime::connected;
use crate::helpers::*;
use serde_json::{Value, json};

/// A node replaying from memory and one replaying from the log, sharing a database.
async fn two_sources() -> (TestApp, TestApp) {
    let memory = spawn_app().await;
    let log = spawn_node(&memory.database_url, |c| c.ws.replay_cache_bytes = 0).await;
    (memory, log)
}

/// The durable frames a connection resuming after `since` gets, through
/// event `through` (the last one it is replayed).
async fn replayed(app: &TestApp, user: &TestUser, since: i64, through: i64) -> Vec<Value> {
    let (mut ws, ready) = connected(app, user, Some(since)).await;
    assert_eq!(ready["recovered"], true, "{ready}");
    let mut frames = Vec::new();
    loop {
        let frame = ws.next_json().await;
        let Some(id) = frame["payload"]["event_id"].as_i64() else {
            continue;
        };
        frames.push(frame);
        if id >= through {
            return frames;
        }
    }
}

/// Reads `ws` until the message `id` arrives, and returns its event id: the
/// node has then dispatched everything committed before it, and applied
/// the live signals sent before it.
async fn wait_for_message(ws: &mut WsClient, id: &Value) -> i64 {
    loop {
        let frame = ws.next_of_type("message").await;
        if frame["payload"]["message_id"] == *id {
            return frame["payload"]["event_id"].as_i64().unwrap();
        }
    }
}

/// Asserts that every message frame among `frames` names the sender and
/// content REST history shows `user` for that message now.
async fn assert_as_history_shows(app: &TestApp, user: &TestUser, chat: i64, frames: &[Value]) {
    let (status, history) = app
        .get(&format!("/api/v1/messages/chat/{chat}"), &user.token)
        .await;
    assert_eq!(status, 200, "{history}");
    let history = history.as_array().unwrap();
    let messages = frames
        .iter()
        .filter(|f| f["type"] == "message" || f["type"] == "message_updated");
    for frame in messages {
        let payload = &frame["payload"];
        let rest = history
            .iter()
            .find(|m| m["id"] == payload["message_id"])
            .unwrap_or_else(|| panic!("not in history: {frame}"));
        assert_eq!(payload["content"], rest["content"], "{frame} vs {rest}");
        assert_eq!(payload["sender_id"], rest["sender_id"], "{frame} vs {rest}");
        let sender = &rest["sender"];
        for field in ["username", "display_name"] {
            assert_eq!(payload[field], sender[field], "{frame} vs {rest}");
        }
    }
}

/// bob's messages, sent and edited while carol was away, as she is
/// replayed them from each node once bob's account is gone.
struct Scenario {
    memory: TestApp,
    log: TestApp,
    alice: TestUser,
    bob: TestUser,
    carol: TestUser,
    chat: i64,
    since: i64,
    watcher: WsClient,
}

impl Scenario {
    async fn new() -> Scenario {
        let (memory, log) = two_sources().await;
        let alice = memory.register("alice").await;
        let bob = memory.register("bob").await;
        let carol = memory.register("carol").await;
        let (status, body) = memory
            .put(
                &format!("/api/v1/users/{}", bob.id),
                &bob.token,
                json!({"display_name": "Bob"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let chat = memory.create_group(&alice, "g", &[&bob, &carol]).await;
        let (watcher, ready) = connected(&memory, &alice, None).await;
        let since = ready["last_event_id"].as_i64().unwrap();
        let first = memory.send_message(&bob, chat, "hello").await;
        memory.send_message(&bob, chat, "draft").await;
        let (status, body) = memory
            .put(
                &format!("/api/v1/messages/{}", first["id"]),
                &bob.token,
                json!({"content": "hello again"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        Scenario {
            memory,
            log,
            alice,
            bob,
            carol,
            chat,
            since,
            watcher,
        }
    }

    /// alice says bob is gone; once the memory node has dispatched that,
    /// carol resumes from each node. Returns what each replayed her.
    async fn replays(&mut self) -> (Vec<Value>, Vec<Value>) {
        let last = self
            .memory
            .send_message(&self.alice, self.chat, "bob is gone")
            .await;
        let through = wait_for_message(&mut self.watcher, &last["id"]).await;
        let from_memory = replayed(&self.memory, &self.carol, self.since, through).await;
        let from_log = replayed(&self.log, &self.carol, self.since, through).await;
        for frames in [&from_memory, &from_log] {
            assert_as_history_shows(&self.memory, &self.carol, self.chat, frames).await;
        }
        (from_memory, from_log)
    }
}

/// Asserts that bob's three message frames (two sent, one edit) name no sender.
fn assert_bobs_name_no_sender(frames: &[Value]) {
    let bobs: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message" || f["type"] == "message_updated")
        .filter(|f| f["payload"]["content"] != "bob is gone")
        .collect();
    assert_eq!(bobs.len(), 3, "{frames:?}");
    for frame in bobs {
        for field in ["sender_id", "username", "display_name"] {
            assert!(frame["payload"][field].is_null(), "{field}: {frame}");
        }
    }
}

#[tokio::test]
async fn messages_of_a_deleted_account_replay_without_their_sender_from_memory_and_from_the_log() {
    // Arrange: bob sent and edited while carol was away, then deletes his account.
    let mut scenario = Scenario::new().await;
    let (status, body) = scenario.memory.delete_account(&scenario.bob).await;
    assert_eq!(status, 204, "{body}");

    // Act
    let (from_memory, from_log) = scenario.replays().await;

    // Assert: the same frames, as history shows them: bob's name no sender.
    let recent = scenario.memory.hub.registry.recent();
    assert!(recent.holds_after(scenario.since), "replayed from memory");
    assert_eq!(from_memory, from_log);
    assert_bobs_name_no_sender(&from_log);
}

#[tokio::test]
async fn a_deletion_the_memory_node_did_not_hear_is_not_replayed_from_its_memory() {
    // Arrange: bob's account goes while the memory node's listener is away
    // (the deletion's announcement is a live signal, never logged: deleted
    // straight in the database, it is announced to no one).
    let mut scenario = Scenario::new().await;
    let db = pg::connect(&scenario.memory.database_url).await;
    db.execute("delete from users where id = $1", &[&scenario.bob.id])
        .await
        .unwrap();
    let killed = pg::kill_listeners(&scenario.memory.database_url).await;
    assert_eq!(killed, 2, "one listener connection per node");

    // Act
    let (from_memory, from_log) = scenario.replays().await;

    // Assert
    assert_eq!(from_memory, from_log);
    assert_bobs_name_no_sender(&from_log);
}
