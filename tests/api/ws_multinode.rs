//! Several nodes on one database behave as one service (issue 3): fan-out,
//! recovery, membership, presence and account changes across two real servers.

use crate::helpers::realtime::*;
use crate::helpers::ws::Closed;
use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Long enough for a frame that was going to arrive to have arrived.
const QUIET: Duration = Duration::from_millis(600);

/// Two servers ("nodes") sharing one fresh database.
async fn two_nodes() -> (TestApp, TestApp) {
    let a = spawn_app().await;
    let b = spawn_node(&a.database_url, |_| {}).await;
    (a, b)
}

#[tokio::test]
async fn nodes_sharing_a_database_are_distinct_nodes() {
    let (a, b) = two_nodes().await;
    let (ha, hb) = (a.ws_health().await, b.ws_health().await);
    assert_ne!(ha["node_id"], hb["node_id"], "{ha} {hb}");
}

#[tokio::test]
async fn a_message_sent_through_node_a_reaches_a_subscriber_on_node_b_in_order() {
    // Arrange
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let chat = a.create_group(&alice, "g", &[&bob]).await;
    let (mut on_b, _) = connected(&b, &bob, None).await;
    let (mut on_a, _) = connected(&a, &alice, None).await;

    // Act: REST and WebSocket writes through node A.
    let mut sent = Vec::new();
    for i in 0..20 {
        if i % 2 == 0 {
            sent.push(a.send_message(&alice, chat, &format!("rest {i}")).await["id"].clone());
        } else {
            on_a.send_json(json!({"type": "message", "payload": {"chat_id": chat, "content": format!("ws {i}")}}))
                .await;
            sent.push(on_a.next_of_type("ack").await["payload"]["message_id"].clone());
        }
    }

    // Assert: node B's subscriber sees all of them, in commit order.
    let seen = read_messages(&mut on_b, sent.len()).await;
    let ids: Vec<Value> = seen.iter().map(|s| json!(s.1)).collect();
    assert_eq!(ids, sent);
    assert_eq!(seen, committed_messages(&a, chat).await);
}

#[tokio::test]
async fn recovery_with_since_works_on_either_node() {
    // Arrange: bob has seen the first message on node A.
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let chat = a.create_group(&alice, "g", &[&bob]).await;
    let (mut ws, _) = connected(&a, &bob, None).await;
    a.send_message(&alice, chat, "first").await;
    let since = read_messages(&mut ws, 1).await[0].0;
    drop(ws);

    // Act: messages through node B while away; resume on node B.
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(b.send_message(&alice, chat, &format!("via b {i}")).await["id"].clone());
    }
    let (mut ws, ready) = connected(&b, &bob, Some(since)).await;

    // Assert
    assert_eq!(ready["recovered"], true, "{ready}");
    let seen = read_messages(&mut ws, 3).await;
    assert_eq!(seen.iter().map(|s| json!(s.1)).collect::<Vec<_>>(), missed);
    let since = seen.last().unwrap().0;
    drop(ws);

    // Act: and back on node A, after writes through A.
    let mut missed = Vec::new();
    for i in 0..2 {
        missed.push(a.send_message(&alice, chat, &format!("via a {i}")).await["id"].clone());
    }
    let (mut ws, ready) = connected(&a, &bob, Some(since)).await;

    // Assert: exactly the missed ones, then live ones from the other node.
    assert_eq!(ready["recovered"], true, "{ready}");
    let seen = read_messages(&mut ws, 2).await;
    assert_eq!(seen.iter().map(|s| json!(s.1)).collect::<Vec<_>>(), missed);
    let live = b.send_message(&alice, chat, "live via b").await;
    let f = ws.next_of_type("message").await;
    assert_eq!(f["payload"]["message_id"], live["id"]);
    assert_eq!(f["payload"]["event_id"], seen[1].0 + 1);
}

#[tokio::test]
async fn membership_changes_through_one_node_take_effect_on_the_other() {
    // Arrange: bob is connected to node B only.
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let (mut on_b, _) = connected(&b, &bob, None).await;

    // Act: alice creates a chat with bob through node A.
    let chat = a.create_group(&alice, "g", &[&bob]).await;

    // Assert: bob learns of it and is subscribed on node B.
    let created = on_b.next_of_type("chat_created").await;
    assert_eq!(created["payload"]["id"], chat);
    let msg = a.send_message(&alice, chat, "hello").await;
    assert_eq!(
        on_b.next_of_type("message").await["payload"]["message_id"],
        msg["id"]
    );

    // Act: alice removes bob through node A.
    let (status, body) = a
        .delete(
            &format!("/api/v1/chats/{chat}/members/{}", bob.id),
            &alice.token,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // Assert: node B stops delivering that chat to him.
    let removed = on_b.next_of_type("member_removed").await;
    assert_eq!(removed["payload"]["user_id"], bob.id);
    a.send_message(&alice, chat, "after removal").await;
    on_b.expect_no("message", QUIET).await;
}

#[tokio::test]
async fn typing_and_read_markers_cross_nodes() {
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let chat = a.create_group(&alice, "g", &[&bob]).await;
    let msg = a.send_message(&alice, chat, "read me").await;
    let (mut on_a, _) = connected(&a, &alice, None).await;
    let (mut on_b, _) = connected(&b, &bob, None).await;

    on_b.send_json(json!({"type": "typing", "payload": {"chat_id": chat}}))
        .await;
    let typing = on_a.next_of_type("typing").await;
    assert_eq!(typing["payload"]["user_id"], bob.id);

    on_b.send_json(json!({"type": "read", "payload": {"chat_id": chat, "message_id": msg["id"]}}))
        .await;
    let read = on_a.next_of_type("read").await;
    assert_eq!(
        read["payload"],
        json!({"chat_id": chat, "user_id": bob.id, "message_id": msg["id"]})
    );
}

#[tokio::test]
async fn typing_from_one_user_on_two_nodes_is_forwarded_at_most_once_per_interval() {
    // Arrange: alice has a connection on each node; bob watches on node A.
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let chat = a.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, _) = connected(&a, &bob, None).await;
    let (mut alice_a, _) = connected(&a, &alice, None).await;
    let (mut alice_b, _) = connected(&b, &alice, None).await;
    let typing = json!({"type": "typing", "payload": {"chat_id": chat}});

    // Act: she types in both tabs at once.
    alice_a.send_json(typing.clone()).await;
    alice_b.send_json(typing).await;

    // Assert: bob sees one typing signal within the 2 s window, not two.
    let first = watcher.next_of_type("typing").await;
    assert_eq!(first["payload"]["user_id"], alice.id);
    watcher
        .expect_no("typing", Duration::from_millis(1000))
        .await;
}

#[tokio::test]
async fn a_user_is_online_while_connected_to_any_node() {
    // Arrange: alice watches from node A; bob connects to both nodes.
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    a.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, _) = connected(&a, &alice, None).await;
    let (bob_b, _) = connected(&b, &bob, None).await;
    let online = watcher.next_of_type("presence").await;
    assert_eq!(online["payload"]["user_id"], bob.id);
    assert_eq!(online["payload"]["online"], true);
    let (bob_a, _) = connected(&a, &bob, None).await;
    // Sessions are recorded asynchronously: wait until both nodes hold one.
    await_sessions(&a.database_url, &bob, 2).await;

    // Act: bob leaves node B but is still on node A.
    drop(bob_b);
    watcher
        .expect_no("presence", Duration::from_millis(1000))
        .await;

    // Act: and then node A too.
    drop(bob_a);

    // Assert
    let offline = watcher.next_of_type("presence").await;
    assert_eq!(offline["payload"]["user_id"], bob.id, "{offline}");
    assert_eq!(offline["payload"]["online"], false, "{offline}");
    assert!(offline["payload"]["last_seen"].is_string());
}

#[tokio::test]
async fn stopping_a_node_shows_its_users_offline_to_the_other_node_after_the_grace() {
    // Fast presence (a silent node is dead after 3 s) and a short reconnect
    // window: the grace is 1.5 s.
    let fast = |c: &mut chatapp::config::Config| {
        c.ws.presence_heartbeat_secs = 1;
        c.ws.presence_timeout_secs = 3;
        c.ws.reconnect_spread_ms = 500;
    };
    let a = spawn_app_with(fast).await;
    let mut b = spawn_node(&a.database_url, fast).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    a.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, _) = connected(&a, &alice, None).await;
    let (mut on_b, _) = connected(&b, &bob, None).await;
    assert_eq!(
        watcher.next_of_type("presence").await["payload"]["online"],
        true
    );

    let ((), closed) = tokio::join!(b.stop(), on_b.closed());

    assert_eq!(closed, Closed::Code(1001));
    let offline = watcher.next_of_type("presence").await;
    assert_eq!(offline["payload"]["user_id"], bob.id, "{offline}");
    assert_eq!(offline["payload"]["online"], false, "{offline}");
    // Node A keeps serving.
    watcher.send_json(json!({"type": "ping"})).await;
    watcher.next_of_type("pong").await;
}

#[tokio::test]
async fn account_changes_through_one_node_close_sockets_on_the_other() {
    // Arrange
    let (a, b) = two_nodes().await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let (mut bob_b, _) = connected(&b, &bob, None).await;
    let (mut carol_b, _) = connected(&b, &carol, None).await;

    // Act: bob changes his password and carol deletes her account, through node A.
    a.change_password(&bob, "another good password").await;
    let (status, body) = a.delete_account(&carol).await;
    assert_eq!(status, 204, "{body}");

    // Assert
    assert_eq!(bob_b.closed().await, Closed::Code(4001));
    assert_eq!(carol_b.closed().await, Closed::Code(4003));
}

/// The "done when" scenario: writers hammer one chat through both nodes while
/// a client connects, drops and resumes with `since` at random, alternating
/// nodes; it ends with exactly the committed messages, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_at_random_across_two_nodes_gets_every_committed_message_once_in_order() {
    // Arrange
    const WRITERS: usize = 6;
    const EACH: usize = 30;
    let (a, b) = two_nodes().await;
    let nodes = [Arc::new(a), Arc::new(b)];
    let reader = nodes[0].register("reader").await;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(nodes[0].register("writer").await);
    }
    let members: Vec<&TestUser> = writers[1..].iter().chain([&reader]).collect();
    let chat = nodes[0].create_group(&writers[0], "busy", &members).await;
    let (ws, ready) = connected(&nodes[1], &reader, None).await;
    drop(ws);
    let mut since = ready["last_event_id"].as_i64().unwrap();

    // Act: writers alternate nodes (half over REST, half over WebSocket) ...
    let tasks: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let node = nodes[i % 2].clone();
            let w = w.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                if i % 3 == 2 {
                    let (mut ws, _) = connected(&node, &w, None).await;
                    for n in 0..EACH {
                        ws.send_json(json!({"type": "message",
                                            "payload": {"chat_id": chat, "content": format!("ws {i}/{n}")}}))
                            .await;
                        let ack = ws.next_of_type("ack").await;
                        ids.push(ack["payload"]["message_id"].as_i64().unwrap());
                    }
                } else {
                    for n in 0..EACH {
                        let m = node.send_message(&w, chat, &format!("rest {i}/{n}")).await;
                        ids.push(m["id"].as_i64().unwrap());
                    }
                }
                ids
            })
        })
        .collect();

    // ... while the reader drops and resumes at random on either node.
    let mut rng = Rng::seeded();
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let mut node = 0;
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < WRITERS * EACH {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {} of {} messages",
            seen.len(),
            WRITERS * EACH
        );
        node = if rng.below(4) == 0 { node } else { 1 - node };
        let (mut ws, ready) = connected(&nodes[node], &reader, Some(since)).await;
        assert_eq!(ready["recovered"], true, "{ready}");
        reconnects += 1;
        let take = 1 + rng.below(15);
        for _ in 0..take {
            let Some(f) = ws.next_json_within(Duration::from_secs(5)).await else {
                break;
            };
            if let Some(id) = f["payload"]["event_id"].as_i64() {
                assert!(
                    id > since,
                    "duplicate or old event on node {node} after since={since}: {f}"
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
    let mut sent = HashSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }

    // Assert: exactly the committed messages, in commit order, each once.
    let committed = committed_messages(&nodes[0], chat).await;
    assert_eq!(committed.len(), WRITERS * EACH);
    assert_eq!(seen, committed, "after {reconnects} reconnects");
    let seen_ids: HashSet<i64> = seen.iter().map(|s| s.1).collect();
    assert_eq!(seen_ids.len(), seen.len(), "a message was seen twice");
    assert_eq!(seen_ids, sent);
    assert_eq!(
        seen_ids,
        rest_history(&nodes[1], &reader, chat)
            .await
            .into_iter()
            .collect::<HashSet<_>>()
    );
    assert!(reconnects > 5, "only {reconnects} reconnects");
}

/// A user reconnecting from one node to the other (as behind a load balancer)
/// is connected throughout, so co-members must end up seeing them online each
/// time; a race between the two nodes' presence updates must not leave them
/// shown offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_switching_nodes_is_never_left_shown_offline() {
    // Arrange: alice watches bob, who is connected to node B.
    let (a, b) = two_nodes().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    a.create_group(&alice, "g", &[&bob]).await;
    let (mut watcher, _) = connected(&a, &alice, None).await;
    let nodes = [&a, &b];
    let (mut current, _) = connected(&b, &bob, None).await;
    let mut on = 1;
    let mut shown_online = true;
    for round in 0..20 {
        // Act: open on the other node as the old connection closes.
        let other = 1 - on;
        let ((next, _), ()) = tokio::join!(connected(nodes[other], &bob, None), async {
            drop(current);
        });
        current = next;
        on = other;

        // Wait until the database settles on one session, then for quiet
        // with bob shown online, or for the deadline: on a loaded machine
        // a fan-out can come later than one quiet spell.
        await_sessions(&a.database_url, &bob, 1).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match watcher.next_json_within(Duration::from_millis(250)).await {
                Some(f) if f["type"] == "presence" && f["payload"]["user_id"] == bob.id => {
                    shown_online = f["payload"]["online"].as_bool().unwrap();
                }
                Some(_) => {}
                None if shown_online || Instant::now() > deadline => break,
                None => {}
            }
        }

        // Assert
        assert!(
            shown_online,
            "round {round}: bob is connected but shown offline"
        );
    }
}
