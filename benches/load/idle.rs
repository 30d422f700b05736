//! `idle`: N authenticated WebSocket connections that send nothing but
//! answers to the server's pings. Measures the server's resident memory per
//! idle connection, the connect rate, that keep-alive pings hold every socket
//! past the idle timeout, and the round trip of an application ping.
//!
//! One process cannot hold more than ~19,900 sockets here (hard open-file
//! limit 20,000), so above `--per-node` connections the scenario runs
//! ceil(N / per-node) `chatapp serve` nodes on one database (one service) and
//! as many client processes: this binary re-executed as `idle-worker`, driven
//! over its stdin/stdout with one JSON line per report.
//!
//! Parent -> worker (stdin): `connect`, `status`, `ping <spread_ms>`, `exit`.
//! Worker -> parent (stdout): `{"event":"loaded"|"connected"|"status"|"pinged", ...}`.

use crate::common::{
    BENCH_CONFIG, Env, Opts, Percentiles, Server, ServerOpts, User, Ws, connect_db, seed_users,
    source_ip, ws_login,
};
use crate::report::Report;
use crate::worker::{Worker, emit, floats};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SCENARIO: &str = "idle";
pub const WORKER: &str = "idle-worker";

/// What one size needs beyond the number of connections.
struct Params {
    per_node: u64,
    ping_interval_ms: u64,
    idle_timeout_ms: u64,
    hold_ms: u64,
    /// Application pings per second in the ping round: each socket pings
    /// once, so N sockets take N / rate seconds.
    ping_rate: u64,
    concurrency: u64,
    settle_ms: u64,
    /// After the hold, how long to wait (at most) for the server's presence
    /// tracking to catch up with the connects before the ping round.
    presence_wait_ms: u64,
}

pub async fn run(env: &Env, report: &mut Report) {
    let sizes = env.opts.list("connections", &[10_000, 50_000], &[200]);
    let smoke = env.smoke();
    // Smoke runs two nodes and two workers so the multi-process path never rots.
    let per_node = env.opts.num("per-node", 18_000, 100).max(1);
    let ping_interval_ms = env.opts.num("ping-interval-ms", 3_000, 300);
    let idle_timeout_ms = env.opts.num("idle-timeout-ms", 10_000, 1_000);
    let p = Params {
        per_node,
        ping_interval_ms,
        idle_timeout_ms,
        // Every socket lives at least this long after the last one connected.
        hold_ms: {
            let past_timeout = idle_timeout_ms + idle_timeout_ms / 5;
            env.opts.num("hold-ms", past_timeout, past_timeout)
        },
        // A client pings when it suspects its connection, not in lockstep
        // with 50,000 others: the round measures the answer time of a busy
        // node, not how fast it absorbs a synchronized burst (at 25,000
        // pings/s on 2 cores the clients and nodes saturate both cores and
        // the figure is queueing; BENCHMARKS.md shows both).
        ping_rate: env.opts.num("ping-rate", 5_000, 1_000).max(1),
        // Handshakes in flight per client process: a few per pooled database
        // connection (each handshake runs two queries); more only queue in the pool.
        concurrency: env.opts.num("connect-concurrency", 64, 32).max(1),
        settle_ms: if smoke { 500 } else { 2_000 },
        presence_wait_ms: env.opts.num("presence-wait-ms", 0, 0),
    };
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- idle --connections {} --per-node {} --ping-interval-ms {} \
             --idle-timeout-ms {} --hold-ms {} --ping-rate {} --connect-concurrency {}{} --repeats {}",
            sizes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            p.per_node,
            p.ping_interval_ms,
            p.idle_timeout_ms,
            p.hold_ms,
            p.ping_rate,
            p.concurrency,
            if p.presence_wait_ms > 0 {
                format!(" --presence-wait-ms {}", p.presence_wait_ms)
            } else {
                String::new()
            },
            env.opts.repeats
        ),
    );
    let config = format!(
        "{BENCH_CONFIG}ws:\n  ping_interval_ms: {}\n  idle_timeout_ms: {}\n",
        p.ping_interval_ms, p.idle_timeout_ms
    );
    for _ in 0..env.opts.repeats {
        for &n in &sizes {
            if let Err(e) = one_size(env, report, n as usize, &p, &config).await {
                report.check(SCENARIO, false, format!("N={n}: {e}"));
            }
        }
    }
    for &n in &sizes {
        let case = case_name(n as usize, &p);
        if let Some(kib) = report.median(SCENARIO, &case, "chatapp", "server RSS/conn") {
            report.target(
                SCENARIO,
                &format!("{case} server KiB per idle connection"),
                kib,
                "<=",
                10.0,
            );
        }
        let metric = rtt_metric(&p, "p99");
        if let Some(p99) = report.median(SCENARIO, &case, "chatapp", &metric) {
            report.target(
                SCENARIO,
                &format!("{case} ping round trip p99 ms"),
                p99,
                "<=",
                100.0,
            );
        }
    }
}

fn nodes_for(n: usize, p: &Params) -> usize {
    n.div_ceil(p.per_node as usize).max(1)
}

fn case_name(n: usize, p: &Params) -> String {
    let k = nodes_for(n, p);
    format!("N={n} {k}node{}", if k == 1 { "" } else { "s" })
}

/// How long the ping round of `n` sockets lasts.
fn spread_ms(n: usize, p: &Params) -> u64 {
    (n as u64 * 1000).div_ceil(p.ping_rate)
}

fn rtt_metric(p: &Params, which: &str) -> String {
    format!("ping rtt {which} ({}/s)", p.ping_rate)
}

async fn one_size(
    env: &Env,
    report: &mut Report,
    n: usize,
    p: &Params,
    config: &str,
) -> Result<(), String> {
    let case = case_name(n, p);
    let k = nodes_for(n, p);
    eprintln!("idle {case}: seeding {n} users, starting {k} node(s)");
    // A fresh database per size: no presence rows left by the last size's nodes.
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let users = seed_users(env, &db, "idle", n).await;
    let tokens = write_tokens(env, &users);
    drop(users);
    let mut nodes: Vec<Server> = Vec::new();
    let node_count = if env.opts.server.is_some() { 1 } else { k };
    for _ in 0..node_count {
        nodes.push(
            env.server(
                &db_url,
                ServerOpts {
                    config: config.to_string(),
                    ..ServerOpts::default()
                },
            )
            .await,
        );
    }
    let http = reqwest::Client::new();
    // Workers load their tokens while the nodes settle.
    let mut workers = Vec::new();
    for w in 0..k {
        let first = n * w / k;
        let count = n * (w + 1) / k - first;
        workers.push(Worker::spawn(
            WORKER,
            &[
                ("node", nodes[w % nodes.len()].addr().to_string()),
                ("tokens", tokens.display().to_string()),
                ("first", first.to_string()),
                ("count", count.to_string()),
                ("concurrency", p.concurrency.to_string()),
            ],
        )?);
    }
    for w in &mut workers {
        w.expect("loaded", Duration::from_secs(60)).await?;
    }
    tokio::time::sleep(Duration::from_millis(p.settle_ms)).await;
    let rss_before = rss_sum(&nodes);

    // Connect: every worker at once, each with `concurrency` handshakes in flight.
    let started = Instant::now();
    for w in &mut workers {
        w.send("connect")?;
    }
    let connect_limit = Duration::from_secs(30 + n as u64 / 250);
    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut errors = Vec::new();
    let mut latencies = Vec::new();
    let mut client_growth_kib = 0u64;
    for w in &mut workers {
        let r = w.expect("connected", connect_limit).await?;
        ok += r["ok"].as_u64().unwrap_or(0);
        failed += r["failed"].as_u64().unwrap_or(0);
        if let Some(e) = r["errors"].as_array() {
            errors.extend(e.iter().filter_map(|e| e.as_str().map(String::from)));
        }
        latencies.extend(floats(&r["latency_ms"]));
        client_growth_kib += r["rss_kib"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(r["rss_before_kib"].as_u64().unwrap_or(0));
    }
    let connected_at = Instant::now();
    let connect_secs = started.elapsed().as_secs_f64();
    report.check(
        SCENARIO,
        ok == n as u64,
        format!(
            "{case}: {ok} of {n} connected and got `ready` ({failed} failed{})",
            errors
                .first()
                .map(|e| format!(", e.g. {e}"))
                .unwrap_or_default()
        ),
    );
    report.add(
        SCENARIO,
        &case,
        "chatapp",
        "connections/s",
        "1/s",
        ok as f64 / connect_secs,
    );
    let lat = Percentiles::new(latencies);
    report.add(
        SCENARIO,
        &case,
        "chatapp",
        "connect-ready p50",
        "ms",
        lat.at(0.5),
    );
    report.add(
        SCENARIO,
        &case,
        "chatapp",
        "connect-ready p99",
        "ms",
        lat.at(0.99),
    );

    // Settled: memory, and where the connections landed.
    tokio::time::sleep(Duration::from_millis(p.settle_ms)).await;
    let rss_connected = rss_sum(&nodes);
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        let growth = after.saturating_sub(before) as f64;
        report.add(
            SCENARIO,
            &case,
            "chatapp",
            "server RSS growth",
            "MiB",
            growth / 1024.0,
        );
        report.add(
            SCENARIO,
            &case,
            "chatapp",
            "server RSS/conn",
            "KiB",
            growth / ok.max(1) as f64,
        );
    }
    report.add(
        SCENARIO,
        &case,
        "client",
        "client RSS/conn",
        "KiB",
        client_growth_kib as f64 / ok.max(1) as f64,
    );
    // Later checks follow the sockets that connected; a failed connect fails the check above.
    let counts = node_counts(&http, &nodes).await;
    report.check(
        SCENARIO,
        counts.iter().sum::<u64>() == ok,
        format!("{case}: /ws/health connections per node {counts:?} sum to the {ok} connected"),
    );
    eprintln!(
        "idle {case}: connected in {connect_secs:.1}s; per node {counts:?}; presence rows written so far: {}",
        presence_rows(&db).await
    );

    // Hold: nothing but the server's pings and the clients' pongs, past the idle timeout.
    let hold = Cpu::sample(&nodes, &workers);
    tokio::time::sleep_until(connected_at + Duration::from_millis(p.hold_ms)).await;
    let hold = hold.until_now(&nodes, &workers);
    if let Some(server) = hold.server {
        report.add(
            SCENARIO,
            &case,
            "chatapp",
            "server CPU during hold",
            "% core",
            server,
        );
    }
    eprintln!(
        "idle {case}: hold {}; presence rows written: {}",
        hold.describe(),
        presence_rows(&db).await
    );
    let mut open = 0u64;
    let mut closed: BTreeMap<String, u64> = BTreeMap::new();
    for w in &mut workers {
        w.send("status")?;
        let r = w.expect("status", Duration::from_secs(30)).await?;
        open += r["open"].as_u64().unwrap_or(0);
        merge_counts(&mut closed, &r["closed"]);
    }
    let counts = node_counts(&http, &nodes).await;
    report.check(
        SCENARIO,
        open == ok && counts.iter().sum::<u64>() == ok,
        format!(
            "{case}: after {:.1}s idle (idle timeout {:.1}s, server ping every {:.1}s) {open} of {ok} \
             sockets still open (closed: {closed:?}); server holds {counts:?}",
            p.hold_ms as f64 / 1e3,
            p.idle_timeout_ms as f64 / 1e3,
            p.ping_interval_ms as f64 / 1e3,
        ),
    );

    // Each node records every connect in presence_sessions (and fans it out)
    // one at a time, well behind a connect storm: say how far behind it still
    // is, since that work competes with the ping round.
    let presence_deadline = Instant::now() + Duration::from_millis(p.presence_wait_ms);
    let mut backlog = presence_backlog(&db, ok).await;
    while backlog > 0 && Instant::now() < presence_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        backlog = presence_backlog(&db, ok).await;
    }
    report.add(
        SCENARIO,
        &case,
        "chatapp",
        "presence backlog at ping",
        "users",
        backlog as f64,
    );

    // Ping round trip: every socket sends one `ping`, spread evenly over the round.
    let round = Cpu::sample(&nodes, &workers);
    let spread_ms = spread_ms(n, p);
    for w in &mut workers {
        w.send(&format!("ping {spread_ms}"))?;
    }
    let ping_limit = Duration::from_millis(spread_ms) + Duration::from_secs(30);
    let mut rtts = Vec::new();
    let mut unanswered = 0u64;
    for w in &mut workers {
        let r = w.expect("pinged", ping_limit).await?;
        rtts.extend(floats(&r["rtt_ms"]));
        unanswered += r["unanswered"].as_u64().unwrap_or(0);
    }
    eprintln!(
        "idle {case}: ping round {}",
        round.until_now(&nodes, &workers).describe()
    );
    report.check(
        SCENARIO,
        unanswered == 0 && rtts.len() as u64 == ok,
        format!(
            "{case}: {} of {ok} pings answered with `pong` ({unanswered} unanswered)",
            rtts.len()
        ),
    );
    let rtt = Percentiles::new(rtts);
    for (which, v) in [
        ("p50", rtt.at(0.5)),
        ("p99", rtt.at(0.99)),
        ("max", rtt.max()),
    ] {
        report.add(SCENARIO, &case, "chatapp", &rtt_metric(p, which), "ms", v);
    }
    if let (Some(before), Some(after)) = (rss_before, rss_sum(&nodes)) {
        report.add(
            SCENARIO,
            &case,
            "chatapp",
            "server RSS/conn at end",
            "KiB",
            after.saturating_sub(before) as f64 / ok.max(1) as f64,
        );
    }
    eprintln!(
        "idle {case}: presence rows written by the end: {}",
        presence_rows(&db).await
    );

    // Tear down: workers exit (their sockets close), then the nodes are killed.
    for w in &mut workers {
        let _ = w.send("exit");
    }
    for w in &mut workers {
        w.wait(Duration::from_secs(10)).await;
    }
    drop(nodes);
    let _ = std::fs::remove_file(&tokens);
    Ok(())
}

fn write_tokens(env: &Env, users: &[User]) -> PathBuf {
    let path = env
        .log_dir
        .join(format!("idle-tokens-{}.txt", std::process::id()));
    let mut text = String::with_capacity(users.len() * 200);
    for u in users {
        text.push_str(&u.token);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write idle tokens");
    path
}

/// CPU used over a phase, in % of one core: the nodes, the client workers,
/// and the whole machine (the rest is PostgreSQL and whatever else runs).
struct Cpu {
    at: Instant,
    server: Option<f64>,
    clients: Option<f64>,
    postgres: Option<f64>,
    postgres_total: f64,
    machine: Option<f64>,
}

impl Cpu {
    fn sample(nodes: &[Server], workers: &[Worker]) -> Cpu {
        Cpu {
            at: Instant::now(),
            server: cpu_sum(nodes),
            clients: workers
                .iter()
                .map(|w| crate::common::proc_cpu_secs(w.child.id()))
                .sum(),
            postgres: None,
            postgres_total: crate::common::postgres_cpu_secs(),
            machine: machine_busy_secs(),
        }
    }

    fn until_now(&self, nodes: &[Server], workers: &[Worker]) -> Cpu {
        let now = Cpu::sample(nodes, workers);
        let secs = self.at.elapsed().as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs * 100.0);
        Cpu {
            at: now.at,
            server: pct(self.server, now.server),
            clients: pct(self.clients, now.clients),
            postgres: Some((now.postgres_total - self.postgres_total) / secs * 100.0),
            postgres_total: 0.0,
            machine: pct(self.machine, now.machine),
        }
    }

    fn describe(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}%"));
        format!(
            "CPU (% of a core): server {}, clients {}, postgres (all clusters) {}, whole machine {}",
            f(self.server),
            f(self.clients),
            f(self.postgres),
            f(self.machine)
        )
    }
}

/// CPU seconds used so far by each live `postgres` process (every cluster
/// on the machine), by pid: a phase counts what each used within it.
/// Busy CPU seconds of the whole machine since boot (/proc/stat).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy / 100.0)
}

fn rss_sum(nodes: &[Server]) -> Option<u64> {
    nodes.iter().map(Server::rss_kib).sum()
}

fn cpu_sum(nodes: &[Server]) -> Option<f64> {
    nodes.iter().map(Server::cpu_secs).sum()
}

async fn node_counts(http: &reqwest::Client, nodes: &[Server]) -> Vec<u64> {
    let mut counts = Vec::new();
    for node in nodes {
        let stats: Option<Value> = match http
            .get(format!("{}/ws/health", node.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        counts.push(stats.and_then(|s| s["connections"].as_u64()).unwrap_or(0));
    }
    counts
}

/// Sessions the nodes' presence trackers have recorded (they lag the connects).
async fn presence_rows(db: &tokio_postgres::Client) -> String {
    match db
        .query_one("select count(*) from presence_sessions", &[])
        .await
    {
        Ok(row) => row.get::<_, i64>(0).to_string(),
        Err(e) => format!("? ({e})"),
    }
}

/// Connected users the presence tracker has not recorded yet.
async fn presence_backlog(db: &tokio_postgres::Client, connected: u64) -> u64 {
    db.query_one("select count(*) from presence_sessions", &[])
        .await
        .map(|row| connected.saturating_sub(row.get::<_, i64>(0) as u64))
        .unwrap_or(connected)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: &Value) {
    if let Some(m) = from.as_object() {
        for (k, v) in m {
            *into.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
}

// ---- the worker process ----

enum Order {
    Connect,
    Status,
    Ping(u64),
    Exit,
}

/// What socket tasks are told to do.
#[derive(Clone, Copy)]
enum Round {
    Hold,
    /// Send one application ping at `start + spread * index / count`.
    Ping {
        start: Instant,
        spread: Duration,
    },
}

enum SocketEvent {
    Connected(Result<f64, String>),
    Rtt(f64),
    /// Why a socket that had connected closed.
    Closed(String),
}

pub fn worker_main(opts: &Opts) {
    crate::worker::main(worker(opts))
}

fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn worker(opts: &Opts) -> Result<(), String> {
    let arg = |name: &str| {
        opts.get(name)
            .map(String::from)
            .ok_or_else(|| format!("idle-worker needs --{name}"))
    };
    let node: SocketAddr = arg("node")?.parse().map_err(|e| format!("--node: {e}"))?;
    let first: usize = arg("first")?.parse().map_err(|e| format!("--first: {e}"))?;
    let count: usize = arg("count")?.parse().map_err(|e| format!("--count: {e}"))?;
    let concurrency: usize = arg("concurrency")?
        .parse()
        .map_err(|e| format!("--concurrency: {e}"))?;
    let tokens: Vec<String> = std::fs::read_to_string(arg("tokens")?)
        .map_err(|e| format!("tokens: {e}"))?
        .lines()
        .skip(first)
        .take(count)
        .map(String::from)
        .collect();
    if tokens.len() != count {
        return Err(format!("only {} tokens from {first}", tokens.len()));
    }

    // Commands from the parent, read on a plain thread; EOF means the parent is gone.
    let (cmd_tx, mut commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let cmd = match words.next() {
                Some("connect") => Order::Connect,
                Some("status") => Order::Status,
                Some("ping") => {
                    Order::Ping(words.next().and_then(|w| w.parse().ok()).unwrap_or(1000))
                }
                _ => Order::Exit,
            };
            if cmd_tx.send(cmd).is_err() {
                return;
            }
        }
        let _ = cmd_tx.send(Order::Exit);
    });
    let rss_before = self_rss_kib();
    emit(json!({"event": "loaded"}));
    match commands.recv().await {
        Some(Order::Connect) => {}
        _ => return Ok(()),
    }

    let (round_tx, round_rx) = watch::channel(Round::Hold);
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let shared = Shared {
        count,
        node,
        gate,
        events: ev_tx.clone(),
        open: open.clone(),
    };
    for (i, token) in tokens.into_iter().enumerate() {
        let slot = Slot {
            index: i,
            global_index: first + i,
            token,
        };
        tokio::spawn(socket(slot, shared.clone(), round_rx.clone()));
    }
    drop(shared);
    drop(ev_tx);
    drop(round_rx);

    // Every socket reports its connect once; a socket's own handshake is
    // bounded too. 10 ms a socket: the machine's connects run several
    // workers' at once (100,000 at 1,400/s on a quiet hour here, 840/s on a
    // slow one, when 5 ms a socket cut the slow hour's last few thousand off).
    let deadline = started + Duration::from_secs(30 + count as u64 / 100);
    let mut latencies = Vec::with_capacity(count);
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0usize;
    let mut closed: BTreeMap<String, u64> = BTreeMap::new();
    let mut rtts: Vec<f64> = Vec::new();
    while latencies.len() + failed < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(SocketEvent::Connected(Ok(ms)))) => latencies.push(ms),
            Ok(Some(SocketEvent::Connected(Err(e)))) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e);
                }
            }
            Ok(Some(SocketEvent::Closed(why))) => *closed.entry(why).or_default() += 1,
            Ok(Some(SocketEvent::Rtt(_))) => {}
            Ok(None) => break,
            Err(_) => {
                let missing = count - latencies.len() - failed;
                failed += missing;
                errors.push(format!("{missing} still connecting at the deadline"));
                break;
            }
        }
    }
    emit(json!({
        "event": "connected",
        "ok": latencies.len(),
        "failed": failed,
        "errors": errors,
        "secs": started.elapsed().as_secs_f64(),
        "latency_ms": latencies,
        "rss_before_kib": rss_before,
        "rss_kib": self_rss_kib(),
    }));

    let mut events_open = true;
    loop {
        // Close reasons keep arriving while the parent waits.
        let cmd = tokio::select! {
            cmd = commands.recv() => cmd.unwrap_or(Order::Exit),
            ev = events.recv(), if events_open => {
                match ev {
                    Some(SocketEvent::Closed(why)) => *closed.entry(why).or_default() += 1,
                    Some(_) => {}
                    None => events_open = false,
                }
                continue;
            }
        };
        match cmd {
            Order::Connect => {}
            Order::Exit => return Ok(()),
            Order::Status => {
                while let Ok(ev) = events.try_recv() {
                    if let SocketEvent::Closed(why) = ev {
                        *closed.entry(why).or_default() += 1;
                    }
                }
                emit(json!({
                    "event": "status",
                    "open": open.load(Ordering::SeqCst),
                    "closed": closed,
                    "rss_kib": self_rss_kib(),
                }));
            }
            Order::Ping(spread_ms) => {
                let expected = open.load(Ordering::SeqCst);
                let spread = Duration::from_millis(spread_ms);
                let start = Instant::now() + Duration::from_millis(20);
                rtts.clear();
                let _ = round_tx.send(Round::Ping { start, spread });
                let deadline = start + spread + Duration::from_secs(20);
                let mut lost = 0usize;
                while rtts.len() + lost < expected {
                    match tokio::time::timeout_at(deadline, events.recv()).await {
                        Ok(Some(SocketEvent::Rtt(ms))) => rtts.push(ms),
                        Ok(Some(SocketEvent::Closed(why))) => {
                            lost += 1;
                            *closed.entry(why).or_default() += 1;
                        }
                        Ok(Some(SocketEvent::Connected(_))) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = round_tx.send(Round::Hold);
                emit(json!({
                    "event": "pinged",
                    "rtt_ms": rtts,
                    "unanswered": expected.saturating_sub(rtts.len()),
                    "open": open.load(Ordering::SeqCst),
                    "closed": closed,
                }));
            }
        }
    }
}

/// What every socket of a worker shares.
#[derive(Clone)]
struct Shared {
    /// Sockets in this worker.
    count: usize,
    node: SocketAddr,
    /// At most this many handshakes at once.
    gate: Arc<Semaphore>,
    events: mpsc::UnboundedSender<SocketEvent>,
    open: Arc<AtomicUsize>,
}

/// One socket's place: its index in the worker and across workers, and its token.
struct Slot {
    index: usize,
    global_index: usize,
    token: String,
}

/// One client socket: connect (at most `gate` handshakes at once), then read
/// continuously (tungstenite answers the server's pings while reading) and
/// send an application ping when a round asks for one.
async fn socket(slot: Slot, shared: Shared, mut rounds: watch::Receiver<Round>) {
    let Slot {
        index,
        global_index,
        token,
    } = slot;
    let Shared {
        count,
        node,
        gate,
        events,
        open,
    } = shared;
    let user = User {
        id: 0,
        username: String::new(),
        token,
    };
    let connected = {
        let _permit = gate.acquire().await;
        let t = Instant::now();
        match tokio::time::timeout(
            Duration::from_secs(30),
            ws_login(node, source_ip(global_index), &user, None),
        )
        .await
        {
            Ok(Ok((ws, _ready))) => Ok((ws, t.elapsed().as_secs_f64() * 1e3)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no `ready` within 30s".to_string()),
        }
    };
    let mut ws: Ws = match connected {
        Ok((ws, ms)) => {
            open.fetch_add(1, Ordering::SeqCst);
            let _ = events.send(SocketEvent::Connected(Ok(ms)));
            ws
        }
        Err(e) => {
            let _ = events.send(SocketEvent::Connected(Err(e)));
            return;
        }
    };
    drop(user);
    let offset = |spread: Duration| spread.mul_f64(index as f64 / count.max(1) as f64);
    let mut ping_at: Option<Instant> = None;
    let mut sent_at: Option<Instant> = None;
    let why = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                None => break "eof".to_string(),
                Some(Err(e)) => break format!("error: {e}"),
                Some(Ok(Message::Close(frame))) => {
                    break format!("close {}", frame.map(|f| u16::from(f.code)).unwrap_or(0));
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(at) = sent_at
                        && serde_json::from_str::<Value>(text.as_str())
                            .is_ok_and(|v| v["type"] == "pong")
                    {
                        sent_at = None;
                        let _ = events.send(SocketEvent::Rtt(at.elapsed().as_secs_f64() * 1e3));
                    }
                }
                // Pings: tungstenite queued the pong and flushes it on the next read.
                Some(Ok(_)) => {}
            },
            changed = rounds.changed() => {
                if changed.is_err() {
                    break "worker stopped".to_string();
                }
                ping_at = match *rounds.borrow_and_update() {
                    Round::Ping { start, spread } => Some(start + offset(spread)),
                    Round::Hold => None,
                };
            }
            _ = tokio::time::sleep_until(ping_at.unwrap_or_else(Instant::now)), if ping_at.is_some() => {
                ping_at = None;
                sent_at = Some(Instant::now());
                if let Err(e) = ws.send(Message::text(r#"{"type":"ping"}"#)).await {
                    break format!("send: {e}");
                }
            }
        }
    };
    open.fetch_sub(1, Ordering::SeqCst);
    let _ = events.send(SocketEvent::Closed(why));
}
