//! Helpers the real-time tests share: connecting, reading message frames,
//! the committed log to compare against, and a seeded PRNG for random schedules.

use super::{TestApp, TestUser, WsClient};
use serde_json::Value;
use std::time::Duration;

/// An open connection for `user` and its `ready` payload (its
/// `presence_snapshot` taken out and checked, see [`opened`]).
pub async fn connected(app: &TestApp, user: &TestUser, since: Option<i64>) -> (WsClient, Value) {
    let (ws, ready, _) = opened(app.addr, user, since).await;
    (ws, ready)
}

/// Every frame a fresh connection of `user` with `since` receives (but
/// `ready`, which must say it recovered, and the snapshot) before things go
/// quiet.
pub async fn replayed_frames(app: &TestApp, user: &TestUser, since: i64) -> Vec<Value> {
    let (mut ws, ready) = connected(app, user, Some(since)).await;
    assert_eq!(ready["recovered"], true, "{ready}");
    let mut frames = Vec::new();
    while let Some(frame) = ws.next_json_within(Duration::from_millis(800)).await {
        frames.push(frame);
    }
    frames
}

/// An open connection for `user` to the node at `addr`, with the payloads
/// of `ready`, its first frame, and of its `presence_snapshot`, which
/// comes after it and before any `presence` frame; the frames read in
/// between (a replay, live events) are the connection's next reads.
pub async fn opened(
    addr: std::net::SocketAddr,
    user: &TestUser,
    since: Option<i64>,
) -> (WsClient, Value, Value) {
    let mut ws = WsClient::connect(addr, &user.token, since).await;
    let ready = ws.next_json().await;
    assert_eq!(ready["type"], "ready", "first frame must be ready: {ready}");
    let snapshot = ws.take_first("presence_snapshot").await;
    assert!(
        ws.read_ahead().iter().all(|f| f["type"] != "presence"),
        "a presence frame came before the snapshot: {:?}",
        ws.read_ahead()
    );
    (ws, ready["payload"].clone(), snapshot["payload"].clone())
}

/// Waits until `user` holds `sessions` presence sessions across all nodes:
/// they are recorded asynchronously, in batches.
pub async fn await_sessions(database_url: &str, user: &TestUser, sessions: i64) {
    let db = super::pg::connect(database_url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held: i64 = db
            .query_one(
                "select count(*) from presence_sessions where user_id = $1",
                &[&user.id],
            )
            .await
            .unwrap()
            .get(0);
        if held == sessions {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {held} sessions, not {sessions}",
            user.username
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(event_id, message_id)` of every committed message in `chat`, in commit order.
pub async fn committed_messages(app: &TestApp, chat: i64) -> Vec<(i64, i64)> {
    let db = super::pg::connect(&app.database_url).await;
    db.query(
        "select id, (payload->>'message_id')::bigint from events
         where kind = 'message' and chat_id = $1 order by id",
        &[&chat],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Every message id of `chat` through `GET /messages/chat/:id`, paging with
/// `before_id`, oldest first.
pub async fn rest_history(app: &TestApp, user: &TestUser, chat: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/v1/messages/chat/{chat}?limit=100&before_id={b}"),
            None => format!("/api/v1/messages/chat/{chat}?limit=100"),
        };
        let (status, page) = app.get(&path, &user.token).await;
        assert_eq!(status, 200, "{page}");
        let page: Vec<i64> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        if page.is_empty() {
            ids.sort_unstable();
            return ids;
        }
        before = page.iter().min().copied();
        ids.extend(page);
    }
}

/// Reads until `n` message frames have arrived; returns `(event_id, message_id)` of each.
pub async fn read_messages(ws: &mut WsClient, n: usize) -> Vec<(i64, i64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let f = ws.next_json().await;
        if f["type"] == "message" {
            seen.push(message_ids(&f));
        }
    }
    seen
}

pub fn message_ids(frame: &Value) -> (i64, i64) {
    (
        frame["payload"]["event_id"].as_i64().expect("event_id"),
        frame["payload"]["message_id"].as_i64().expect("message_id"),
    )
}

/// A tiny deterministic PRNG (xorshift), seeded per run and printed on failure.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed: {seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
