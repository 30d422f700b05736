//! A node failing or restarting under load (issue 23): a node going away
//! tells each client when to come back, spread over a window; the clients of
//! a node killed with SIGKILL or stopped with SIGTERM resume on the other
//! nodes with `since` and get every message sent meanwhile once, in order;
//! the dead node's users are shown offline and online again (after a
//! SIGTERM only those who do not come back within the grace).
//!
//! The node that fails is the real binary (a child process), so SIGKILL is
//! a real crash; the nodes that survive are in-process servers.

use crate::helpers::process::{Server, TempDir, exited, signal, start_server};
use crate::helpers::realtime::*;
use crate::helpers::ws::Next;
use crate::helpers::*;
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// `retry_after_ms` of a going-away close reason; panics on any other.
fn retry_after_ms(close: &Option<(u16, String)>) -> u64 {
    let Some((1001, reason)) = close else {
        panic!("expected a 1001 close, got {close:?}");
    };
    reason
        .strip_prefix("server shutting down; retry_after_ms=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry_after_ms in {reason:?}"))
}

#[tokio::test]
async fn shutdown_tells_each_client_its_own_wait_within_the_spread_window() {
    // Arrange: eight sockets on a node whose clients spread over 3 s.
    let mut app = spawn_app_with(|c| c.ws.reconnect_spread_ms = 3_000).await;
    let user = app.register("spread").await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(connected(&app, &user, None).await.0);
    }

    // Act: the shutdown SIGTERM starts.
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    let mut waits = Vec::new();
    for ws in &mut sockets {
        waits.push(retry_after_ms(&ws.close_frame().await));
    }
    let _app = stopping.await.unwrap();

    // Assert: within the window, and not one wait for all.
    assert!(waits.iter().all(|&w| w <= 3_000), "{waits:?}");
    let distinct: HashSet<u64> = waits.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "every client told the same wait: {waits:?}"
    );
}

/// The failing node's settings: this suite's key and database, fast
/// presence (a silent node is dead after 3 s), a short reconnect spread, no
/// drain delay.
fn failing_node(dir: &TempDir, database_url: &str) -> Server {
    let config = dir.write(
        "config.yaml",
        "auth:\n  bcrypt_cost: 4\nhttp:\n  drain_delay_secs: 0\nlimits:\n  rate:\n    enabled: false\n\
         ws:\n  presence_heartbeat_secs: 1\n  presence_timeout_secs: 3\n  reconnect_spread_ms: 500\n",
    );
    let config = config.display().to_string();
    let env = [
        ("DATABASE_URL", database_url),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
        ("CONFIG_PATH", config.as_str()),
    ];
    start_server(dir, &env)
}

/// A surviving node with the same presence timing.
async fn surviving_node(database_url: &str) -> TestApp {
    spawn_node(database_url, |c| {
        c.ws.presence_heartbeat_secs = 1;
        c.ws.presence_timeout_secs = 3;
    })
    .await
}

/// A member following one chat: the message ids it has seen, in order, and
/// the highest event id, which it resumes from.
struct Follower {
    ws: WsClient,
    seen: Vec<i64>,
    last_event: i64,
}

impl Follower {
    async fn connect(addr: SocketAddr, user: &TestUser, since: Option<i64>) -> Follower {
        let mut ws = WsClient::connect(addr, &user.token, since).await;
        let ready = ws.next_json().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        if since.is_some() {
            assert_eq!(ready["payload"]["recovered"], true, "{ready}");
        }
        Follower {
            ws,
            seen: Vec::new(),
            last_event: since.unwrap_or(ready["payload"]["last_event_id"].as_i64().unwrap()),
        }
    }

    /// Resumes on another node from the last event seen.
    async fn resume(&mut self, addr: SocketAddr, user: &TestUser) {
        let seen = std::mem::take(&mut self.seen);
        *self = Follower {
            seen,
            ..Follower::connect(addr, user, Some(self.last_event)).await
        };
    }

    /// Records a frame; a durable one must come after everything seen.
    fn record(&mut self, frame: &serde_json::Value) {
        if let Some(event) = frame["payload"]["event_id"].as_i64() {
            assert!(event > self.last_event, "old or repeated event: {frame}");
            self.last_event = event;
        }
        if frame["type"] == "message" {
            self.seen
                .push(frame["payload"]["message_id"].as_i64().unwrap());
        }
    }

    /// Reads until `n` more messages have arrived.
    async fn read(&mut self, n: usize) {
        let want = self.seen.len() + n;
        while self.seen.len() < want {
            let frame = self.ws.next_json().await;
            self.record(&frame);
        }
    }

    /// Reads until message `id` has arrived.
    async fn read_through(&mut self, id: i64) {
        while !self.seen.contains(&id) {
            let frame = self.ws.next_json().await;
            self.record(&frame);
        }
    }

    /// Reads what arrives until the connection ends; how it ended.
    async fn read_until_closed(&mut self) -> Option<(u16, String)> {
        loop {
            match self.ws.next_or_close().await {
                Next::Frame(frame) => self.record(&frame),
                Next::Closed(close) => return close,
            }
        }
    }
}

/// Posts messages to `chat` through `app` one after another until `stop`;
/// returns their ids in the order sent.
fn keep_sending(
    app: &TestApp,
    sender: &TestUser,
    chat: i64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<i64>> {
    let (http, url) = (app.http.clone(), app.url("/api/v1/messages"));
    let token = sender.token.clone();
    tokio::spawn(async move {
        let mut ids = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let body = json!({"chat_id": chat, "content": format!("steady {}", ids.len())});
            let reply = http.post(&url).bearer_auth(&token).json(&body).send().await;
            let reply: serde_json::Value = reply.unwrap().json().await.unwrap();
            ids.push(reply["id"].as_i64().expect("message sent"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    })
}

/// Skips frames until each of `users` has been shown `online` (in any
/// order; messages keep coming, so a per-frame wait alone would never end).
async fn presence_until(watcher: &mut WsClient, users: &[&TestUser], online: bool) {
    let mut waiting: HashSet<i64> = users.iter().map(|u| u.id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !waiting.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "users {waiting:?} never shown online: {online}"
        );
        let f = watcher.next_json().await;
        if f["type"] == "presence" && f["payload"]["online"] == online {
            waiting.remove(&f["payload"]["user_id"].as_i64().unwrap());
        }
    }
}

/// Two surviving nodes and the failing one on one database; bob posts
/// through node B into a chat with alice (who watches from node C), carol
/// and dave (who follow it on the failing node) and erin.
struct Cluster {
    _dir: TempDir,
    failing: Server,
    b: TestApp,
    c: TestApp,
    bob: TestUser,
    alice: TestUser,
    carol: TestUser,
    dave: TestUser,
    erin: TestUser,
    chat: i64,
}

async fn cluster() -> Cluster {
    let url = pg::fresh_database().await;
    let b = surviving_node(&url).await;
    let c = surviving_node(&url).await;
    let dir = TempDir::new();
    let failing = failing_node(&dir, &url);
    let bob = b.register("bob").await;
    let alice = b.register("alice").await;
    let carol = b.register("carol").await;
    let dave = b.register("dave").await;
    let erin = b.register("erin").await;
    let chat = b
        .create_group(&bob, "g", &[&alice, &carol, &dave, &erin])
        .await;
    Cluster {
        _dir: dir,
        failing,
        b,
        c,
        bob,
        alice,
        carol,
        dave,
        erin,
        chat,
    }
}

#[tokio::test]
async fn clients_of_a_killed_node_resume_elsewhere_with_every_message_once_in_order() {
    // Arrange: carol and dave on the failing node, alice watching on C.
    let mut k = cluster().await;
    let a_addr: SocketAddr = k.failing.addr.parse().unwrap();
    let (mut watcher, _) = connected(&k.c, &k.alice, None).await;
    let mut carol = Follower::connect(a_addr, &k.carol, None).await;
    let mut dave = Follower::connect(a_addr, &k.dave, None).await;
    presence_until(&mut watcher, &[&k.carol, &k.dave], true).await;
    let first = k.b.send_message(&k.bob, k.chat, "before").await["id"]
        .as_i64()
        .unwrap();
    carol.read_through(first).await;
    dave.read_through(first).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(&k.b, &k.bob, k.chat, stop.clone());
    carol.read(2).await;
    dave.read(2).await;

    // Act: the node dies mid-stream, without a word.
    signal(&k.failing.child, "-KILL");
    let _ = k.failing.child.wait();
    let carol_close = carol.read_until_closed().await;
    let dave_close = dave.read_until_closed().await;

    // Assert: no close frame; the dead node's users go offline once it is
    // found silent.
    assert_eq!(carol_close, None);
    assert_eq!(dave_close, None);
    presence_until(&mut watcher, &[&k.carol, &k.dave], false).await;

    // Act: they resume on the surviving nodes while bob keeps sending.
    carol.resume(k.b.addr, &k.carol).await;
    dave.resume(k.c.addr, &k.dave).await;

    // Assert: online again; live messages flow.
    presence_until(&mut watcher, &[&k.carol, &k.dave], true).await;
    carol.read(2).await;
    dave.read(2).await;
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.unwrap();
    let last = *sent.last().unwrap();
    carol.read_through(last).await;
    dave.read_through(last).await;

    // Assert: each has every message once, in order, as history has them.
    let history = rest_history(&k.b, &k.bob, k.chat).await;
    let expected: Vec<i64> = std::iter::once(first).chain(sent).collect();
    assert_eq!(history, expected);
    assert_eq!(carol.seen, history, "carol");
    assert_eq!(dave.seen, history, "dave");
}

#[tokio::test]
async fn a_rolling_restart_loses_no_message_and_its_clients_resume_elsewhere() {
    // Arrange: carol and dave follow the chat on the node about to restart;
    // erin posts over her socket there, bob through node B.
    let mut k = cluster().await;
    let a_addr: SocketAddr = k.failing.addr.parse().unwrap();
    let mut carol = Follower::connect(a_addr, &k.carol, None).await;
    let mut dave = Follower::connect(a_addr, &k.dave, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(&k.b, &k.bob, k.chat, stop.clone());
    let mut erin_ws = WsClient::connect(a_addr, &k.erin.token, None).await;
    let mut erin_sent = 0;
    let post = |n: usize| json!({"type": "message", "payload": {"chat_id": k.chat, "content": format!("erin {n}"), "client_id": format!("erin-{n}")}});
    // erin posts one message at a time until her node closes her socket.
    erin_ws.send_json(post(erin_sent)).await;
    carol.read(3).await;
    dave.read(3).await;

    // Act: SIGTERM while both keep posting.
    signal(&k.failing.child, "-TERM");
    let erin_close = loop {
        match erin_ws.next_or_close().await {
            Next::Frame(f) if f["type"] == "ack" => {
                erin_sent += 1;
                erin_ws.send_json(post(erin_sent)).await;
            }
            Next::Frame(_) => {}
            Next::Closed(close) => break close,
        }
    };
    let carol_close = carol.read_until_closed().await;
    let dave_close = dave.read_until_closed().await;

    // Assert: each was told when to come back; it waits that long and
    // resumes on a surviving node.
    let status = exited(&mut k.failing, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    for close in [&erin_close, &carol_close, &dave_close] {
        assert!(retry_after_ms(close) <= 500, "{close:?}");
    }
    tokio::time::sleep(Duration::from_millis(retry_after_ms(&carol_close))).await;
    carol.resume(k.b.addr, &k.carol).await;
    tokio::time::sleep(Duration::from_millis(retry_after_ms(&dave_close))).await;
    dave.resume(k.c.addr, &k.dave).await;
    // erin resends the message her close left unanswered (same client_id),
    // and one more.
    let (mut erin_ws, _) = connected(&k.c, &k.erin, None).await;
    for n in erin_sent..erin_sent + 2 {
        erin_ws.send_json(post(n)).await;
        erin_ws.next_of_type("ack").await;
    }
    carol.read(2).await;
    dave.read(2).await;
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.unwrap();
    let history = rest_history(&k.b, &k.bob, k.chat).await;
    let newest = *history.last().unwrap();
    carol.read_through(newest).await;
    dave.read_through(newest).await;

    // Assert: none of bob's messages lost, each of erin's stored once, and
    // every follower has all of them in order.
    let stored: HashSet<i64> = history.iter().copied().collect();
    assert!(
        sent.iter().all(|id| stored.contains(id)),
        "one of bob's lost"
    );
    let db = pg::connect(&k.b.database_url).await;
    let erins: Vec<String> = db
        .query(
            "select client_id from messages where chat_id = $1 and sender_id = $2 order by id",
            &[&k.chat, &k.erin.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = (0..erin_sent + 2).map(|n| format!("erin-{n}")).collect();
    assert_eq!(erins, want, "each of erin's messages exactly once");
    assert_eq!(history.len(), sent.len() + erin_sent + 2);
    assert_eq!(carol.seen, history, "carol");
    assert_eq!(dave.seen, history, "dave");
}

#[tokio::test]
async fn users_of_a_stopped_node_who_come_back_elsewhere_are_never_shown_offline() {
    // Arrange: carol and dave on the node about to stop, alice watching on C.
    let mut k = cluster().await;
    let a_addr: SocketAddr = k.failing.addr.parse().unwrap();
    let (mut watcher, _) = connected(&k.c, &k.alice, None).await;
    let mut carol = Follower::connect(a_addr, &k.carol, None).await;
    let _dave = Follower::connect(a_addr, &k.dave, None).await;
    presence_until(&mut watcher, &[&k.carol, &k.dave], true).await;

    // Act: SIGTERM; carol comes back on B when told to, dave does not.
    signal(&k.failing.child, "-TERM");
    let carol_close = carol.read_until_closed().await;
    tokio::time::sleep(Duration::from_millis(retry_after_ms(&carol_close))).await;
    carol.resume(k.b.addr, &k.carol).await;
    let status = exited(&mut k.failing, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");

    // Assert: dave is shown offline once the stopped node is reaped, and
    // nothing said carol was offline (or online again) meanwhile.
    let mut about_carol = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dave never shown offline"
        );
        let f = watcher.next_json().await;
        if f["type"] != "presence" {
            continue;
        }
        if f["payload"]["user_id"] == k.carol.id {
            about_carol.push(f["payload"].clone());
        }
        if f["payload"]["user_id"] == k.dave.id && f["payload"]["online"] == false {
            break;
        }
    }
    assert_eq!(about_carol, Vec::<serde_json::Value>::new());
}
