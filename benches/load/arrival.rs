//! `arrival`: N users connect at once (64 handshakes in flight), each until
//! its `ready`, in two shapes measured in the same run on the same server:
//! the N members of one chat ("big room") and N users each in a chat of
//! their own ("separate chats"). Every arrival used to be announced to every
//! member already connected, O(N²) `presence` frames in the big room; chats
//! above `ws.presence_max_members` now get none, so the big room should
//! connect about as fast as separate chats.
//!
//! Per shape: the time until the last `ready`, connects/s, the `presence`
//! frames each member heard until the server went quiet (the one
//! `presence_snapshot` per connection is counted apart), how long it took to
//! go quiet, and the server's CPU per connect. The shapes alternate which
//! goes first from one repeat to the next.

use crate::common::{
    BENCH_CONFIG, Env, ServerOpts, User, connect_db, join, proc_cpu_secs, seed_chat, seed_users,
    settle, source_ip, ws_login,
};
use crate::report::Report;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const SCENARIO: &str = "arrival";
const CONNECT_CONCURRENCY: usize = 64;
const BIG_ROOM: &str = "big room";
const SEPARATE: &str = "separate chats";

pub async fn run(env: &Env, report: &mut Report) {
    let sizes = env.opts.list("users", &[10_000], &[200]);
    // Smoke sizes are far below the default: a lower limit keeps the big
    // room above it, so smoke runs the path measured.
    let max_members = env.opts.num("presence-max-members", 1_000, 50);
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- arrival --users {} --presence-max-members {max_members} --repeats {}",
            join(&sizes),
            env.opts.repeats
        ),
    );
    for &n in &sizes {
        let n = n as usize;
        let case = format!("N={n}");
        let db_url = env.database().await;
        let db = connect_db(&db_url).await;
        let room = seed_users(env, &db, "room", n).await;
        let solo = seed_users(env, &db, "solo", n).await;
        seed_chat(
            &db,
            "big room",
            &room.iter().map(|u| u.id).collect::<Vec<_>>(),
        )
        .await;
        seed_solo_chats(&db, &solo).await;
        let config = format!("{BENCH_CONFIG}ws:\n  presence_max_members: {max_members}\n");
        let server = env
            .server(
                &db_url,
                ServerOpts {
                    config,
                    ..ServerOpts::default()
                },
            )
            .await;
        for repeat in 0..env.opts.repeats {
            let mut shapes = [(BIG_ROOM, &room), (SEPARATE, &solo)];
            if repeat % 2 == 1 {
                shapes.reverse();
            }
            for (shape, users) in shapes {
                eprintln!("arrival {case} {shape}");
                let result = run_case(server.addr(), server.pid(), users).await;
                record(report, &case, shape, result);
            }
        }
    }
    if let Some(&n) = sizes.iter().max() {
        judge(report, &format!("N={n}"));
    }
}

/// A chat of its own for each user, in one statement.
async fn seed_solo_chats(db: &tokio_postgres::Client, users: &[User]) {
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    db.execute(
        "with c as (
             insert into chats (name, is_group, creator_id)
             select 'solo ' || u, true, u from unnest($1::bigint[]) u
             returning id, creator_id
         )
         insert into chat_members (chat_id, user_id, is_admin) select id, creator_id, true from c",
        &[&ids],
    )
    .await
    .expect("seed solo chats");
}

struct CaseResult {
    connect_s: f64,
    settle_s: f64,
    presence_per_member: f64,
    snapshots: u64,
    closed: u64,
    server_cpu_ms: f64,
    members: usize,
}

fn record(report: &mut Report, case: &str, shape: &str, result: Result<CaseResult, String>) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            report.check(SCENARIO, false, format!("{case} {shape}: {e}"));
            return;
        }
    };
    report.check(
        SCENARIO,
        r.snapshots == r.members as u64 && r.closed == 0,
        format!(
            "{case} {shape}: {} members got `ready`; {} `presence_snapshot` frames, {} sockets closed early",
            r.members, r.snapshots, r.closed
        ),
    );
    let mut add = |metric: &str, unit: &str, v: f64| {
        report.add(SCENARIO, case, shape, metric, unit, v);
    };
    add("connect time", "s", r.connect_s);
    add("connects/s", "1/s", r.members as f64 / r.connect_s);
    add(
        "presence frames per member",
        "frames",
        r.presence_per_member,
    );
    add("settle time", "s", r.settle_s);
    add("server CPU per connect", "ms", r.server_cpu_ms);
}

fn judge(report: &mut Report, case: &str) {
    let connect = |r: &Report, shape: &str| r.median(SCENARIO, case, shape, "connect time");
    if let (Some(big), Some(separate)) = (connect(report, BIG_ROOM), connect(report, SEPARATE)) {
        report.target(
            SCENARIO,
            &format!("{case} big room / separate chats connect time"),
            big / separate,
            "<=",
            2.0,
        );
    }
}

/// Frames the members of one case heard after their `ready`.
#[derive(Default)]
struct Heard {
    frames: AtomicU64,
    presence: AtomicU64,
    snapshots: AtomicU64,
    closed: AtomicU64,
}

async fn run_case(
    addr: SocketAddr,
    pid: Option<u32>,
    users: &[User],
) -> Result<CaseResult, String> {
    let n = users.len();
    let heard = Arc::new(Heard::default());
    let cpu_before = pid.and_then(proc_cpu_secs);
    let started = Instant::now();
    let timeout = Duration::from_secs(60 + n as u64 / 50);
    let connected = tokio::time::timeout(
        timeout,
        futures_util::stream::iter(users.iter().enumerate())
            .map(|(i, user)| {
                let heard = heard.clone();
                async move {
                    let (ws, _) = ws_login(addr, source_ip(i), user, None)
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    Ok::<_, String>(tokio::spawn(listen(ws, heard)))
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| format!("{n} clients did not connect within {timeout:?}"));
    let connect_s = started.elapsed().as_secs_f64();
    let mut readers = Readers(Vec::new());
    let mut failed = None;
    for c in connected? {
        match c {
            Ok(reader) => readers.0.push(reader),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let quiet_within = Duration::from_secs(60 + n as u64 / 20);
    let settle_s = settle(&heard.frames, pid, quiet_within).await;
    let server_cpu_ms = match (cpu_before, pid.and_then(proc_cpu_secs)) {
        (Some(before), Some(after)) => (after - before) * 1e3 / n as f64,
        _ => f64::NAN,
    };
    let result = CaseResult {
        connect_s,
        settle_s,
        presence_per_member: heard.presence.load(Relaxed) as f64 / n as f64,
        snapshots: heard.snapshots.load(Relaxed),
        closed: heard.closed.load(Relaxed),
        server_cpu_ms,
        members: n,
    };
    // Everyone leaves; the next case starts once the server is done with that.
    drop(readers);
    settle(&heard.frames, pid, quiet_within).await;
    Ok(result)
}

/// The members' reading tasks, stopped (closing their sockets) on drop.
struct Readers(Vec<JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

/// A member's reading loop: counts what it hears until its socket closes.
async fn listen(mut ws: crate::common::Ws, heard: Arc<Heard>) {
    while let Some(Ok(message)) = ws.next().await {
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        heard.frames.fetch_add(1, Relaxed);
        // Substrings, not parsing: the old server sent N² of these.
        if text.contains("\"type\":\"presence_snapshot\"") {
            heard.snapshots.fetch_add(1, Relaxed);
        } else if text.contains("\"type\":\"presence\"") {
            heard.presence.fetch_add(1, Relaxed);
        }
    }
    heard.closed.fetch_add(1, Relaxed);
}
