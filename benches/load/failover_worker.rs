//! The client side of `failover`: a worker process holding its share of the
//! clients. Each connects to its home node, records every message frame
//! (event id, arrival, send-to-receive), and when its connection ends
//! reconnects to another node with `since` the way README tells clients to:
//! after a 1001 it waits `retry_after_ms`; after a connection lost without a
//! close frame, or a failed attempt k, a random time in 0..min(30 s,
//! 500 ms × 2^k).
//!
//! Parent -> worker (stdin): `connect`, `status`, `finish`,
//! `latency <storm from> <storm to> <before from> <before to>` (wall ms), `exit`.
//! Worker -> parent (stdout): `{"event":"loaded"|"connected"|"status"|"finished"|"latency", ...}`.

use crate::common::{Opts, Rng, User, connect_db, source_ip};
use crate::stamp::Stamped;
use crate::worker::emit;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub const WORKER: &str = "failover-worker";
/// Marks a benchmark message's content: `fo~<sent, wall-clock ns>~...`.
pub const MARK: &str = "fo~";
const CONNECT_CONCURRENCY: usize = 64;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Wall-clock time: every process on the machine reads the same clock, so
/// a send instant written by the parent is read here.
pub fn wall_nanos() -> u128 {
    crate::common::now_nanos()
}

pub fn wall_ms() -> f64 {
    wall_nanos() as f64 / 1e6
}

/// One client's record, shared by its task and the worker.
#[derive(Default)]
struct Record {
    /// (event id, arrival wall ms) of every message frame, in arrival order.
    received: Vec<(i64, f64)>,
    /// (arrival wall ms, send-to-receive ms, send-to-socket ms, event id)
    /// of live messages while the client has never lost its connection.
    latency: Vec<(f64, f32, f32, i64)>,
    dropped: bool,
    /// `ready.last_event_id`, arrival of the latest resume's `ready`, and
    /// when that attempt began (wall ms).
    resumed: Option<(i64, f64, f64)>,
    pub unrecovered: u64,
    pub failed_attempts: u64,
    retry_after_ms: Option<u64>,
}

/// Whether this worker's sockets ask for the kernel's receive stamps
/// (`--stamps on`), splitting a delivery's time between the server and
/// this worker (`stamp.rs`).
static STAMPS: OnceLock<bool> = OnceLock::new();

/// A client's socket and the kernel's stamp of its last read.
struct Conn {
    ws: WebSocketStream<Stamped>,
    landed: Arc<AtomicU64>,
}

/// Connects to `node` as `c` and waits for `ready`.
async fn login(
    node: SocketAddr,
    c: &Client,
    since: Option<i64>,
) -> Result<(Conn, serde_json::Value), String> {
    let stamps = STAMPS.get().copied().unwrap_or(false);
    let (ws, ready, landed) =
        crate::stamp::login(node, source_ip(c.index), &c.user, since, stamps).await?;
    Ok((Conn { ws, landed }, ready))
}

struct Client {
    user: User,
    chat: i64,
    home: usize,
    index: usize,
    record: Mutex<Record>,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicUsize,
    reconnected: AtomicUsize,
}

pub fn worker_main(opts: &Opts) {
    crate::worker::main(worker(opts))
}

async fn worker(opts: &Opts) -> Result<(), String> {
    let arg = |name: &str| {
        opts.get(name)
            .map(String::from)
            .ok_or_else(|| format!("{WORKER} needs --{name}"))
    };
    let number = |name: &str| -> Result<usize, String> {
        arg(name)?.parse().map_err(|e| format!("--{name}: {e}"))
    };
    // The `first`..`first + count` clients of home node `home`.
    let (home, first, count) = (number("home")?, number("first")?, number("count")?);
    let nodes: Vec<SocketAddr> = arg("nodes")?
        .split(',')
        .map(|a| a.parse().map_err(|e| format!("--nodes {a}: {e}")))
        .collect::<Result<_, _>>()?;
    let db_url = arg("db")?;
    let _ = STAMPS.set(opts.get("stamps").is_some_and(|v| v == "on"));
    let text = std::fs::read_to_string(arg("clients")?).map_err(|e| format!("clients: {e}"))?;
    let clients: Vec<Arc<Client>> = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index, line.split(' ').collect::<Vec<&str>>()))
        .filter(|(_, f)| f.get(2).and_then(|h| h.parse().ok()) == Some(home))
        .skip(first)
        .take(count)
        .map(|(index, f)| {
            Arc::new(Client {
                user: User {
                    id: f[0].parse().unwrap_or(0),
                    username: String::new(),
                    token: f[3].to_string(),
                },
                chat: f[1].parse().unwrap_or(0),
                home: f[2].parse().unwrap_or(0),
                index,
                record: Mutex::new(Record::default()),
            })
        })
        .collect();
    if clients.len() != count {
        return Err(format!(
            "only {} clients of node {home} from {first}",
            clients.len()
        ));
    }
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                return;
            }
        }
        let _ = tx.send("exit".into());
    });
    emit(json!({"event": "loaded"}));
    let counters = Arc::new(Counters::default());
    let nodes = Arc::new(nodes);
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("connect") => connect_all(&clients, &nodes, &counters).await,
            Some("status") => emit(json!({
                "event": "status",
                "dropped": counters.dropped.load(SeqCst),
                "reconnected": counters.reconnected.load(SeqCst),
            })),
            Some("finish") => finish(&clients, &db_url).await?,
            Some("latency") => {
                let w: Vec<f64> = words[1..].iter().filter_map(|w| w.parse().ok()).collect();
                if w.len() != 4 {
                    return Err(format!("bad latency command {line:?}"));
                }
                latency(&clients, (w[0], w[1]), (w[2], w[3]));
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Connects every client to its home node, at most [`CONNECT_CONCURRENCY`]
/// handshakes at once; each then lives on in its own task.
async fn connect_all(
    clients: &[Arc<Client>],
    nodes: &Arc<Vec<SocketAddr>>,
    counters: &Arc<Counters>,
) {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for c in clients {
        let (c, nodes, counters, gate, tx) = (
            c.clone(),
            nodes.clone(),
            counters.clone(),
            gate.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let login = {
                let _permit = gate.acquire().await;
                tokio::time::timeout(Duration::from_secs(60), login(nodes[c.home], &c, None))
                    .await
                    .unwrap_or_else(|_| Err("no ready within 60 s".into()))
            };
            match login {
                Ok((conn, ready)) => {
                    let _ = tx.send(Ok(()));
                    let since = ready["last_event_id"].as_i64().unwrap_or(0);
                    live(c, conn, since, nodes, counters).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    }
    drop(tx);
    let (mut ok, mut errors) = (0, Vec::new());
    while let Some(r) = rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => errors.push(e),
        }
        if ok + errors.len() == clients.len() {
            break;
        }
    }
    errors.truncate(5);
    emit(json!({"event": "connected", "ok": ok, "failed": clients.len() - ok, "errors": errors}));
}

/// How a connection ended.
enum Ended {
    /// Closed by the server; its `retry_after_ms`, if it gave one.
    Closed(Option<u64>),
    /// Lost without a close frame.
    Lost,
}

/// Reads the connection; when it ends, reconnects elsewhere and goes on.
async fn live(
    c: Arc<Client>,
    mut conn: Conn,
    mut since: i64,
    nodes: Arc<Vec<SocketAddr>>,
    counters: Arc<Counters>,
) {
    let mut node = c.home;
    let mut rng = Rng::new(c.index as u64 + 1);
    loop {
        let ended = read(&c, &mut conn, &mut since).await;
        let told = match ended {
            Ended::Closed(ms) => ms,
            Ended::Lost => None,
        };
        {
            let mut r = c.record.lock().unwrap();
            if !r.dropped {
                r.dropped = true;
                r.retry_after_ms = told;
                counters.dropped.fetch_add(1, SeqCst);
            } else {
                counters.reconnected.fetch_sub(1, SeqCst);
            }
        }
        let mut wait = told.map(Duration::from_millis);
        let mut attempt = 0;
        conn = loop {
            let pause = wait.take().unwrap_or_else(|| backoff(attempt, &mut rng));
            tokio::time::sleep(pause).await;
            // Any other node; a real client's load balancer would pick one.
            let others: Vec<usize> = (0..nodes.len()).filter(|&n| n != node).collect();
            node = others[(c.index + attempt as usize) % others.len()];
            let began = wall_ms();
            let login =
                tokio::time::timeout(Duration::from_secs(30), login(nodes[node], &c, Some(since)));
            match login.await {
                Ok(Ok((conn, ready))) => {
                    let mut r = c.record.lock().unwrap();
                    let last = ready["last_event_id"].as_i64().unwrap_or(0);
                    r.resumed = Some((last, wall_ms(), began));
                    r.unrecovered += (ready["recovered"] != true) as u64;
                    counters.reconnected.fetch_add(1, SeqCst);
                    break conn;
                }
                Ok(Err(refused)) => {
                    c.record.lock().unwrap().failed_attempts += 1;
                    attempt += 1;
                    // Told when to come back (the line of session starts
                    // ahead): then, spread over half as long again.
                    wait = told_ms(&refused)
                        .map(|ms| Duration::from_millis(ms + rng.below(ms / 2 + 1)));
                }
                Err(_) => {
                    c.record.lock().unwrap().failed_attempts += 1;
                    attempt += 1;
                }
            }
        };
    }
}

/// The `retry_after_ms=N` a refusal or close reason carries.
fn told_ms(reason: &str) -> Option<u64> {
    reason
        .split_once("retry_after_ms=")
        .and_then(|(_, n)| n.parse().ok())
}

/// Full jitter: a random time in 0..min(cap, base × 2^attempt).
fn backoff(attempt: u32, rng: &mut Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    Duration::from_millis(rng.below(ceiling.as_millis() as u64 + 1))
}

/// The fields of a frame this client uses. Decoded into these alone, not a
/// JSON tree: each worker is one thread holding thousands of clients, and
/// building a tree of every 1,000-user presence snapshot the arrivals get
/// would make the surviving clients' frames wait behind that parsing,
/// which a real client (one per device) never does.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    payload: FramePayload<'a>,
}

#[derive(Deserialize, Default)]
struct FramePayload<'a> {
    event_id: Option<i64>,
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// Records message frames until the connection ends (answering pings:
/// tungstenite queues the pong and sends it on the next read).
async fn read(c: &Client, conn: &mut Conn, since: &mut i64) -> Ended {
    loop {
        let text = match conn.ws.next().await {
            None | Some(Err(_)) => return Ended::Lost,
            Some(Ok(Message::Close(frame))) => {
                let retry = frame.and_then(|f| told_ms(f.reason.as_str()));
                return Ended::Closed(retry);
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let now = wall_ms();
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        if let Some(event) = frame.payload.event_id {
            *since = (*since).max(event);
        }
        if frame.kind != "message" {
            continue;
        }
        let event = frame.payload.event_id.unwrap_or(0);
        let sent = frame
            .payload
            .content
            .as_deref()
            .and_then(|t| t.strip_prefix(MARK))
            .and_then(|t| t.split('~').next())
            .and_then(|ns| ns.parse::<f64>().ok());
        let mut r = c.record.lock().unwrap();
        r.received.push((event, now));
        if let (false, Some(ns)) = (r.dropped, sent) {
            // The stamp of the read that completed this frame (0 without
            // stamps: then the whole delay counts as the server's).
            let landed = conn.landed.load(Relaxed) as f64 / 1e6;
            let at_socket = if landed > 0.0 { landed.min(now) } else { now };
            let sent = ns / 1e6;
            r.latency
                .push((now, (now - sent) as f32, (at_socket - sent) as f32, event));
        }
    }
}

/// Waits until every client has the last message of its chat (or a
/// deadline), then compares what each received with the event log.
async fn finish(clients: &[Arc<Client>], db_url: &str) -> Result<(), String> {
    let db = connect_db(db_url).await;
    let chats: Vec<i64> = clients
        .iter()
        .map(|c| c.chat)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = db
        .query(
            "select chat_id, id from events where kind = 'message' and chat_id = any($1) order by id",
            &[&chats],
        )
        .await
        .map_err(|e| format!("events: {e}"))?;
    let mut log: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in rows {
        log.entry(row.get(0)).or_default().push(row.get(1));
    }
    let empty = Vec::new();
    let expected = |c: &Client| log.get(&c.chat).unwrap_or(&empty);
    let has_last = |c: &Client| {
        let last = expected(c).last().copied().unwrap_or(0);
        c.record
            .lock()
            .unwrap()
            .received
            .last()
            .is_some_and(|&(e, _)| e >= last)
            || last == 0
    };
    let deadline = Instant::now() + Duration::from_secs(30 + clients.len() as u64 / 500);
    while Instant::now() < deadline && !clients.iter().all(|c| has_last(c)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Outcome::default();
    for c in clients {
        out.add(&c.record.lock().unwrap(), expected(c));
    }
    emit(json!({"event": "finished", "outcome": out}));
    Ok(())
}

/// What a worker's clients received, compared with the event log; the
/// parent sums the workers'.
#[derive(Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Clients with every message of their chat once, in event order.
    pub complete: u64,
    pub missing: u64,
    pub repeated: u64,
    pub stray: u64,
    pub disorder: u64,
    /// Clients that lost their connection.
    pub dropped: u64,
    /// Resumes whose `ready.recovered` was false.
    pub unrecovered: u64,
    /// Reconnect attempts that failed (refused, or no `ready`).
    pub failed_attempts: u64,
    /// Wall-clock ms at which each client that lost its connection had recovered.
    pub recovered_ms: Vec<f64>,
    /// For each of those, ms from the start of its last attempt to its `ready`
    /// (the handshake and the session start's line and reads).
    pub attempt_to_ready_ms: Vec<f64>,
    /// And ms from that `ready` to having recovered (the presence snapshot's
    /// line, then the replay).
    pub ready_to_recovered_ms: Vec<f64>,
    /// What each client closed with 1001 was told to wait.
    pub retry_after_ms: Vec<u64>,
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.complete += other.complete;
        self.missing += other.missing;
        self.repeated += other.repeated;
        self.stray += other.stray;
        self.disorder += other.disorder;
        self.dropped += other.dropped;
        self.unrecovered += other.unrecovered;
        self.failed_attempts += other.failed_attempts;
        self.recovered_ms.extend(other.recovered_ms);
        self.attempt_to_ready_ms.extend(other.attempt_to_ready_ms);
        self.ready_to_recovered_ms
            .extend(other.ready_to_recovered_ms);
        self.retry_after_ms.extend(other.retry_after_ms);
    }

    fn add(&mut self, r: &Record, expected: &[i64]) {
        let got: Vec<i64> = r.received.iter().map(|&(e, _)| e).collect();
        let unique: HashSet<i64> = got.iter().copied().collect();
        let want: HashSet<i64> = expected.iter().copied().collect();
        self.missing += want.difference(&unique).count() as u64;
        self.stray += unique.difference(&want).count() as u64;
        self.repeated += (got.len() - unique.len()) as u64;
        self.disorder += got.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        self.complete += (got == expected) as u64;
        self.unrecovered += r.unrecovered;
        self.failed_attempts += r.failed_attempts;
        if !r.dropped {
            return;
        }
        self.dropped += 1;
        self.retry_after_ms.extend(r.retry_after_ms);
        // Recovered once it has every message of its chat up to what its
        // resume's `ready` reported: replay arrives in order, so when the
        // last of those arrived (or at `ready`, if it had them already).
        if let Some((upto, ready_at, began)) = r.resumed {
            let last = expected.iter().rev().find(|&&e| e <= upto);
            let arrived = last.and_then(|&e| r.received.iter().find(|&&(g, _)| g == e));
            match (last, arrived) {
                (Some(_), None) => {}
                (_, arrived) => {
                    let recovered = arrived.map_or(ready_at, |&(_, at)| at.max(ready_at));
                    self.recovered_ms.push(recovered);
                    self.attempt_to_ready_ms.push(ready_at - began);
                    self.ready_to_recovered_ms.push(recovered - ready_at);
                }
            }
        }
    }
}

/// Send-to-receive of the clients that never lost their connection: those
/// that arrived within `storm` (with when, in ms after its start, the
/// message's event id and its send-to-socket), and within `before` (wall ms).
fn latency(clients: &[Arc<Client>], storm: (f64, f64), before: (f64, f64)) {
    let (mut in_storm, mut in_before) = (Vec::new(), Vec::new());
    let (mut storm_at, mut storm_event, mut storm_socket) = (Vec::new(), Vec::new(), Vec::new());
    for c in clients {
        let r = c.record.lock().unwrap();
        if r.dropped {
            continue;
        }
        for &(at, ms, socket_ms, event) in &r.latency {
            let round = |ms: f32| (ms * 100.0).round() / 100.0;
            let ms = round(ms);
            if at >= storm.0 && at <= storm.1 {
                in_storm.push(ms);
                storm_socket.push(round(socket_ms));
                storm_at.push((at - storm.0).round());
                storm_event.push(event);
            } else if at >= before.0 && at < before.1 {
                in_before.push(ms);
            }
        }
    }
    emit(json!({
        "event": "latency",
        "storm": in_storm,
        "storm_at": storm_at,
        "storm_event": storm_event,
        "storm_socket": storm_socket,
        "steady": in_before,
    }));
}
