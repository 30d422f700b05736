//! `recovery`: `--clients` WebSocket clients in `--chats` chats (split
//! evenly) connect and note `ready.last_event_id`, then all disconnect
//! together; `--missed` messages are posted over REST meanwhile (by one more
//! member per chat, `--concurrency` requests at a time, round-robin over the
//! chats); then all reconnect together with `since=<their last_event_id>`.
//! Figures: the time until every client has received every message of its
//! chat sent while it was away, replayed frames/s over that time, and the
//! send phase's rate for context. Checks: `ready.recovered` is true for all,
//! and no client misses or repeats a message (compared by message id with
//! what the server answered to the POSTs), and each gets them in event order.
//!
//! Side by side: the same server replaying from the event log only
//! (`ws.replay_cache_bytes: 0`), what a node does when the missed events
//! predate what it holds in memory.
//!
//! Clients behave as real ones should: a refused handshake (503 while the
//! server's pool is exhausted) or a socket closed before catching up (1011
//! when a replay query could not get a connection) is retried with backoff,
//! resuming from the last event seen. How many had to is reported.

use crate::common::{
    BENCH_CONFIG, Env, Percentiles, ServerOpts, User, Ws, connect_db, seed_chat, seed_users,
    settle_cpu, source_ip, ws_login,
};
use crate::report::Report;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SCENARIO: &str = "recovery";
const CONNECT_CONCURRENCY: usize = 64;
/// A server is settled when it uses at most this much of a core (2 clock
/// ticks per 200 ms).
const QUIET: f64 = 0.125;
/// After its last expected message a client listens this long for repeats.
const GRACE: Duration = Duration::from_millis(500);

pub async fn run(env: &Env, report: &mut Report) {
    let n = env.opts.num("clients", 1000, 20).max(1) as usize;
    let missed = env.opts.num("missed", 10000, 200);
    let n_chats = (env.opts.num("chats", 10, 2).max(1) as usize).min(n);
    let concurrency = env.opts.num("concurrency", 16, 4).max(1) as usize;
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- recovery --clients {n} --missed {missed} --chats {n_chats} \
             --concurrency {concurrency} --repeats {}",
            env.opts.repeats
        ),
    );
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let users = seed_users(env, &db, "recovery", n + n_chats).await;
    let (clients, senders) = users.split_at(n);
    let mut chats = Vec::new();
    for (k, sender) in senders.iter().enumerate() {
        let members: Vec<i64> = std::iter::once(sender.id)
            .chain(clients.iter().skip(k).step_by(n_chats).map(|u| u.id))
            .collect();
        chats.push(seed_chat(&db, &format!("recovery {k}"), &members).await);
    }
    let case = format!("N={n} missed={missed}");
    // The ceiling-less scenario's reference: the same server replaying from
    // the event log only, which is what a node does when the missed events
    // predate what it holds in memory (`ws.replay_cache_bytes`).
    // Both through the server's --config, which wins over CONFIG_PATH.
    let systems = [
        (CHATAPP, BENCH_CONFIG.to_string()),
        (
            LOG_REPLAY,
            format!("{BENCH_CONFIG}ws:\n  replay_cache_bytes: 0\n"),
        ),
    ];
    for _ in 0..env.opts.repeats {
        for (system, config) in &systems {
            let server = env
                .server(
                    &db_url,
                    ServerOpts {
                        config: config.clone(),
                        ..ServerOpts::default()
                    },
                )
                .await;
            let setup = Setup {
                addr: server.addr(),
                url: server.url.clone(),
                pid: server.pid(),
                clients,
                senders,
                chats: &chats,
                missed,
                concurrency,
            };
            match once(&setup).await {
                Ok(r) => record(report, &case, system, &r),
                Err(e) => report.check(SCENARIO, false, format!("{case} {system}: {e}")),
            }
        }
    }
    let median = |system| report.median(SCENARIO, &case, system, "catch-up time");
    if let (Some(ours), Some(log)) = (median(CHATAPP), median(LOG_REPLAY)) {
        eprintln!(
            "recovery {case}: log replay / memory replay catch-up time {:.2}",
            log / ours
        );
    }
}

const CHATAPP: &str = "chatapp";
const LOG_REPLAY: &str = "log replay";

struct Setup<'a> {
    addr: SocketAddr,
    url: String,
    pid: Option<u32>,
    clients: &'a [User],
    senders: &'a [User],
    chats: &'a [i64],
    missed: u64,
    concurrency: usize,
}

struct Outcome {
    clients: usize,
    recovered: usize,
    complete: usize,
    missing: u64,
    repeated: u64,
    stray: u64,
    disorder: u64,
    frames: u64,
    send_rate: f64,
    all_ready_s: f64,
    catch_up_s: f64,
    median_catch_up_s: f64,
    /// Clients that had to reconnect more than once.
    retried: usize,
    refused: u64,
    dropped: u64,
    last_error: Option<String>,
}

fn record(report: &mut Report, case: &str, system: &str, r: &Outcome) {
    report.check(
        SCENARIO,
        r.recovered == r.clients,
        format!(
            "{case} {system}: {}/{} reconnects had ready.recovered = true",
            r.recovered, r.clients
        ),
    );
    report.check(
        SCENARIO,
        r.complete == r.clients,
        format!(
            "{case} {system}: {}/{} clients got every message of their chat sent while away exactly once, \
             in event order ({} frames replayed; {} missing, {} repeated, {} not of their chat, \
             {} out of order)",
            r.complete, r.clients, r.frames, r.missing, r.repeated, r.stray, r.disorder
        ),
    );
    if r.retried > 0 {
        eprintln!(
            "recovery {case} {system}: {} clients retried: {} handshakes refused, {} sockets closed before \
             catching up (e.g. {})",
            r.retried,
            r.refused,
            r.dropped,
            r.last_error.as_deref().unwrap_or("?")
        );
    }
    let add = |report: &mut Report, metric: &str, unit: &str, v: f64| {
        report.add(SCENARIO, case, system, metric, unit, v)
    };
    add(report, "catch-up time", "s", r.catch_up_s);
    add(report, "median client catch-up", "s", r.median_catch_up_s);
    add(report, "all ready", "s", r.all_ready_s);
    add(
        report,
        "clients that had to retry",
        "clients",
        r.retried as f64,
    );
    add(report, "handshakes refused", "count", r.refused as f64);
    add(report, "closed before caught up", "count", r.dropped as f64);
    add(
        report,
        "replayed frames/s",
        "1/s",
        r.frames as f64 / r.catch_up_s,
    );
    add(report, "send phase", "messages/s", r.send_rate);
}

async fn once(s: &Setup<'_>) -> Result<Outcome, String> {
    let n = s.clients.len();
    let n_chats = s.chats.len();
    // Connect everyone and note where each stands.
    let timeout = Duration::from_secs(60 + n as u64 / 50);
    let connected = tokio::time::timeout(
        timeout,
        futures_util::stream::iter(s.clients.iter().enumerate())
            .map(|(i, user)| async move {
                let (ws, ready) = ws_login(s.addr, source_ip(i), user, None)
                    .await
                    .map_err(|e| format!("client {i}: {e}"))?;
                let since = ready["last_event_id"]
                    .as_i64()
                    .ok_or(format!("client {i}: ready without last_event_id: {ready}"))?;
                Ok::<_, String>((ws, since))
            })
            .buffered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| format!("{n} clients did not connect within {timeout:?}"))?;
    let mut sockets = Vec::new();
    let mut since = Vec::new();
    for c in connected {
        let (ws, last) = c?;
        sockets.push(ws);
        since.push(last);
    }
    settle_cpu(s.pid.as_slice(), QUIET, Duration::from_secs(60)).await;
    // All go away together.
    drop(sockets);
    settle_cpu(s.pid.as_slice(), QUIET, Duration::from_secs(60)).await;

    let sent = send_phase(s).await?;
    let send_rate = s.missed as f64 / sent.1;
    let sent_ids = sent.0;
    settle_cpu(s.pid.as_slice(), QUIET, Duration::from_secs(60)).await;

    // All come back together.
    let expected_frames: u64 = (0..n).map(|i| sent_ids[i % n_chats].len() as u64).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20 + expected_frames / 5_000);
    let started = Instant::now();
    let tasks: Vec<_> = s
        .clients
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let (addr, user, since) = (s.addr, user.clone(), since[i]);
            let expected = sent_ids[i % n_chats].len();
            tokio::spawn(catch_up(addr, i, user, since, expected, started, deadline))
        })
        .collect();
    let mut caught = Vec::new();
    for t in tasks {
        caught.push(t.await.map_err(|e| e.to_string())??);
    }
    let mut out = Outcome {
        clients: n,
        recovered: 0,
        complete: 0,
        missing: 0,
        repeated: 0,
        stray: 0,
        disorder: 0,
        frames: expected_frames,
        send_rate,
        all_ready_s: 0.0,
        catch_up_s: 0.0,
        median_catch_up_s: Percentiles::new(caught.iter().map(|c| c.done_s).collect()).at(0.5),
        retried: 0,
        refused: 0,
        dropped: 0,
        last_error: None,
    };
    for (i, c) in caught.iter().enumerate() {
        let want = &sent_ids[i % n_chats];
        let unique: HashSet<i64> = c.ids.iter().copied().collect();
        let matched = unique.intersection(want).count() as u64;
        let missing = want.len() as u64 - matched;
        let repeated = (c.ids.len() - unique.len()) as u64;
        let stray = (unique.len() as u64) - matched;
        out.recovered += c.recovered as usize;
        out.missing += missing;
        out.repeated += repeated;
        out.stray += stray;
        out.disorder += c.disorder;
        if missing == 0 && repeated == 0 && stray == 0 && c.disorder == 0 {
            out.complete += 1;
        }
        out.all_ready_s = out.all_ready_s.max(c.ready_s);
        out.retried += (c.refused + c.dropped > 0) as usize;
        out.refused += c.refused;
        out.dropped += c.dropped;
        if c.last_error.is_some() {
            out.last_error = c.last_error.clone();
        }
        out.catch_up_s = out.catch_up_s.max(c.done_s);
    }
    drop(caught);
    settle_cpu(s.pid.as_slice(), QUIET, Duration::from_secs(60)).await;
    Ok(out)
}

/// Posts `missed` messages round-robin over the chats, `concurrency` at a
/// time; returns the message ids per chat and the seconds it took.
async fn send_phase(s: &Setup<'_>) -> Result<(Vec<HashSet<i64>>, f64), String> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + s.missed / 50);
    let url = format!("{}/api/v1/messages", s.url);
    let chats: Arc<Vec<(i64, String)>> = Arc::new(
        s.chats
            .iter()
            .zip(s.senders)
            .map(|(&c, u)| (c, format!("Bearer {}", u.token)))
            .collect(),
    );
    let missed = s.missed;
    let tasks: Vec<_> = (0..s.concurrency)
        .map(|_| {
            let (next, url, chats) = (next.clone(), url.clone(), chats.clone());
            tokio::spawn(tokio::time::timeout_at(deadline, async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= missed {
                        return Ok::<_, String>(ids);
                    }
                    let k = i as usize % chats.len();
                    let (chat, auth) = &chats[k];
                    let body = serde_json::json!({
                        "chat_id": chat,
                        "content": format!("recovery message {i} of a benchmark, of ordinary length"),
                    });
                    let response = http
                        .post(&url)
                        .header("authorization", auth)
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| format!("POST /messages: {e}"))?;
                    let status = response.status();
                    let reply: serde_json::Value = response
                        .json()
                        .await
                        .map_err(|e| format!("POST /messages: {e}"))?;
                    let id = reply["id"]
                        .as_i64()
                        .filter(|_| status == 201)
                        .ok_or(format!("POST /messages answered {status}: {reply}"))?;
                    ids.push((k, id));
                }
            }))
        })
        .collect();
    let mut per_chat = vec![HashSet::new(); s.chats.len()];
    for t in tasks {
        let ids = t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the send phase did not finish in time".to_string())??;
        for (k, id) in ids {
            per_chat[k].insert(id);
        }
    }
    Ok((per_chat, started.elapsed().as_secs_f64()))
}

struct Caught {
    /// Every successful (re)connect had `ready.recovered` true.
    recovered: bool,
    /// Message ids in the order received.
    ids: Vec<i64>,
    disorder: u64,
    /// Handshakes refused (e.g. 503 while the pool is exhausted).
    refused: u64,
    /// Sockets closed by the server after `ready`, before catching up.
    dropped: u64,
    last_error: Option<String>,
    ready_s: f64,
    done_s: f64,
}

/// Reconnects with `since` and reads until `expected` messages arrived, then
/// listens a little longer for repeats. Like a real client, it retries with
/// backoff when the handshake is refused or the socket is closed before it
/// has caught up, resuming from the last event it saw.
async fn catch_up(
    addr: SocketAddr,
    i: usize,
    user: User,
    since: i64,
    expected: usize,
    started: Instant,
    deadline: tokio::time::Instant,
) -> Result<Caught, String> {
    let mut c = Caught {
        recovered: true,
        ids: Vec::with_capacity(expected),
        disorder: 0,
        refused: 0,
        dropped: 0,
        last_error: None,
        ready_s: f64::NAN,
        done_s: 0.0,
    };
    let mut last_event = since;
    let on_frame = |c: &mut Caught, last_event: &mut i64, text: &str| {
        if str_field(text, "\"type\"") != Some("message") {
            return;
        }
        let (Some(id), Some(event)) = (
            num_field(text, "\"message_id\""),
            num_field(text, "\"event_id\""),
        ) else {
            return;
        };
        if event <= *last_event {
            c.disorder += 1;
        }
        *last_event = event;
        c.ids.push(id);
    };
    let mut attempt = 0u32;
    let mut ws = loop {
        if attempt > 0 {
            // 100 ms doubling to 3.2 s, spread by client.
            let backoff = Duration::from_millis((100 << attempt.min(6)) + (i as u64 * 37) % 100);
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(format!(
                    "client {i} had not caught up by the deadline ({} of {expected}; last error: {})",
                    c.ids.len(),
                    c.last_error.as_deref().unwrap_or("none")
                ));
            }
            tokio::time::sleep(backoff).await;
        }
        attempt += 1;
        let login = tokio::time::timeout_at(
            deadline,
            ws_login(addr, source_ip(i), &user, Some(last_event)),
        );
        let (mut ws, ready) = match login.await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                c.refused += 1;
                c.last_error = Some(e);
                continue;
            }
            Err(_) => return Err(format!("client {i}: no ready by the deadline")),
        };
        if c.ready_s.is_nan() {
            c.ready_s = started.elapsed().as_secs_f64();
        }
        c.recovered &= ready["recovered"] == true;
        let mut broken = None;
        while c.ids.len() < expected {
            match next_text(&mut ws, Some(deadline)).await {
                Ok(text) => on_frame(&mut c, &mut last_event, &text),
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        match broken {
            None => break ws,
            Some(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "client {i} had not caught up by the deadline ({} of {expected}): {e}",
                    c.ids.len()
                ));
            }
            Some(e) => {
                c.dropped += 1;
                c.last_error = Some(e);
            }
        }
    };
    c.done_s = started.elapsed().as_secs_f64();
    let grace = tokio::time::Instant::now() + GRACE;
    while let Ok(text) = next_text(&mut ws, Some(grace)).await {
        on_frame(&mut c, &mut last_event, &text);
    }
    Ok(c)
}

/// The next text frame (answering pings); `Err` at `until` or on close.
async fn next_text(ws: &mut Ws, until: Option<tokio::time::Instant>) -> Result<String, String> {
    loop {
        let next = match until {
            Some(t) => tokio::time::timeout_at(t, ws.next())
                .await
                .map_err(|_| "timed out".to_string())?,
            None => ws.next().await,
        };
        match next.ok_or("socket closed")?.map_err(|e| e.to_string())? {
            Message::Text(t) => return Ok(t.as_str().to_string()),
            Message::Ping(p) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            Message::Close(c) => return Err(format!("closed: {c:?}")),
            _ => {}
        }
    }
}

/// The string value of the first `key` (quoted) in a JSON text.
fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = after_key(text, key)?.strip_prefix('"')?;
    rest.split('"').next()
}

/// The integer value of the first `key` (quoted) in a JSON text.
fn num_field(text: &str, key: &str) -> Option<i64> {
    let rest = after_key(text, key)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}
