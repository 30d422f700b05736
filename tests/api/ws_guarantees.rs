//! Delivery guarantees (issue 3): commit order and completeness under
//! concurrent writers, recovery with `since`, retention, slow consumers,
//! keepalive, presence, shutdown and the health endpoint.

use crate::helpers::realtime::*;
use crate::helpers::ws::Closed;
use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::MaybeTlsStream;

/// Long enough for a frame that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(600);

fn assert_strictly_increasing(seen: &[(i64, i64)]) {
    for pair in seen.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "event ids out of order or repeated: {pair:?}"
        );
    }
}

/// Sends `count` messages from `user` into `chat`; returns their ids.
async fn write_messages(
    app: Arc<TestApp>,
    user: TestUser,
    chat: i64,
    count: usize,
    pause: Duration,
) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..count {
        let m = app
            .send_message(&user, chat, &format!("{} #{i}", user.username))
            .await;
        ids.push(m["id"].as_i64().unwrap());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_seen_by_every_client_in_commit_order_exactly_once() {
    // Arrange: 8 writers and 2 listeners in one chat.
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let app = Arc::new(spawn_app().await);
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(app.register("writer").await);
    }
    let l1 = app.register("listener").await;
    let l2 = app.register("listener").await;
    let mut members: Vec<&TestUser> = writers.iter().skip(1).collect();
    members.extend([&l1, &l2]);
    let chat = app.create_group(&writers[0], "busy", &members).await;
    let mut readers = Vec::new();
    for user in [&l1, &l2] {
        let (mut ws, _) = connected(&app, user, None).await;
        readers.push(tokio::spawn(async move {
            read_messages(&mut ws, WRITERS * EACH).await
        }));
    }

    // Act: everyone writes at once.
    let tasks: Vec<_> = writers
        .iter()
        .map(|w| {
            tokio::spawn(write_messages(
                app.clone(),
                w.clone(),
                chat,
                EACH,
                Duration::ZERO,
            ))
        })
        .collect();
    let mut sent = HashSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }

    // Assert: each listener saw exactly the committed messages, in commit order.
    let committed = committed_messages(&app, chat).await;
    assert_eq!(committed.len(), WRITERS * EACH);
    let committed_ids: HashSet<i64> = committed.iter().map(|c| c.1).collect();
    assert_eq!(committed_ids, sent);
    for reader in readers {
        let seen = reader.await.unwrap();
        assert_strictly_increasing(&seen);
        assert_eq!(seen, committed, "a listener's view differs from the log");
    }
    // Event ids have no holes: consecutive commits get consecutive ids.
    for pair in committed.windows(2) {
        assert_eq!(pair[0].0 + 1, pair[1].0, "hole in event ids: {pair:?}");
    }
}

#[tokio::test]
async fn a_node_started_after_the_events_replays_them_from_memory_too() {
    // Arrange: bob misses two messages; then a node starts, and the log rows
    // vanish (as if pruned), which only the events it read at startup survive.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (_, ready) = connected(&app, &bob, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();
    let sent = [
        app.send_message(&alice, chat, "one").await,
        app.send_message(&alice, chat, "two").await,
    ];
    let started_later = spawn_node(&app.database_url, |_| {}).await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.execute("delete from events where id > $1", &[&since])
        .await
        .unwrap();

    // Act
    let (mut ws, ready) = connected(&started_later, &bob, Some(since)).await;

    // Assert
    assert_eq!(ready["recovered"], true, "{ready}");
    for message in &sent {
        let f = ws.next_of_type("message").await;
        assert_eq!(f["payload"]["message_id"], message["id"], "{f}");
    }
}

#[tokio::test]
async fn reconnecting_with_since_replays_exactly_the_missed_events_then_live_ones() {
    replays_exactly_the_missed_events_then_live_ones(default_replay_cache()).await;
}

#[tokio::test]
async fn without_a_replay_cache_since_replays_exactly_the_missed_events_from_the_log() {
    replays_exactly_the_missed_events_then_live_ones(0).await;
}

/// The server's default: replay from the node's recent events.
fn default_replay_cache() -> usize {
    chatapp::config::Config::default().ws.replay_cache_bytes
}

#[tokio::test]
async fn replay_is_served_from_the_nodes_recent_events_without_reading_the_log() {
    // Arrange: bob misses two messages; then their log rows vanish (as if
    // pruned), which only a replay from memory survives.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, ready) = connected(&app, &alice, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();
    let sent = [
        app.send_message(&alice, chat, "one").await,
        app.send_message(&alice, chat, "two").await,
    ];
    // The node has dispatched both once alice's socket heard them.
    read_messages(&mut watcher, 2).await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.execute("delete from events where id > $1", &[&since])
        .await
        .unwrap();

    // Act
    let (mut ws, ready) = connected(&app, &bob, Some(since)).await;

    // Assert
    assert_eq!(ready["recovered"], true, "{ready}");
    for message in &sent {
        let f = ws.next_of_type("message").await;
        assert_eq!(f["payload"]["message_id"], message["id"], "{f}");
    }
}

async fn replays_exactly_the_missed_events_then_live_ones(replay_cache_bytes: usize) {
    // Arrange: bob has seen three messages.
    let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&app, &bob, None).await;
    for i in 0..3 {
        app.send_message(&alice, chat, &format!("before {i}")).await;
    }
    let seen = read_messages(&mut ws, 3).await;
    let since = seen.last().unwrap().0;
    drop(ws);

    // Act: events happen while he is away, then he resumes.
    for i in 0..4 {
        app.send_message(&alice, chat, &format!("away {i}")).await;
    }
    app.put(
        &format!("/api/v1/chats/{chat}"),
        &alice.token,
        json!({"name": "renamed while away"}),
    )
    .await;
    app.send_message(&alice, chat, "away last").await;
    let (mut ws, ready) = connected(&app, &bob, Some(since)).await;

    // Assert: recovered, and the replay is exactly the log after `since`.
    assert_eq!(ready["recovered"], true, "{ready}");
    let db = crate::helpers::pg::connect(&app.database_url).await;
    let missed: Vec<(i64, String)> = db
        .query(
            "select id, kind from events where id > $1 order by id",
            &[&since],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(missed.len(), 7, "{missed:?}");
    assert_eq!(ready["last_event_id"], missed.last().unwrap().0);
    for (id, kind) in &missed {
        let f = ws.next_json().await;
        assert_eq!(f["type"], kind.as_str(), "{f}");
        assert_eq!(f["payload"]["event_id"], *id, "{f}");
    }
    // Then live events, with no duplicate of the replay in between.
    let live = app.send_message(&alice, chat, "live").await;
    let f = ws.next_json().await;
    assert_eq!(f["type"], "message", "{f}");
    assert_eq!(f["payload"]["message_id"], live["id"]);
    assert_eq!(f["payload"]["event_id"], missed.last().unwrap().0 + 1);
}

#[tokio::test]
async fn since_at_the_head_recovers_with_nothing_to_replay() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    app.send_message(&alice, chat, "old").await;
    let (_, ready) = connected(&app, &alice, None).await;
    let head = ready["last_event_id"].as_i64().unwrap();

    let (mut ws, ready) = connected(&app, &alice, Some(head)).await;

    assert_eq!(ready["recovered"], true, "{ready}");
    let live = app.send_message(&alice, chat, "new").await;
    let f = ws.next_json().await;
    assert_eq!(
        f["payload"]["message_id"], live["id"],
        "no replay expected: {f}"
    );
}

#[tokio::test]
async fn since_ahead_of_the_log_is_not_recovered() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.create_group(&alice, "g", &[]).await;

    let (_, ready) = connected(&app, &alice, Some(1_000_000)).await;

    assert_eq!(ready["recovered"], false, "{ready}");
}

#[tokio::test]
async fn replay_includes_chats_joined_while_away_and_nothing_from_chats_left() {
    replay_follows_membership_changes_while_away(default_replay_cache()).await;
}

#[tokio::test]
async fn replay_from_the_log_includes_chats_joined_while_away_and_nothing_from_chats_left() {
    replay_follows_membership_changes_while_away(0).await;
}

async fn replay_follows_membership_changes_while_away(replay_cache_bytes: usize) {
    // Arrange: bob is in `left`; he is removed from it and added to `joined` while away.
    let app = spawn_app_with(|c| c.ws.replay_cache_bytes = replay_cache_bytes).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let left = app.create_group(&alice, "left", &[&bob]).await;
    let (_, ready) = connected(&app, &bob, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();

    app.delete(
        &format!("/api/v1/chats/{left}/members/{}", bob.id),
        &alice.token,
    )
    .await;
    app.send_message(&alice, left, "after bob left").await;
    let joined = app.create_group(&alice, "joined", &[&bob]).await;
    let in_joined = app.send_message(&alice, joined, "hello bob").await;

    // Act
    let (mut ws, ready) = connected(&app, &bob, Some(since)).await;

    // Assert
    assert_eq!(ready["recovered"], true);
    assert_eq!(ready["chat_ids"], json!([joined]));
    let kinds: Vec<(String, i64)> = {
        let mut out = Vec::new();
        loop {
            let f = ws.next_json().await;
            let chat = f["payload"]["chat_id"]
                .as_i64()
                .or(f["payload"]["id"].as_i64())
                .unwrap();
            out.push((f["type"].as_str().unwrap().to_string(), chat));
            if f["payload"]["message_id"] == in_joined["id"] {
                break out;
            }
        }
    };
    assert_eq!(
        kinds,
        vec![
            ("member_removed".to_string(), left),
            ("chat_created".to_string(), joined),
            ("message".to_string(), joined),
        ]
    );
    // And live events of the new chat follow.
    let live = app.send_message(&alice, joined, "live").await;
    let f = ws.next_of_type("message").await;
    assert_eq!(f["payload"]["message_id"], live["id"]);
}

/// Waits until some session is blocked waiting for a lock on `table`.
async fn wait_for_lock_waiter(db: &tokio_postgres::Client, table: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = db
            .query_one(
                "select count(*) from pg_locks where relation = $1::text::regclass and not granted",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody waited on {table}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replay_follows_the_ready_snapshot_even_if_membership_changes_before_it_runs() {
    // Arrange: bob misses two messages in `room` while away. Replay reads the
    // log (no recent events held) and builds message frames from `messages`,
    // so holding `messages` holds the replay (sizing it, before `ready`,
    // reads `events` alone).
    let app = spawn_app_with(|c| c.ws.replay_cache_bytes = 0).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_group(&alice, "room", &[&bob]).await;
    let (ws, ready) = connected(&app, &bob, None).await;
    drop(ws);
    let since = ready["last_event_id"].as_i64().unwrap();
    let missed = [
        app.send_message(&alice, room, "one").await["id"].clone(),
        app.send_message(&alice, room, "two").await["id"].clone(),
    ];
    // Hold the messages so the replay blocks right after `ready`.
    let mut holder = crate::helpers::pg::connect(&app.database_url).await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("lock table messages in access exclusive mode")
        .await
        .unwrap();

    // Act: bob resumes; while his replay waits, he is removed from `room`
    // (his presence snapshot comes after the replay: not waited for here).
    let mut ws = app.connect_ws(&bob, Some(since)).await;
    let ready = ws.next_json().await["payload"].clone();
    assert_eq!(ready["recovered"], true);
    assert_eq!(ready["chat_ids"], json!([room]));
    let observer = crate::helpers::pg::connect(&app.database_url).await;
    wait_for_lock_waiter(&observer, "messages").await;
    let removal = chatapp::chats::members::leave_chat(&tx, room, bob.id, alice.id)
        .await
        .unwrap();
    chatapp::events::emit(&tx, &removal).await.unwrap();
    tx.commit().await.unwrap();

    // Assert: what `ready` promised (bob was in `room`) is replayed, then the removal.
    let mut frames = Vec::new();
    loop {
        let f = ws.next_json().await;
        let kind = f["type"].as_str().unwrap().to_string();
        if kind == "presence_snapshot" {
            continue;
        }
        frames.push((kind.clone(), f["payload"]["message_id"].clone()));
        if kind == "member_removed" {
            break;
        }
    }
    assert_eq!(
        frames,
        vec![
            ("message".to_string(), missed[0].clone()),
            ("message".to_string(), missed[1].clone()),
            ("member_removed".to_string(), Value::Null),
        ]
    );
    ws.expect_no("system", QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_with_since_in_a_loop_sees_every_message_once_in_order() {
    // Arrange
    const WRITERS: usize = 4;
    const EACH: usize = 30;
    let app = Arc::new(spawn_app().await);
    let reader = app.register("reader").await;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(app.register("writer").await);
    }
    let refs: Vec<&TestUser> = writers.iter().chain([&reader]).collect();
    let chat = app.create_group(&writers[0], "busy", &refs[1..]).await;
    let (ws, ready) = connected(&app, &reader, None).await;
    drop(ws);
    let mut since = ready["last_event_id"].as_i64().unwrap();

    // Act: writers send while the reader keeps dropping and resuming.
    let tasks: Vec<_> = writers
        .iter()
        .map(|w| {
            tokio::spawn(write_messages(
                app.clone(),
                w.clone(),
                chat,
                EACH,
                Duration::from_millis(3),
            ))
        })
        .collect();
    let mut rng = Rng::seeded();
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < WRITERS * EACH {
        assert!(tokio::time::Instant::now() < deadline, "gave up");
        let (mut ws, ready) = connected(&app, &reader, Some(since)).await;
        assert_eq!(ready["recovered"], true, "{ready}");
        reconnects += 1;
        let take = 1 + rng.below(12);
        for _ in 0..take {
            let Some(f) = ws.next_json_within(Duration::from_secs(5)).await else {
                break;
            };
            if let Some(id) = f["payload"]["event_id"].as_i64() {
                assert!(
                    id > since,
                    "duplicate or old event after since={since}: {f}"
                );
                since = id;
            }
            if f["type"] == "message" {
                seen.push(message_ids(&f));
            }
        }
        if rng.below(2) == 0 {
            let _ = ws.stream.close(None).await;
        }
        drop(ws);
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Assert
    let committed = committed_messages(&app, chat).await;
    assert_eq!(committed.len(), WRITERS * EACH);
    assert_strictly_increasing(&seen);
    assert_eq!(seen, committed, "after {reconnects} reconnects");
}

#[tokio::test]
async fn a_notification_carries_the_frame_last_as_it_is_so_listeners_need_not_read_the_log() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let message = app.send_message(&alice, chat, "hello").await;
    let (mut ws, _) = connected(&app, &bob, None).await;
    let (_session, mut notices) =
        pg::listen(&app.database_url, chatapp::events::EVENTS_CHANNEL).await;

    // Act: an event that shows no message.
    let emoji = "%F0%9F%8D%95"; // 🍕
    let path = format!("/api/v1/messages/{}/reactions/{emoji}", message["id"]);
    let (status, body) = app
        .request(Method::PUT, &path, Some(&alice.token), None)
        .await;
    assert!(status.is_success(), "{status} {body}");

    // Assert: the payload is JSON (what nodes of the previous layout read)
    // that ends with the frame the members get, after the marker.
    let frame = ws.next_of_type("reaction_added").await;
    let payload = notices.recv().await.expect("a notification");
    let whole: Value = serde_json::from_str(&payload).expect("the payload is JSON");
    assert_eq!(whole["frame_last"], frame, "{payload}");
    let (_, last) = payload
        .split_once(chatapp::events::NOTICE_FRAME_MARKER)
        .expect("the frame's marker");
    let carried: Value = serde_json::from_str(last.strip_suffix('}').unwrap()).unwrap();
    assert_eq!(carried, frame);
}

#[tokio::test]
async fn a_sent_messages_notification_carries_its_fields_last_and_members_get_the_frame_built_from_them()
 {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&app, &bob, None).await;
    let (_session, mut notices) =
        pg::listen(&app.database_url, chatapp::events::EVENTS_CHANNEL).await;

    // Act
    let sent = app
        .send_message(&alice, chat, "hello \"sent_last\" : [{}}")
        .await;

    // Assert: the payload is JSON that ends with the message's fields, after
    // the marker; its body made from them is the REST body (without the
    // reader's own part, its reactions), and the frame is built from that.
    let frame = ws.next_of_type("message").await;
    let payload = notices.recv().await.expect("a notification");
    let whole: Value = serde_json::from_str(&payload).expect("the payload is JSON");
    assert!(whole["sent_last"].is_array(), "{payload}");
    assert!(whole.get("frame_last").is_none(), "{payload}");
    assert!(whole.get("body_last").is_none(), "{payload}");
    let (_, last) = payload
        .split_once(chatapp::events::NOTICE_SENT_MARKER)
        .expect("the fields' marker");
    let body = chatapp::message_json::sent_body(last.strip_suffix('}').unwrap()).unwrap();
    let mut rest = sent.clone();
    rest.as_object_mut().unwrap().remove("reactions");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), rest);
    let built = chatapp::message_json::message_frame(
        "message",
        frame["payload"]["event_id"].as_i64().unwrap(),
        &body,
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&built).unwrap(), frame);
    assert_eq!(frame["payload"]["content"], sent["content"]);
}

#[tokio::test]
async fn an_edited_messages_notification_carries_its_body_last_and_members_get_the_frame_built_from_it()
 {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let sent = app.send_message(&alice, chat, "hello").await;
    let (mut ws, _) = connected(&app, &bob, None).await;
    let (_session, mut notices) =
        pg::listen(&app.database_url, chatapp::events::EVENTS_CHANNEL).await;

    // Act
    let path = format!("/api/v1/messages/{}", sent["id"]);
    let (status, edited) = app
        .put(
            &path,
            &alice.token,
            json!({ "content": "hello \"body_last\" : {}}" }),
        )
        .await;
    assert_eq!(status, 200, "{edited}");

    // Assert: the payload is JSON that ends with the message's REST body
    // (without the reader's own part, its reactions), after the marker; the
    // frame is built from it.
    let frame = ws.next_of_type("message_updated").await;
    let payload = notices.recv().await.expect("a notification");
    let whole: Value = serde_json::from_str(&payload).expect("the payload is JSON");
    let mut body = edited.clone();
    body.as_object_mut().unwrap().remove("reactions");
    assert_eq!(whole["body_last"], body, "{payload}");
    assert!(whole.get("frame_last").is_none(), "{payload}");
    let (_, last) = payload
        .split_once(chatapp::events::NOTICE_BODY_MARKER)
        .expect("the body's marker");
    let built = chatapp::message_json::message_frame(
        "message_updated",
        frame["payload"]["event_id"].as_i64().unwrap(),
        last.strip_suffix('}').unwrap(),
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&built).unwrap(), frame);
    assert_eq!(frame["payload"]["content"], edited["content"]);
}

#[tokio::test]
async fn events_too_large_for_a_notify_payload_are_delivered_in_order() {
    // Arrange: messages may be far larger than PostgreSQL's 8000-byte NOTIFY limit.
    let app = spawn_app_with(|c| c.limits.message_chars = 20_000).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&app, &bob, None).await;
    let contents = [
        "small".to_string(),
        "L".repeat(20_000),
        "small again".to_string(),
        "M".repeat(9_000),
        "last".to_string(),
    ];

    // Act
    for c in &contents {
        app.send_message(&alice, chat, c).await;
    }

    // Assert
    let mut last = 0;
    for c in &contents {
        let f = ws.next_of_type("message").await;
        assert_eq!(f["payload"]["content"].as_str().unwrap(), c.as_str());
        let id = f["payload"]["event_id"].as_i64().unwrap();
        assert!(id > last, "out of order");
        last = id;
    }
    let edited = app
        .put(
            &format!(
                "/api/v1/messages/{}",
                app.send_message(&alice, chat, "x").await["id"]
            ),
            &alice.token,
            json!({"content": "E".repeat(20_000)}),
        )
        .await;
    assert_eq!(edited.0, 200);
    let f = ws.next_of_type("message_updated").await;
    assert_eq!(f["payload"]["content"].as_str().unwrap().len(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_oversized_messages_are_seen_in_commit_order_exactly_once() {
    // Arrange: concurrent sends share commits, so one burst of notifications
    // mixes whole events with ones too large to carry their frame (read back
    // from the log in the middle of the burst).
    const WRITERS: usize = 4;
    const EACH: usize = 12;
    let app = Arc::new(spawn_app_with(|c| c.limits.message_chars = 20_000).await);
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(app.register("writer").await);
    }
    let listener = app.register("listener").await;
    let mut members: Vec<&TestUser> = writers.iter().skip(1).collect();
    members.push(&listener);
    let chat = app.create_group(&writers[0], "big", &members).await;
    let (mut ws, _) = connected(&app, &listener, None).await;
    let reader = tokio::spawn(async move { read_messages(&mut ws, WRITERS * EACH).await });

    // Act
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(w, user)| {
            let app = app.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let content = if (w + i) % 3 == 0 {
                        format!("{w} {i} {}", "L".repeat(9_000))
                    } else {
                        format!("{w} {i}")
                    };
                    app.send_message(&user, chat, &content).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    // Assert
    let committed = committed_messages(&app, chat).await;
    assert_eq!(committed.len(), WRITERS * EACH);
    let seen = reader.await.unwrap();
    assert_strictly_increasing(&seen);
    assert_eq!(seen, committed, "the listener's view differs from the log");
}

#[tokio::test]
async fn a_listener_that_loses_its_database_connection_catches_up_from_the_log() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&app, &bob, None).await;

    // Act: kill the node's LISTEN connection, then write while it is away.
    let killed = crate::helpers::pg::kill_listeners(&app.database_url).await;
    assert_eq!(killed, 1, "exactly one listener connection per node");
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            app.send_message(&alice, chat, &format!("during outage {i}"))
                .await["id"]
                .as_i64()
                .unwrap(),
        );
    }

    // Assert: every one arrives once, in order, as soon as the listener is
    // back (no later event is needed to reveal the gap).
    let seen = read_messages(&mut ws, sent.len()).await;
    assert_strictly_increasing(&seen);
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), sent);
    let live = app.send_message(&alice, chat, "live").await;
    let f = ws.next_of_type("message").await;
    assert_eq!(f["payload"]["message_id"], live["id"]);
}

#[tokio::test]
async fn since_older_than_the_retention_is_not_recovered() {
    // Arrange: events are kept one second and pruned every second.
    let app = spawn_app_with(|c| {
        c.ws.event_retention_secs = 1;
        c.ws.prune_interval_secs = 1;
    })
    .await;
    let alice = app.register("alice").await;
    let chat = app.create_group(&alice, "g", &[]).await;
    app.send_message(&alice, chat, "soon forgotten").await;
    let (_, ready) = connected(&app, &alice, None).await;
    let head = ready["last_event_id"].as_i64().unwrap();
    let db = crate::helpers::pg::connect(&app.database_url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pruned: i64 = db
            .query_one("select pruned_through from event_seq", &[])
            .await
            .unwrap()
            .get(0);
        if pruned >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events were never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: i64 = db
        .query_one("select count(*) from events where id <= $1", &[&head])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "pruned events are deleted");

    // Act
    let (mut stale, ready) = connected(&app, &alice, Some(0)).await;

    // Assert: the client must re-fetch over REST.
    assert_eq!(ready["recovered"], false, "{ready}");
    stale.expect_no("message", QUIET).await;
    // A since at the pruned head lost nothing.
    let (_, ready) = connected(&app, &alice, Some(head)).await;
    assert_eq!(ready["recovered"], true, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4008_while_others_get_everything() {
    // Arrange: small queues (room for a burst of 4 concurrent senders on a
    // busy machine, so only a client that really stops reading overflows);
    // a slow client with a tiny receive buffer. The close frame waits behind
    // what the slow client has not read until the test reads it, after the
    // sends: the flush timeout must outlast them on a loaded machine.
    let app = Arc::new(
        spawn_app_with(|c| {
            c.ws.queue_frames = 64;
            c.ws.queue_bytes = 128 * 1024;
            c.ws.close_flush_timeout_ms = 30_000;
            // No pings: the slow client would answer the queued ones while
            // reading towards the close frame, after the server has closed
            // the socket, and the reset would discard the close frame.
            c.ws.ping_interval_ms = 300_000;
            c.ws.idle_timeout_ms = 600_000;
        })
        .await,
    );
    let alice = app.register("alice").await;
    let slow_user = app.register("slow").await;
    let fast_user = app.register("fast").await;
    let chat = app
        .create_group(&alice, "g", &[&slow_user, &fast_user])
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/ws?token={}", app.addr, slow_user.token);
    let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("slow client connects");
    let mut slow = WsClient::from_stream(stream);
    slow.next_of_type("ready").await;
    let (mut fast, _) = connected(&app, &fast_user, None).await;
    let fast_reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let f = fast.next_of_type("message").await;
            if f["payload"]["content"] == "END" {
                return ids;
            }
            ids.push(f["payload"]["message_id"].as_i64().unwrap());
        }
    });

    // Act: large messages until the slow client is cut off (bounded).
    let big = "x".repeat(3000);
    let mut sent = Vec::new();
    let mut cut_off = false;
    for _ in 0..60 {
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let (app, alice, big) = (app.clone(), alice.clone(), big.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..10 {
                        ids.push(
                            app.send_message(&alice, chat, &big).await["id"]
                                .as_i64()
                                .unwrap(),
                        );
                    }
                    ids
                })
            })
            .collect();
        for t in batch {
            sent.extend(t.await.unwrap());
        }
        if app.ws_health().await["slow_consumer_disconnects"] == 1 {
            cut_off = true;
            break;
        }
    }
    app.send_message(&alice, chat, "END").await;

    // Assert: the slow client was cut off with 4008 ...
    assert!(cut_off, "the slow client was never disconnected");
    // The server closes with 4008 (counted above); about one run in ten on a
    // loaded machine the client sees the connection reset before it has read
    // the close frame, so the code is checked where it was decided.
    let closed = slow.closed().await;
    assert!(
        matches!(closed, Closed::Code(4008) | Closed::Dropped),
        "{closed:?}"
    );
    // ... while the other client got every message, in order.
    let got = fast_reader.await.unwrap();
    let mut expected = sent.clone();
    expected.sort_unstable();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    assert_eq!(got_sorted, expected, "the fast client missed messages");
    let committed: Vec<i64> = committed_messages(&app, chat)
        .await
        .into_iter()
        .map(|c| c.1)
        .filter(|id| sent.contains(id))
        .collect();
    assert_eq!(
        got, committed,
        "the fast client saw them out of commit order"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_while_a_reading_client_stays_connected() {
    // Arrange: ping every 200 ms, drop after 1 s of silence.
    let app = spawn_app_with(|c| {
        c.ws.ping_interval_ms = 200;
        c.ws.idle_timeout_ms = 1000;
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut silent, _) = connected(&app, &alice, None).await;
    let (mut reading, _) = connected(&app, &bob, None).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stop_rx => return (reading, pings),
                msg = reading.stream.next() => match msg {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => panic!("reading client closed: {f:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("reading client lost: {other:?}"),
                },
            }
        }
    });

    // Act: wait until the server has dropped one connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = app.ws_health().await;
        if health["connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody was dropped: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the remaining one time to outlive the idle timeout too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(()).unwrap();
    let (mut reading, pings) = reader.await.unwrap();

    // Assert: the server pinged the reading client, which answered and stayed.
    assert!(pings >= 3, "server pings: {pings}");
    assert_eq!(app.ws_health().await["connections"], 1);
    reading.send_json(json!({"type": "ping"})).await;
    assert_eq!(reading.next_of_type("pong").await["type"], "pong");
    // The silent one's connection is over (a close frame, or a reset when it
    // finally answers the queued pings on a socket the server already closed).
    let _ = silent.closed().await;
}

#[test]
fn keepalive_and_retention_defaults_match_the_spec() {
    let ws = chatapp::config::Config::default().ws;
    assert_eq!(ws.ping_interval_ms, 30_000);
    assert_eq!(ws.idle_timeout_ms, 75_000);
    assert_eq!(ws.event_retention_secs, 7 * 24 * 3600);
    assert_eq!(ws.max_frame_bytes, 64 * 1024);
    assert_eq!(ws.typing_interval_ms, 2_000);
    // A dead node's users go offline within 60 s: timeout plus one heartbeat.
    assert!(ws.presence_timeout_secs + ws.presence_heartbeat_secs <= 60);
}

#[tokio::test]
async fn presence_goes_online_and_offline_to_users_sharing_a_chat() {
    // Arrange: alice shares a chat with bob; carol does not.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.create_group(&alice, "g", &[&bob]).await;
    app.create_group(&carol, "alone", &[]).await;
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut c, _) = connected(&app, &carol, None).await;

    // Act: bob opens two connections.
    let (mut b1, _) = connected(&app, &bob, None).await;
    let online = a.next_of_type("presence").await;
    let (b2, _) = connected(&app, &bob, None).await;

    // Assert
    assert_eq!(online["payload"]["user_id"], bob.id, "{online}");
    assert_eq!(online["payload"]["online"], true, "{online}");
    c.expect_no("presence", Duration::from_millis(100)).await;

    // Act: closing one of two connections changes nothing.
    let _ = b1.stream.close(None).await;
    drop(b1);
    a.expect_no("presence", QUIET).await;

    // Act: closing the last one.
    drop(b2);
    let offline = a.next_of_type("presence").await;

    // Assert
    assert_eq!(offline["payload"]["user_id"], bob.id, "{offline}");
    assert_eq!(offline["payload"]["online"], false, "{offline}");
    let last_seen = offline["payload"]["last_seen"].clone();
    assert!(last_seen.is_string(), "{offline}");
    let (status, user) = app
        .get(&format!("/api/v1/users/{}", bob.id), &alice.token)
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["last_seen"], last_seen);
    c.expect_no("presence", Duration::from_millis(100)).await;
}

/// A server with a 1 s presence heartbeat and 2 s timeout; bob shares a group
/// with alice, whose open socket (returned) watches his presence.
async fn presence_watch() -> (TestApp, TestUser, WsClient) {
    let app = spawn_app_with(|c| {
        c.ws.presence_heartbeat_secs = 1;
        c.ws.presence_timeout_secs = 2;
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.create_group(&alice, "g", &[&bob]).await;
    let (a, _) = connected(&app, &alice, None).await;
    (app, bob, a)
}

#[tokio::test]
async fn users_of_a_node_that_died_without_goodbye_are_shown_offline() {
    // Arrange: a peer node holds bob's session and stopped heartbeating long ago.
    let (app, bob, mut a) = presence_watch().await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.batch_execute(&format!(
        "insert into presence_nodes (node_id, heartbeat_at) values ('ghost', now() - interval '1 hour');
         insert into presence_sessions (node_id, user_id) values ('ghost', {});
         update users set last_seen = null where id = {};",
        bob.id, bob.id
    ))
    .await
    .unwrap();

    // Act: the live node's next heartbeat reaps the dead one.
    let offline = a.next_of_type("presence").await;

    // Assert
    assert_eq!(offline["payload"]["user_id"], bob.id, "{offline}");
    assert_eq!(offline["payload"]["online"], false, "{offline}");
    assert!(offline["payload"]["last_seen"].is_string(), "{offline}");
    let row = db
        .query_one(
            "select last_seen is not null,
                    exists(select 1 from presence_nodes where node_id = 'ghost'),
                    exists(select 1 from presence_sessions where node_id = 'ghost')
             from users where id = $1",
            &[&bob.id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "bob's last_seen was set");
    assert!(!row.get::<_, bool>(1), "the dead node was removed");
    assert!(!row.get::<_, bool>(2), "its sessions were removed");
}

#[tokio::test]
async fn a_user_still_connected_elsewhere_stays_online_when_a_dead_node_is_reaped() {
    // Arrange: bob is connected here and also had a session on a dead node.
    let (app, bob, mut a) = presence_watch().await;
    let (_b, _) = connected(&app, &bob, None).await;
    let online = a.next_of_type("presence").await;
    assert_eq!(online["payload"]["online"], true);
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.batch_execute(&format!(
        "insert into presence_nodes (node_id, heartbeat_at) values ('ghost', now() - interval '1 hour');
         insert into presence_sessions (node_id, user_id) values ('ghost', {});",
        bob.id
    ))
    .await
    .unwrap();

    // Act: wait until the ghost is reaped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let gone: bool = db
            .query_one(
                "select not exists(select 1 from presence_nodes where node_id = 'ghost')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if gone {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert
    a.expect_no("presence", QUIET).await;
}

#[tokio::test]
async fn a_stalled_node_reaped_by_its_peers_shows_its_users_online_again_when_it_rejoins() {
    // Arrange: bob is connected; alice watches his presence.
    let (app, bob, mut a) = presence_watch().await;
    let (_b, _) = connected(&app, &bob, None).await;
    assert_eq!(a.next_of_type("presence").await["payload"]["online"], true);

    // Act: a peer reaps this node (as after a heartbeat stall), marking bob offline.
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.execute(
        "delete from presence_nodes where node_id = $1",
        &[&app.hub.node_id],
    )
    .await
    .unwrap();
    db.execute(
        "update users set last_seen = now() where id = $1",
        &[&bob.id],
    )
    .await
    .unwrap();

    // Assert: its next heartbeat brings bob back, and his watchers hear it.
    let back = a.next_of_type("presence").await;
    assert_eq!(back["payload"]["user_id"], bob.id, "{back}");
    assert_eq!(back["payload"]["online"], true, "{back}");
    let sessions: i64 = db
        .query_one(
            "select count(*) from presence_sessions where user_id = $1",
            &[&bob.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 1);
}

#[tokio::test]
async fn a_socket_upgraded_while_shutdown_starts_is_closed_with_1001_too() {
    // Arrange: alice's upgrade request is held in authentication (the users
    // table is locked) until shutdown has begun.
    let mut app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut holder = crate::helpers::pg::connect(&app.database_url).await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("lock table users in access exclusive mode")
        .await
        .unwrap();
    let (addr, token) = (app.addr, alice.token.clone());
    let connecting = tokio::spawn(async move { WsClient::connect(addr, &token, None).await });
    let observer = crate::helpers::pg::connect(&app.database_url).await;
    wait_for_lock_waiter(&observer, "users").await;

    // Act: shutdown starts (it closes the sockets it knows of), then the upgrade completes.
    let hub = app.hub.clone();
    let stopping = tokio::spawn(async move { app.stop().await });
    while !hub.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();
    let mut ws = connecting.await.unwrap();

    // Assert
    assert_eq!(ws.closed().await, Closed::Code(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001_and_leaves_its_users_to_the_grace() {
    // Arrange
    let mut app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.create_group(&alice, "g", &[&bob]).await;
    let (mut a, _) = connected(&app, &alice, None).await;
    let (mut b, _) = connected(&app, &bob, None).await;
    // Both sessions are recorded once alice hears bob come online.
    a.next_of_type("presence").await;
    let database_url = app.database_url.clone();
    let ws = chatapp::config::WsConfig::default();
    let grace = chatapp::ws::presence::drain_grace(&ws).as_secs_f64();

    // Act
    let ((), a_closed, b_closed) = tokio::join!(app.stop(), a.closed(), b.closed());

    // Assert: the sessions stay, shown online, and the node is due to be
    // reaped by its peers once the grace is over, not a presence timeout.
    assert_eq!(a_closed, Closed::Code(1001));
    assert_eq!(b_closed, Closed::Code(1001));
    let db = crate::helpers::pg::connect(&database_url).await;
    let row = db
        .query_one(
            "select (select count(*) from presence_sessions where user_id = any($1)),
                    (select extract(epoch from max(heartbeat_at) - now())::float8
                            + $2 from presence_nodes)",
            &[&vec![alice.id, bob.id], &(ws.presence_timeout_secs as f64)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2, "both sessions kept");
    let reaped_in: f64 = row.get(1);
    assert!(
        reaped_in <= grace + 0.5,
        "reaped in {reaped_in} s, the grace being {grace} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_frames_before_closing_with_1001() {
    // Arrange: a client with a tiny receive buffer that is not reading, so
    // the server holds frames for it in its queue.
    // Messages larger than the kernel's socket buffers can absorb (4 MiB).
    const COUNT: usize = 150;
    let mut app = spawn_app_with(|c| {
        c.ws.close_flush_timeout_ms = 10_000;
        c.ws.queue_bytes = 64 << 20;
        c.limits.message_chars = 60_000;
        c.limits.body_bytes = 128 * 1024;
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/ws?token={}", app.addr, bob.token);
    let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("client connects");
    let mut ws = WsClient::from_stream(stream);
    ws.next_of_type("ready").await;
    let before = app.ws_health().await["events_delivered"].as_u64().unwrap();
    let big = "y".repeat(60_000);
    let mut sent = Vec::new();
    for _ in 0..COUNT {
        sent.push(app.send_message(&alice, chat, &big).await["id"].clone());
    }
    // Every message has been handed to the connection (queued or written).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.ws_health().await["events_delivered"].as_u64().unwrap() < before + COUNT as u64 {
        assert!(tokio::time::Instant::now() < deadline, "not dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: stop the server while the client starts reading, and pings it
    // once the server has stopped reading: the server must not close the
    // socket with those bytes unread, which resets it and loses the rest.
    let read_all = async {
        let mut got = Vec::new();
        loop {
            use futures_util::{SinkExt, StreamExt};
            match ws.stream.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let f = crate::helpers::ws::server_frame(&t);
                    if f["type"] == "message" {
                        got.push(f["payload"]["message_id"].clone());
                    }
                    if got.len() == 1 {
                        let ping = tokio_tungstenite::tungstenite::Message::Ping(vec![7].into());
                        ws.stream.send(ping).await.expect("the client pings");
                    }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    // Sends the answer tungstenite queued, as a browser does.
                    let _ = ws.stream.flush().await;
                    return (got, f.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    };
    let ((), (got, code)) = tokio::join!(app.stop(), read_all);

    // Assert: everything queued arrived, then the close frame.
    assert_eq!(code, Some(1001));
    assert_eq!(got.len(), sent.len(), "queued frames were dropped");
    assert_eq!(got, sent);
}

#[tokio::test]
async fn ws_health_reports_connections_users_rooms_and_deliveries() {
    // Arrange
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    app.create_group(&alice, "solo", &[]).await;
    let before = app.ws_health().await;

    // Act
    let (_a1, _) = connected(&app, &alice, None).await;
    let (_a2, _) = connected(&app, &alice, None).await;
    let (mut b, _) = connected(&app, &bob, None).await;
    app.send_message(&alice, chat, "counted").await;
    b.next_of_type("message").await;
    let during = app.ws_health().await;

    // Assert
    assert_eq!(before["status"], "ok", "{before}");
    assert!(
        before["node_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{before}"
    );
    assert_eq!(before["connections"], 0, "{before}");
    assert_eq!(before["connected_users"], 0);
    assert_eq!(before["active_rooms"], 0);
    assert_eq!(before["slow_consumer_disconnects"], 0);
    assert_eq!(during["connections"], 3, "{during}");
    assert_eq!(during["connected_users"], 2, "{during}");
    assert_eq!(during["active_rooms"], 2, "{during}");
    assert_eq!(during["node_id"], before["node_id"]);
    let delivered = |h: &Value| h["events_delivered"].as_u64().expect("events_delivered");
    assert!(
        delivered(&during) >= delivered(&before) + 3,
        "one message to three connections: {before} -> {during}"
    );
    // Closing a connection is reflected.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = app.ws_health().await;
        if h["connections"] == 2 && h["connected_users"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
