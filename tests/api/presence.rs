//! Presence at scale (issue 23): a connection opens with the presence of
//! the people it shares chats with (`presence_snapshot`); `GET
//! /chats/:id/presence` and members' `online` answer on demand, whichever
//! node a user is connected to; chats above `ws.presence_max_members` get
//! no per-user presence frames.

use crate::helpers::process::{TempDir, signal, start_server};
use crate::helpers::realtime::{await_sessions, connected, opened};
use crate::helpers::ws::Closed;
use crate::helpers::*;
use crate::ops::{scrape, value, wait_above};
use serde_json::{Value, json};
use std::time::Duration;

/// Long enough for a frame that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(600);

async fn register_all<const N: usize>(app: &TestApp, names: [&str; N]) -> [TestUser; N] {
    let mut users = Vec::new();
    for name in names {
        users.push(app.register(name).await);
    }
    users.try_into().unwrap()
}

/// The next `presence` frame about `user` (others' are skipped).
async fn presence_of(ws: &mut WsClient, user: &TestUser) -> Value {
    loop {
        let frame = ws.next_of_type("presence").await;
        if frame["payload"]["user_id"] == user.id {
            return frame["payload"].clone();
        }
    }
}

/// `GET /api/v1/chats/:id/presence` as `viewer`, which must succeed.
async fn chat_presence(app: &TestApp, viewer: &TestUser, chat: i64) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/chats/{chat}/presence"), &viewer.token)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `{user_id: online}` of a list of members.
fn online_of(members: &Value) -> Vec<(i64, bool)> {
    let mut out: Vec<(i64, bool)> = members
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {members}"))
        .iter()
        .map(|m| {
            (
                m["user_id"].as_i64().unwrap(),
                m["online"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort();
    ids
}

/// alice and bob, who share a DM, both connected, and alice's connection
/// told that bob came online: bob, alice's socket and bob's.
async fn both_online_in_a_dm(app: &TestApp) -> (TestUser, WsClient, WsClient) {
    let [alice, bob] = register_all(app, ["alice", "bob"]).await;
    app.create_dm(&alice, &bob).await;
    let (mut watcher, _) = connected(app, &alice, None).await;
    await_sessions(&app.database_url, &alice, 1).await;
    let (bobs_socket, _) = connected(app, &bob, None).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], true);
    (bob, watcher, bobs_socket)
}

/// Puts `table` out of the server's reach (renamed: every statement that
/// reads or writes it fails with an error no retry mends), or back.
async fn table_reachable(db: &tokio_postgres::Client, table: &str, reachable: bool) {
    let away = format!("{table}_away");
    let (from, to) = if reachable {
        (away.as_str(), table)
    } else {
        (table, away.as_str())
    };
    db.batch_execute(&format!("alter table {from} rename to {to}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_connection_opens_with_the_presence_of_everyone_it_shares_a_chat_with() {
    // Arrange: alice shares chats with bob (online), dave (was online) and
    // carol (never connected); erin is online but shares no chat with her.
    let app = spawn_app().await;
    let [alice, bob, carol, dave, erin] =
        register_all(&app, ["alice", "bob", "carol", "dave", "erin"]).await;
    app.create_group(&alice, "g", &[&bob, &carol]).await;
    app.create_dm(&dave, &alice).await;
    app.create_group(&erin, "elsewhere", &[]).await;
    let (_bob, _) = connected(&app, &bob, None).await;
    let (_erin, _) = connected(&app, &erin, None).await;
    let (dave_ws, _) = connected(&app, &dave, None).await;
    await_sessions(&app.database_url, &dave, 1).await;
    drop(dave_ws);
    await_sessions(&app.database_url, &dave, 0).await;
    await_sessions(&app.database_url, &bob, 1).await;
    let (_, dave_now) = app
        .get(&format!("/api/v1/users/{}", dave.id), &alice.token)
        .await;
    assert!(dave_now["last_seen"].is_string(), "{dave_now}");

    // Act
    let (_ws, _, snapshot) = opened(app.addr, &alice, None).await;

    // Assert: each once, online first, then the most recently seen; not
    // alice herself, not erin.
    assert_eq!(
        snapshot,
        json!({"users": [
            {"user_id": bob.id, "online": true, "last_seen": null},
            {"user_id": dave.id, "online": false, "last_seen": dave_now["last_seen"]},
            {"user_id": carol.id, "online": false, "last_seen": null},
        ], "truncated": false})
    );
}

/// The ids and online states of a snapshot's users, sorted by id.
fn listed(snapshot: &Value) -> Vec<(i64, bool)> {
    online_of(&snapshot["users"])
}

/// alice shares a group with bob and carol, and a DM with dave; carol,
/// connected, has blocked bob.
async fn four_with_a_block(app: &TestApp) -> [TestUser; 4] {
    let [alice, bob, carol, dave] = register_all(app, ["alice", "bob", "carol", "dave"]).await;
    app.create_group(&alice, "g", &[&bob, &carol]).await;
    app.create_dm(&alice, &dave).await;
    let (status, body) = app
        .put(
            &format!("/api/v1/users/{}/block", bob.id),
            &carol.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    [alice, bob, carol, dave]
}

/// What alice, bob and dave of [`four_with_a_block`] must be told: each
/// their own peers; carol (online) is online to alice, offline to bob.
fn assert_own_snapshots(
    [alice, bob, carol, dave]: &[TestUser; 4],
    alice_s: &[&Value],
    bob_s: &Value,
    dave_s: &Value,
) {
    let ids = |s: &Value| listed(s).iter().map(|(id, _)| *id).collect::<Vec<_>>();
    for alice_s in alice_s {
        assert_eq!(
            ids(alice_s),
            sorted(vec![bob.id, carol.id, dave.id]),
            "{alice_s}"
        );
        assert!(listed(alice_s).contains(&(carol.id, true)), "{alice_s}");
    }
    assert_eq!(ids(bob_s), sorted(vec![alice.id, carol.id]), "{bob_s}");
    assert!(listed(bob_s).contains(&(carol.id, false)), "{bob_s}");
    assert_eq!(ids(dave_s), vec![alice.id], "{dave_s}");
    for snapshot in alice_s.iter().copied().chain([bob_s, dave_s]) {
        assert_eq!(snapshot["truncated"], false, "{snapshot}");
    }
}

/// [`four_with_a_block`] with carol online (her socket, to keep open), and a
/// node's start-read connections to read snapshots with, outside a server.
async fn carol_online_and_start_reads(
    app: &TestApp,
) -> ([TestUser; 4], WsClient, chatapp::ws::starts::StartReads) {
    let users = four_with_a_block(app).await;
    let (carol, _) = connected(app, &users[2], None).await;
    await_sessions(&app.database_url, &users[2], 1).await;
    let database = chatapp::config::DatabaseConfig {
        url: app.database_url.clone(),
        ..Default::default()
    };
    let reads = chatapp::ws::starts::StartReads::new(&database, 1).unwrap();
    (users, carol, reads)
}

#[tokio::test]
async fn snapshots_read_in_one_batch_are_each_users_own() {
    // Arrange
    let app = spawn_app().await;
    let (users, _carol, reads) = carol_online_and_start_reads(&app).await;
    let [alice, bob, _, dave] = &users;

    // Act: one batch, alice in it twice.
    let frames = chatapp::ws::presence::snapshot::read_batch(
        &reads,
        &chatapp::ws::presence::View::default(),
        &[alice.id, bob.id, alice.id, dave.id],
        1_000,
    )
    .await
    .unwrap();

    // Assert
    assert_eq!(frames.len(), 3, "one frame per user");
    let payload = |user: &TestUser| {
        let frame: Value = serde_json::from_str(&frames[&user.id]).unwrap();
        assert_eq!(frame["type"], "presence_snapshot", "{frame}");
        frame["payload"].clone()
    };
    assert_own_snapshots(&users, &[&payload(alice)], &payload(bob), &payload(dave));
}

#[tokio::test]
async fn every_connection_waiting_in_one_batch_gets_its_users_snapshot() {
    // Arrange
    let app = spawn_app().await;
    let (users, _carol, reads) = carol_online_and_start_reads(&app).await;
    let [alice, bob, _, dave] = &users;
    let (snapshots, requests) = chatapp::ws::presence::Snapshots::new();
    let (_running, shutdown) = tokio::sync::watch::channel(false);

    // Act: all asked before the reader starts, so its first batch takes
    // them all, alice's two connections among them.
    let asked = [alice, alice, bob, dave].map(|user| snapshots.frame(user.id));
    tokio::spawn(chatapp::ws::presence::snapshot::serve(
        std::sync::Arc::new(reads),
        std::sync::Arc::default(),
        requests,
        1_000,
        shutdown,
    ));
    let [alice_1, alice_2, bob_s, dave_s] = asked;
    let (alice_1, alice_2, bob_s, dave_s) = tokio::join!(alice_1, alice_2, bob_s, dave_s);

    // Assert
    let payload = |frame: Option<String>| {
        let frame: Value = serde_json::from_str(&frame.expect("a snapshot")).unwrap();
        assert_eq!(frame["type"], "presence_snapshot", "{frame}");
        frame["payload"].clone()
    };
    let (alice_1, alice_2) = (payload(alice_1), payload(alice_2));
    assert_own_snapshots(
        &users,
        &[&alice_1, &alice_2],
        &payload(bob_s),
        &payload(dave_s),
    );
}

#[tokio::test]
async fn connections_opening_together_each_get_their_own_snapshot() {
    // Arrange
    let app = spawn_app().await;
    let users = four_with_a_block(&app).await;
    let [alice, bob, carol, dave] = &users;
    let (_carol, _) = connected(&app, carol, None).await;
    await_sessions(&app.database_url, carol, 1).await;

    // Act: alice (twice), bob and dave open at once, so their snapshots may
    // be read together.
    let ((_a1, _, alice_1), (_a2, _, alice_2), (_b, _, bob_s), (_d, _, dave_s)) = tokio::join!(
        opened(app.addr, alice, None),
        opened(app.addr, alice, None),
        opened(app.addr, bob, None),
        opened(app.addr, dave, None),
    );

    // Assert
    assert_own_snapshots(&users, &[&alice_1, &alice_2], &bob_s, &dave_s);
}

#[tokio::test]
async fn a_resuming_client_gets_what_it_missed_and_live_messages_while_its_snapshot_is_read_and_presence_only_after_it()
 {
    // Arrange: alice was connected and saw up to `since`; bob sent m1 after.
    // The node reads her chat's members again for her snapshot (kept, they
    // would need no read to hold back).
    let app = spawn_app_with(|c| c.ws.presence_view_ttl_ms = 0).await;
    let [alice, bob] = register_all(&app, ["alice", "bob"]).await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let (ws, ready) = connected(&app, &alice, None).await;
    let since = ready["last_event_id"].as_i64().unwrap();
    await_sessions(&app.database_url, &alice, 1).await;
    drop(ws);
    await_sessions(&app.database_url, &alice, 0).await;
    let m1 = app.send_message(&bob, chat, "missed").await;
    // Presence snapshots read presence_sessions: held, they cannot be read.
    let mut lock = crate::helpers::pg::connect(&app.database_url).await;
    let tx = lock.transaction().await.unwrap();
    tx.batch_execute("lock table presence_sessions in access exclusive mode")
        .await
        .unwrap();

    // Act: alice resumes; bob sends m2; bob comes online as another node
    // would announce it.
    let mut ws = WsClient::connect(app.addr, &alice.token, Some(since)).await;
    let first = ws.next_json().await;
    let replayed = ws.next_json().await;
    let m2 = app.send_message(&bob, chat, "live").await;
    let live = ws.next_json().await;
    let [online] = announce(&app.database_url, &bob, 1)
        .await
        .try_into()
        .unwrap();
    let while_held = ws.next_json_within(QUIET).await;
    tx.commit().await.unwrap();
    let after = [ws.next_json().await, ws.next_json().await];

    // Assert: the replay and the live message did not wait for the
    // snapshot; the presence frame did, and came after it.
    assert_eq!(first["type"], "ready", "{first}");
    assert_eq!(first["payload"]["recovered"], true, "{first}");
    assert_eq!(replayed["type"], "message", "{replayed}");
    assert_eq!(replayed["payload"]["message_id"], m1["id"], "{replayed}");
    assert_eq!(live["type"], "message", "{live}");
    assert_eq!(live["payload"]["message_id"], m2["id"], "{live}");
    assert_eq!(while_held, None, "nothing more before the snapshot is read");
    assert_eq!(after[0]["type"], "presence_snapshot", "{}", after[0]);
    assert_eq!(after[1], online);
}

/// Presence frames about `user`, NOTIFYed in one statement as another node
/// announces them: `n` of them, each with its own `last_seen` (PostgreSQL
/// drops a transaction's duplicate notifications).
async fn announce(database_url: &str, user: &TestUser, n: usize) -> Vec<Value> {
    let frames: Vec<Value> = (0..n)
        .map(|i| {
            let seen = (i > 0).then(|| format!("2026-12-06T{:02}:{:02}:00Z", i / 60, i % 60));
            json!({"type": "presence",
                   "payload": {"user_id": user.id, "online": true, "last_seen": seen}})
        })
        .collect();
    let texts: Vec<String> = frames.iter().map(Value::to_string).collect();
    let notifier = crate::helpers::pg::connect(database_url).await;
    notifier
        .execute(
            "select pg_notify('chatapp_live', f) from unnest($1::text[]) with ordinality t(f, n) order by n",
            &[&texts],
        )
        .await
        .unwrap();
    frames
}

#[tokio::test]
async fn presence_frames_held_for_a_snapshot_count_against_the_queue_bound() {
    // Arrange: alice's snapshot cannot be read (presence_sessions locked)
    // and her queue holds 64 KiB.
    let app = spawn_app_with(|c| c.ws.queue_bytes = 64 * 1024).await;
    let [alice, bob] = register_all(&app, ["alice", "bob"]).await;
    app.create_group(&alice, "g", &[&bob]).await;
    let lock = crate::helpers::pg::connect(&app.database_url).await;
    lock.batch_execute("begin; lock table presence_sessions in access exclusive mode")
        .await
        .unwrap();
    let mut ws = app.connect_ws(&alice, None).await;
    assert_eq!(ws.next_json().await["type"], "ready");

    // Act: 1,000 presence frames of about 100 bytes each, held for her, in
    // bursts small enough for her queue (each taken from it before the next
    // arrives): only what is held can reach the bound.
    for _ in 0..20 {
        announce(&app.database_url, &bob, 50).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    assert_eq!(ws.closed().await, Closed::Code(4008));
    assert_eq!(app.ws_health().await["slow_consumer_disconnects"], 1);
    drop(lock);
}

/// A node that keeps the members it reads for snapshots for a minute, so
/// that a test's later snapshots are built from what its first one read.
async fn spawn_keeping_what_it_reads() -> TestApp {
    spawn_app_with(|c| c.ws.presence_view_ttl_ms = 60_000).await
}

#[tokio::test]
async fn a_snapshot_built_from_what_the_node_kept_shows_a_change_noticed_since() {
    // Arrange: alice's snapshot has the node read the group, bob offline;
    // then bob comes online (alice hears it).
    let app = spawn_keeping_what_it_reads().await;
    let [alice, bob, carol] = register_all(&app, ["alice", "bob", "carol"]).await;
    app.create_group(&alice, "g", &[&bob, &carol]).await;
    let (mut alice_ws, _, first) = opened(app.addr, &alice, None).await;
    assert_eq!(listed(&first), vec![(bob.id, false), (carol.id, false)]);
    let (_bob_ws, _) = connected(&app, &bob, None).await;
    assert_eq!(presence_of(&mut alice_ws, &bob).await["online"], true);

    // Act
    let (_carol_ws, _, snapshot) = opened(app.addr, &carol, None).await;

    // Assert
    assert_eq!(listed(&snapshot), vec![(alice.id, true), (bob.id, true)]);
}

#[tokio::test]
async fn a_chat_the_node_has_read_is_served_to_the_next_snapshot_from_its_view() {
    // Arrange: the group's creation has reached the node (alice heard it),
    // then bob's snapshot has the node read the group.
    let app = spawn_keeping_what_it_reads().await;
    let [alice, bob, carol] = register_all(&app, ["alice", "bob", "carol"]).await;
    let (mut alice_ws, _) = connected(&app, &alice, None).await;
    app.create_group(&alice, "g", &[&bob, &carol]).await;
    alice_ws.next_of_type("chat_created").await;
    let before = scrape(&app).await;
    let (_bob_ws, _, _) = opened(app.addr, &bob, None).await;

    // Act
    let (_carol_ws, _, snapshot) = opened(app.addr, &carol, None).await;

    // Assert: one read, for bob's; carol's from the view, with the group's
    // other members.
    let after = scrape(&app).await;
    let moved = |source: &str| {
        let series = format!(r#"chatapp_presence_snapshot_chats_total{{source="{source}"}}"#);
        value(&after, &series) - value(&before, &series)
    };
    assert_eq!(moved("read"), 1.0);
    assert_eq!(moved("view"), 1.0);
    let ids: Vec<i64> = listed(&snapshot).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![alice.id, bob.id]);
}

#[tokio::test]
async fn a_chat_whose_members_changed_since_the_node_read_it_is_read_again() {
    // Arrange: carol is online outside the group; alice's snapshot has the
    // node read the group (bob, dave).
    let app = spawn_keeping_what_it_reads().await;
    let [alice, bob, carol, dave] = register_all(&app, ["alice", "bob", "carol", "dave"]).await;
    let chat = app.create_group(&alice, "g", &[&bob, &dave]).await;
    let (_carol_ws, _) = connected(&app, &carol, None).await;
    await_sessions(&app.database_url, &carol, 1).await;
    let (mut alice_ws, _, first) = opened(app.addr, &alice, None).await;
    assert_eq!(listed(&first), vec![(bob.id, false), (dave.id, false)]);

    // Act: dave out, carol in, so the group has as many members as the node
    // read; alice hears both; then bob opens.
    let (status, _) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", dave.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 204);
    app.add_members(&alice, chat, &[carol.id]).await;
    alice_ws.next_of_type("member_removed").await;
    alice_ws.next_of_type("member_added").await;
    let (_bob_ws, _, snapshot) = opened(app.addr, &bob, None).await;

    // Assert
    assert_eq!(listed(&snapshot), vec![(alice.id, true), (carol.id, true)]);
}

#[tokio::test]
async fn a_node_whose_listener_reconnected_reads_its_chats_again() {
    // Arrange: alice's snapshot has the node read the group, bob offline;
    // then bob gets a session with no notice, as if it had been announced
    // while the node's listener was away.
    let app = spawn_keeping_what_it_reads().await;
    let [alice, bob, carol] = register_all(&app, ["alice", "bob", "carol"]).await;
    app.create_group(&alice, "g", &[&bob, &carol]).await;
    let (_alice_ws, _, first) = opened(app.addr, &alice, None).await;
    assert_eq!(listed(&first), vec![(bob.id, false), (carol.id, false)]);
    await_sessions(&app.database_url, &alice, 1).await;
    let db = crate::helpers::pg::connect(&app.database_url).await;
    db.execute(
        "insert into presence_sessions (node_id, user_id) select node_id, $1 from presence_nodes",
        &[&bob.id],
    )
    .await
    .unwrap();

    // Act: the listener loses its connection and opens another.
    let listener = "select pid from pg_stat_activity
                    where application_name = 'chatapp-listener' and datname = current_database()";
    let pids = async || -> Vec<i32> {
        let rows = db.query(listener, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let old = pids().await;
    assert_eq!(
        crate::helpers::pg::kill_listeners(&app.database_url).await,
        1
    );
    // A new one means the node saw the old one go (and forgot what it kept).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pids().await.iter().all(|pid| old.contains(pid)) {
        assert!(tokio::time::Instant::now() < deadline, "no new listener");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_carol_ws, _, snapshot) = opened(app.addr, &carol, None).await;

    // Assert
    assert_eq!(listed(&snapshot), vec![(alice.id, true), (bob.id, true)]);
}

#[tokio::test]
async fn a_user_connected_to_another_node_is_online_in_snapshots_presence_and_member_lists() {
    // Arrange: bob is connected to node B only; alice asks node A.
    let a = spawn_app().await;
    let b = spawn_node(&a.database_url, |_| {}).await;
    let [alice, bob, carol] = register_all(&a, ["alice", "bob", "carol"]).await;
    let chat = a.create_group(&alice, "g", &[&bob, &carol]).await;
    let (_bob, _) = connected(&b, &bob, None).await;
    await_sessions(&a.database_url, &bob, 1).await;

    // Act
    let (_alice, _, snapshot) = opened(a.addr, &alice, None).await;
    await_sessions(&a.database_url, &alice, 1).await;
    let presence = chat_presence(&a, &alice, chat).await;
    let (_, detail) = a.get(&format!("/api/v1/chats/{chat}"), &alice.token).await;
    let (_, page) = a
        .get(&format!("/api/v1/chats/{chat}/members"), &alice.token)
        .await;
    let (_, list) = a.get("/api/v1/chats", &alice.token).await;

    // Assert
    assert_eq!(
        snapshot["users"],
        json!([
            {"user_id": bob.id, "online": true, "last_seen": null},
            {"user_id": carol.id, "online": false, "last_seen": null},
        ])
    );
    assert_eq!(
        presence,
        json!({"member_count": 3, "online_count": 2, "online": sorted(vec![alice.id, bob.id])})
    );
    let expected = sorted(vec![alice.id, bob.id, carol.id])
        .into_iter()
        .map(|id| (id, id != carol.id))
        .collect::<Vec<_>>();
    assert_eq!(online_of(&detail["members"]), expected, "{detail}");
    assert_eq!(online_of(&page), expected, "{page}");
    assert_eq!(online_of(&list[0]["members"]), expected, "{list}");
}

#[tokio::test]
async fn chat_presence_is_for_members_only_and_hides_users_blocked_either_way() {
    // Arrange: everyone in the chat is connected; mallory is not a member.
    let app = spawn_app().await;
    let [alice, bob, carol, mallory] =
        register_all(&app, ["alice", "bob", "carol", "mallory"]).await;
    let chat = app.create_group(&alice, "g", &[&bob, &carol]).await;
    let mut sockets = Vec::new();
    for user in [&alice, &bob, &carol] {
        sockets.push(connected(&app, user, None).await.0);
        await_sessions(&app.database_url, user, 1).await;
    }

    // Act & Assert: non-members, and chats that do not exist, are 404.
    for path in [
        format!("/api/v1/chats/{chat}/presence"),
        "/api/v1/chats/999999/presence".to_string(),
    ] {
        let (status, body) = app.get(&path, &mallory.token).await;
        assert_error(status, &body, 404, "not_found");
    }
    assert_eq!(
        chat_presence(&app, &alice, chat).await,
        json!({"member_count": 3, "online_count": 3, "online": sorted(vec![alice.id, bob.id, carol.id])})
    );

    // Act: alice blocks bob.
    let (status, body) = app
        .put(
            &format!("/api/v1/users/{}/block", bob.id),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // Assert: each appears offline to the other, and only to the other.
    let seen_by = |viewer| chat_presence(&app, viewer, chat);
    assert_eq!(
        seen_by(&alice).await["online"],
        json!(sorted(vec![alice.id, carol.id]))
    );
    assert_eq!(
        seen_by(&bob).await["online"],
        json!(sorted(vec![bob.id, carol.id]))
    );
    assert_eq!(
        seen_by(&carol).await["online"],
        json!(sorted(vec![alice.id, bob.id, carol.id]))
    );
    let (_, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &alice.token)
        .await;
    let bob_seen = online_of(&detail["members"])
        .into_iter()
        .find(|(id, _)| *id == bob.id);
    assert_eq!(bob_seen, Some((bob.id, false)), "{detail}");
    let (_, _, snapshot) = opened(app.addr, &alice, None).await;
    assert_eq!(
        snapshot["users"],
        json!([
            {"user_id": carol.id, "online": true, "last_seen": null},
            {"user_id": bob.id, "online": false, "last_seen": null},
        ])
    );
}

#[tokio::test]
async fn events_carry_no_presence_while_the_rest_body_does() {
    // Arrange: bob is connected and will be told of the new chat.
    let app = spawn_app().await;
    let [alice, bob] = register_all(&app, ["alice", "bob"]).await;
    let (mut bob_ws, _) = connected(&app, &bob, None).await;
    await_sessions(&app.database_url, &bob, 1).await;

    // Act
    let (status, body) = app
        .post(
            "/api/v1/chats",
            &alice.token,
            json!({"name": "g", "is_group": true, "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let created = bob_ws.next_of_type("chat_created").await;

    // Assert: the creator's reply says who is online as she sees it; the
    // event, which every member shares, says nothing of it.
    let expected = sorted(vec![alice.id, bob.id])
        .into_iter()
        .map(|id| (id, id == bob.id))
        .collect::<Vec<_>>();
    assert_eq!(online_of(&body["members"]), expected, "{body}");
    for member in created["payload"]["members"].as_array().unwrap() {
        assert!(member.get("online").is_none(), "{created}");
    }
}

#[tokio::test]
async fn a_chat_above_the_presence_size_gets_no_per_arrival_presence_while_a_small_chat_does() {
    // Arrange: with a size of 3, alice's group of 4 is large, her DM with erin small.
    let app = spawn_app_with(|c| c.ws.presence_max_members = 3).await;
    let [alice, bob, carol, dave, erin] =
        register_all(&app, ["alice", "bob", "carol", "dave", "erin"]).await;
    let big = app
        .create_group(&alice, "big", &[&bob, &carol, &dave])
        .await;
    app.create_dm(&alice, &erin).await;
    let (mut watcher, _, snapshot) = opened(app.addr, &alice, None).await;
    await_sessions(&app.database_url, &alice, 1).await;
    assert_eq!(
        snapshot["users"],
        json!([{"user_id": erin.id, "online": false, "last_seen": null}]),
        "the snapshot leaves out those met only in the large chat"
    );

    // Act: bob (in the large chat only) arrives, then erin (in the small one).
    let (_bob, _) = connected(&app, &bob, None).await;
    await_sessions(&app.database_url, &bob, 1).await;
    let (_erin, _) = connected(&app, &erin, None).await;

    // Assert: alice hears of erin, never of bob (his would have come first).
    let heard = watcher.next_of_type("presence").await;
    assert_eq!(heard["payload"]["user_id"], erin.id, "{heard}");
    assert_eq!(heard["payload"]["online"], true, "{heard}");
    watcher.expect_no("presence", QUIET).await;
    // The large chat's presence is there on demand.
    assert_eq!(
        chat_presence(&app, &alice, big).await,
        json!({"member_count": 4, "online_count": 2, "online": sorted(vec![alice.id, bob.id])})
    );
    let (_, _, snapshot) = opened(app.addr, &alice, None).await;
    assert_eq!(
        snapshot["users"],
        json!([{"user_id": erin.id, "online": true, "last_seen": null}])
    );
}

#[tokio::test]
async fn member_count_follows_adds_removals_leaves_and_account_deletions() {
    // Arrange
    let app = spawn_app().await;
    let [alice, bob, carol, dave] = register_all(&app, ["alice", "bob", "carol", "dave"]).await;
    let chat = app.create_group(&alice, "g", &[&bob]).await;
    let count = || member_count(&app, &alice, chat);
    assert_eq!(count().await, 2);

    // Act & Assert
    let (status, body) = app
        .post(
            &format!("/api/v1/chats/{chat}/members"),
            &alice.token,
            json!({"member_ids": [carol.id, dave.id]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count().await, 4);
    let (status, _) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", carol.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &bob.token,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(count().await, 2);
    let (status, body) = app.delete_account(&dave).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(count().await, 1);
}

/// The chat's `member_count`, which its detail and its presence agree on.
async fn member_count(app: &TestApp, viewer: &TestUser, chat: i64) -> i64 {
    let presence = chat_presence(app, viewer, chat).await;
    let (_, detail) = app
        .get(&format!("/api/v1/chats/{chat}"), &viewer.token)
        .await;
    assert_eq!(presence["member_count"], detail["member_count"], "{detail}");
    detail["member_count"].as_i64().unwrap()
}

/// Node B as a process of its own (so it can die without a goodbye), on
/// `app`'s database, heartbeating every second and reaping after two.
fn process_node(app: &TestApp, dir: &TempDir) -> crate::helpers::process::Server {
    let config = dir.write(
        "config.yaml",
        "ws:\n  presence_heartbeat_secs: 1\n  presence_timeout_secs: 2\n",
    );
    start_server(
        dir,
        &[
            ("DATABASE_URL", app.database_url.as_str()),
            ("PORT", "0"),
            ("CHATAPP_HOST", "127.0.0.1"),
            ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
            ("CHATAPP_BCRYPT_COST", "4"),
            ("CONFIG_PATH", config.to_str().unwrap()),
        ],
    )
}

#[tokio::test]
async fn users_of_a_node_that_dies_go_offline_everywhere_and_come_back_when_they_reconnect() {
    // Arrange: node A in this process, node B a process; bob is on node B,
    // alice watches from node A.
    let a = spawn_app_with(|c| {
        c.ws.presence_heartbeat_secs = 1;
        c.ws.presence_timeout_secs = 2;
    })
    .await;
    let dir = TempDir::new();
    let node_b = process_node(&a, &dir);
    let [alice, bob] = register_all(&a, ["alice", "bob"]).await;
    let chat = a.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, _) = connected(&a, &alice, None).await;
    let (_bob_on_b, _, _) = opened(node_b.addr.parse().unwrap(), &bob, None).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], true);
    await_sessions(&a.database_url, &alice, 1).await;
    assert_eq!(chat_presence(&a, &alice, chat).await["online_count"], 2);

    // Act: node B dies without saying goodbye.
    signal(&node_b.child, "-KILL");

    // Assert: node A reaps it after the presence timeout; bob is offline
    // in every view node A gives.
    let offline = presence_of(&mut watcher, &bob).await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(offline["last_seen"].is_string(), "{offline}");
    assert_eq!(
        chat_presence(&a, &alice, chat).await,
        json!({"member_count": 2, "online_count": 1, "online": [alice.id]})
    );
    let (_, detail) = a.get(&format!("/api/v1/chats/{chat}"), &alice.token).await;
    let expected = sorted(vec![alice.id, bob.id])
        .into_iter()
        .map(|id| (id, id == alice.id))
        .collect::<Vec<_>>();
    assert_eq!(online_of(&detail["members"]), expected, "{detail}");
    let (_, _, snapshot) = opened(a.addr, &alice, None).await;
    assert_eq!(
        snapshot["users"],
        json!([{"user_id": bob.id, "online": false, "last_seen": offline["last_seen"]}])
    );

    // Act: bob reconnects, to node A.
    let (_bob_on_a, _) = connected(&a, &bob, None).await;

    // Assert
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], true);
    await_sessions(&a.database_url, &bob, 1).await;
    assert_eq!(
        chat_presence(&a, &alice, chat).await["online"],
        json!(sorted(vec![alice.id, bob.id]))
    );
}

#[tokio::test]
async fn a_presence_change_made_while_the_pool_is_exhausted_still_reaches_the_chat() {
    // Arrange: a pool of one connection whose wait gives up after a second;
    // alice and bob share a DM and are both connected.
    let app = spawn_app_with(|c| {
        c.database.pool_size = 1;
        c.database.connect_timeout_secs = 1;
    })
    .await;
    let (bob, mut watcher, bobs_socket) = both_online_in_a_dm(&app).await;

    // Act: bob leaves while the pool's only connection is held, and it is
    // given back only after a wait for it (the presence update's) gave up.
    let held = app.hub.pool.get().await.unwrap();
    let timed_out = app.hub.pool.state().statistics.get_timed_out;
    drop(bobs_socket);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.hub.pool.state().statistics.get_timed_out == timed_out {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing waited for the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);

    // Assert: alice still hears bob go offline, long before the presence
    // timeout (45 s) would have reaped his session.
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], false);
}

#[tokio::test]
async fn a_user_who_left_while_presence_could_not_be_recorded_is_shown_offline_once_it_can() {
    // Arrange: alice and bob share a DM and are both connected.
    let app = spawn_app().await;
    let (bob, mut watcher, bobs_socket) = both_online_in_a_dm(&app).await;
    await_sessions(&app.database_url, &bob, 1).await;

    // Act: bob leaves while recording presence fails, then it can again.
    let db = pg::connect(&app.database_url).await;
    table_reachable(&db, "presence_sessions", false).await;
    drop(bobs_socket);
    wait_above(&app, "chatapp_presence_update_failures_total", 0.0).await;
    table_reachable(&db, "presence_sessions", true).await;

    // Assert: bob's session, which the failed update left behind, goes,
    // and alice hears him go offline, though the node never stopped
    // heartbeating for it.
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], false);
    await_sessions(&app.database_url, &bob, 0).await;
    assert!(value(&scrape(&app).await, "chatapp_presence_resyncs_total") >= 1.0);
}

#[tokio::test]
async fn a_user_who_came_while_presence_could_not_be_recorded_is_shown_online_once_it_can() {
    // Arrange: with a size of 2 the group is large, so carol's connection
    // reads no one's presence; it only records her own.
    let app = spawn_app_with(|c| c.ws.presence_max_members = 2).await;
    let [alice, bob, carol] = register_all(&app, ["alice", "bob", "carol"]).await;
    let group = app.create_group(&alice, "big", &[&bob, &carol]).await;
    let db = pg::connect(&app.database_url).await;

    // Act: carol connects while recording presence fails, then it can again.
    table_reachable(&db, "presence_sessions", false).await;
    let (_carol, _) = connected(&app, &carol, None).await;
    wait_above(&app, "chatapp_presence_update_failures_total", 0.0).await;
    table_reachable(&db, "presence_sessions", true).await;

    // Assert: her session is recorded, and her chat shows her online.
    await_sessions(&app.database_url, &carol, 1).await;
    assert_eq!(
        chat_presence(&app, &alice, group).await["online"],
        json!([carol.id])
    );
}

#[tokio::test]
async fn presence_changes_a_disconnected_listener_missed_are_announced_once_it_is_back() {
    // Arrange: alice and bob share a DM; alice is connected here, bob nowhere.
    let app = spawn_app().await;
    let [alice, bob] = register_all(&app, ["alice", "bob"]).await;
    app.create_dm(&alice, &bob).await;
    let (mut watcher, _) = connected(&app, &alice, None).await;
    await_sessions(&app.database_url, &alice, 1).await;
    let db = pg::connect(&app.database_url).await;
    let kill_listener = || async {
        assert_eq!(pg::kill_listeners(&app.database_url).await, 1);
    };

    // Act: bob comes online on another node, written without a
    // notification (as if it was sent while this node's listener was
    // away), and the listener loses its connection and comes back.
    db.batch_execute("insert into presence_nodes (node_id) values ('elsewhere')")
        .await
        .unwrap();
    db.execute(
        "insert into presence_sessions (node_id, user_id) values ('elsewhere', $1)",
        &[&bob.id],
    )
    .await
    .unwrap();
    kill_listener().await;

    // Assert
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], true);

    // Act: bob leaves the same way.
    db.execute(
        "with gone as (delete from presence_sessions where user_id = $1)
         update users set last_seen = clock_timestamp() where id = $1",
        &[&bob.id],
    )
    .await
    .unwrap();
    kill_listener().await;

    // Assert
    let offline = presence_of(&mut watcher, &bob).await;
    assert_eq!(offline["online"], false);
    assert!(offline["last_seen"].is_string(), "{offline}");
}

#[tokio::test]
async fn a_presence_change_whose_fan_out_failed_still_reaches_the_chat_once_it_can() {
    // Arrange: alice and bob share a DM and are both connected.
    let app = spawn_app().await;
    let (bob, mut watcher, bobs_socket) = both_online_in_a_dm(&app).await;
    let db = pg::connect(&app.database_url).await;

    // Act: bob leaves while the node cannot read whom to tell (the
    // memberships out of reach: an error no retry mends), then it can.
    table_reachable(&db, "chat_members", false).await;
    drop(bobs_socket);
    await_sessions(&app.database_url, &bob, 0).await;
    wait_above(&app, "chatapp_presence_update_failures_total", 0.0).await;
    table_reachable(&db, "chat_members", true).await;

    // Assert
    assert_eq!(presence_of(&mut watcher, &bob).await["online"], false);
}
