//! `fanout`: one chat with M members, all connected by WebSocket; a few of
//! them post `message` frames over their own sockets. Side by side with the
//! ceiling (`broadcast.rs`: the same frames from a minimal broadcast server
//! with no database), driven by the same clients.
//!
//! Per M, two phases on the same connections:
//! - fixed rate: `--senders` post `--rate` messages/s in all (default 52: at
//!   M = 1,000 that offers 52,000 deliveries/s, so that "delivering >= 50,000
//!   frames/s" can be shown) for `--duration` s. Each content carries its send
//!   instant (nanoseconds since a process-wide instant; every client lives in
//!   this process), so each receiver measures send-to-receive latency.
//!   Figures: p50/p99/max, each message's first and last delivery (p50,
//!   p99: the first is its path up to the fan-out), with `--stamps on` each
//!   delivery split at the kernel's receive stamp (`stamp.rs`) into
//!   send-to-socket (the server's part) and socket-to-read (the client's),
//!   and the deliveries/s
//!   achieved: over the send window, or until the last delivery when that
//!   came later; CPU per delivery of the server, the clients and PostgreSQL
//!   (a write carries fewer frames here than at capacity, so each costs
//!   more).
//! - capacity: `--capacity-senders` each keep `--window` messages in flight
//!   for `--capacity` s, a message leaving the window once every member has
//!   it (acks alone would let senders outrun delivery and overflow the
//!   servers' per-connection queues). One phase per window of the list
//!   (default 8,16,32,64): with few messages in flight the rate is bound by
//!   how long each one is in flight rather than by the machine, so the
//!   capacity is the highest rate of the phases, each system's own, with
//!   that phase's CPU per delivery. Figures: deliveries/s, at each window
//!   too, and the window of the best.
//!
//! Also per M: the time to connect everyone, the frames each member heard
//! before anyone spoke (chatapp's presence notices) and how long the server
//! took to go quiet after that, and the size of a `message` frame (the two
//! systems' frames have the same layout).
//!
//! Every member tracks each sender's sequence numbers: at the end each must
//! have every message exactly once, in order (a correctness check per M).

use crate::broadcast;
use crate::common::{
    Env, Percentiles, ServerOpts, User, connect_db, postgres_cpu_secs, proc_cpu_secs, seed_chat,
    seed_users, settle, source_ip,
};
use crate::report::Report;
use crate::stamp::{Stamped, wall_nanos};
use futures_util::stream::{SplitSink, Stream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

const SCENARIO: &str = "fanout";
const MARK: &str = "fo~";
const PAD: &str = "a benchmark message of ordinary length";
/// Completion counters per sender (slot = seq % RING); the window stays below.
const RING: usize = 256;
const CONNECT_CONCURRENCY: usize = 64;

type Sink = SplitSink<WebSocketStream<Stamped>, Message>;

/// The instant send times are measured from, shared by every client, and
/// the wall clock's reading then (the kernel's receive stamps are on it).
static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();

fn epoch() -> &'static (Instant, u64) {
    EPOCH.get_or_init(|| (Instant::now(), wall_nanos()))
}

fn nanos() -> u64 {
    epoch().0.elapsed().as_nanos() as u64
}

/// A kernel receive stamp on the clock of [`nanos`].
fn stamp_nanos(wall: u64) -> u64 {
    wall.saturating_sub(epoch().1)
}

struct Settings {
    rate: f64,
    /// Senders of the fixed-rate phase.
    senders: usize,
    /// Senders of the capacity phase.
    capacity_senders: usize,
    duration: Duration,
    capacity: Duration,
    /// Messages each capacity sender keeps in flight: one phase per window.
    windows: Vec<u64>,
    /// Whether clients ask for the kernel's receive stamps (`--stamps on`),
    /// which split each delivery's time between the server and the client.
    stamps: bool,
}

/// A duration option in seconds (fractions allowed).
fn seconds(env: &Env, name: &str, full: f64, smoke: f64) -> Duration {
    let secs = match env.opts.get(name) {
        Some(v) => v.parse::<f64>().unwrap_or_else(|_| {
            eprintln!("load: --{name} takes seconds, not {v:?}");
            std::process::exit(2)
        }),
        None if env.smoke() => smoke,
        None => full,
    };
    Duration::from_secs_f64(secs.clamp(0.1, 3600.0))
}

impl Settings {
    fn all_senders(&self) -> usize {
        self.senders.max(self.capacity_senders)
    }
}

pub async fn run(env: &Env, report: &mut Report) {
    if let Some(addr) = env.opts.get(broadcast::SERVE_OPTION) {
        broadcast::serve(addr).await;
    }
    let _ = nanos();
    let members = env.opts.list("members", &[100, 1000, 10000], &[20, 50]);
    let set = Settings {
        rate: env.opts.num("rate", 52, 52) as f64,
        senders: env.opts.num("senders", 2, 2).max(1) as usize,
        capacity_senders: env.opts.num("capacity-senders", 8, 4).max(1) as usize,
        duration: seconds(env, "duration", 10.0, 0.5),
        capacity: seconds(env, "capacity", 5.0, 0.5),
        windows: env
            .opts
            .list("window", &[8, 16, 32, 64], &[4, 8])
            .into_iter()
            .map(|w| w.clamp(1, RING as u64 / 2))
            .collect(),
        stamps: env.opts.get("stamps").is_some_and(|v| v == "on"),
    };
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- fanout --members {} --rate {} --senders {} --duration {} \
             --capacity {} --capacity-senders {} --window {} --repeats {}{}",
            join(&members),
            set.rate,
            set.senders,
            set.duration.as_secs_f64(),
            set.capacity.as_secs_f64(),
            set.capacity_senders,
            join(&set.windows),
            env.opts.repeats,
            if set.stamps { " --stamps on" } else { "" }
        ),
    );
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let max_m = members.iter().copied().max().unwrap_or(1) as usize;
    let users = seed_users(env, &db, "fanout", max_m).await;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let mut chats = Vec::new();
    for &m in &members {
        let m = (m as usize).max(set.all_senders());
        chats.push(seed_chat(&db, &format!("fanout {m}"), &ids[..m.min(ids.len())]).await);
    }
    let server = env.server(&db_url, ServerOpts::default()).await;
    let ceiling = broadcast::start(env).await;
    for _ in 0..env.opts.repeats {
        for (&m, &chat) in members.iter().zip(&chats) {
            let m = (m as usize).max(set.all_senders()).min(users.len());
            let case = format!("M={m}");
            let systems = [
                ("chatapp", server.addr(), server.pid()),
                ("broadcast", ceiling.addr, Some(ceiling.pid())),
            ];
            let mut fields = Vec::new();
            for (system, addr, pid) in systems {
                eprintln!("fanout {case} {system}");
                let result = run_case(addr, pid, &users[..m], chat, &set).await;
                fields.push(result.as_ref().ok().and_then(|r| r.frame_fields.clone()));
                record(report, &case, system, result);
            }
            // A ceiling sending less than chatapp sends would spare its
            // clients parsing, and so stand higher than it should.
            if let [Some(ours), Some(its)] = &fields[..] {
                report.check(
                    SCENARIO,
                    ours == its,
                    format!("{case}: the ceiling's message frames have chatapp's fields ({its:?})"),
                );
            }
        }
    }
    judge(report);
}

fn join(numbers: &[u64]) -> String {
    numbers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn record(report: &mut Report, case: &str, system: &str, result: Result<CaseResult, String>) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            report.check(SCENARIO, false, format!("{case} {system}: {e}"));
            return;
        }
    };
    report.check(
        SCENARIO,
        r.complete == r.members && r.errors == 0,
        format!(
            "{case} {system}: {}/{} members got all {} messages exactly once, in order \
             ({} deliveries missing, {} out of order or repeated, {} sockets closed early, {} error frames{})",
            r.complete,
            r.members,
            r.messages,
            r.missing,
            r.disorder,
            r.closed,
            r.errors,
            r.first_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    );
    let add = |report: &mut Report, metric: &str, unit: &str, v: f64| {
        report.add(SCENARIO, case, system, metric, unit, v)
    };
    add(report, "connect time", "s", r.connect_s);
    add(report, "settle time", "s", r.settle_s);
    add(
        report,
        "frames per member (connecting)",
        "frames",
        r.connect_frames,
    );
    add(report, "rate deliveries/s", "1/s", r.rate_dps);
    add(report, "p50 send-to-receive", "ms", r.p50);
    add(report, "p99 send-to-receive", "ms", r.p99);
    add(report, "max send-to-receive", "ms", r.max);
    add(report, "first delivery of a message p50", "ms", r.first_p50);
    add(report, "first delivery of a message p99", "ms", r.first_p99);
    add(report, "last delivery of a message p50", "ms", r.last_p50);
    add(report, "last delivery of a message p99", "ms", r.last_p99);
    if let Some(split) = &r.split {
        add(report, "send-to-socket p50", "ms", split.socket_p50);
        add(report, "send-to-socket p99", "ms", split.socket_p99);
        add(report, "socket-to-read p50", "ms", split.read_p50);
        add(report, "socket-to-read p99", "ms", split.read_p99);
    }
    for (part, us) in r.rate_us.parts() {
        add(
            report,
            &format!("{part} CPU per delivery (fixed rate)"),
            "µs",
            us,
        );
    }
    add(report, "capacity deliveries/s", "1/s", r.capacity_dps);
    add(
        report,
        "capacity window",
        "messages",
        r.capacity_window as f64,
    );
    for &(window, dps) in &r.by_window {
        add(
            report,
            &format!("capacity deliveries/s, window {window}"),
            "1/s",
            dps,
        );
    }
    for (part, us) in r.capacity_us.parts() {
        add(report, &format!("{part} CPU per delivery"), "µs", us);
    }
    add(report, "capacity messages/s", "1/s", r.capacity_mps);
    add(report, "message frame size", "bytes", r.frame_bytes);
}

fn judge(report: &mut Report) {
    let case = "M=1000";
    let med = |r: &Report, sys: &str, metric: &str| r.median(SCENARIO, case, sys, metric);
    if let (Some(ours), Some(ceiling)) = (
        med(report, "chatapp", "capacity deliveries/s"),
        med(report, "broadcast", "capacity deliveries/s"),
    ) {
        report.target(
            SCENARIO,
            "M=1000 chatapp / broadcast capacity deliveries/s",
            ours / ceiling,
            ">=",
            0.7,
        );
    }
    if let (Some(p99), Some(rate)) = (
        med(report, "chatapp", "p99 send-to-receive"),
        med(report, "chatapp", "rate deliveries/s"),
    ) {
        report.target(
            SCENARIO,
            &format!("M=1000 chatapp p99 send-to-receive ms (at {rate:.0}/s)"),
            p99,
            "<=",
            50.0,
        );
        report.target(
            SCENARIO,
            "M=1000 chatapp fixed-rate deliveries/s",
            rate,
            ">=",
            50_000.0,
        );
    }
}

struct CaseResult {
    members: usize,
    messages: u64,
    complete: usize,
    missing: u64,
    disorder: u64,
    closed: u64,
    errors: u64,
    first_error: Option<String>,
    connect_s: f64,
    settle_s: f64,
    rate_dps: f64,
    p50: f64,
    p99: f64,
    /// Over the messages of the fixed rate, each one's first delivery (the
    /// path up to its fan-out) and its last.
    first_p50: f64,
    first_p99: f64,
    last_p50: f64,
    last_p99: f64,
    /// With `--stamps on`: send-to-receive split at the kernel's stamp.
    split: Option<Split>,
    max: f64,
    capacity_dps: f64,
    /// CPU per delivery in the capacity phase.
    capacity_us: PerDelivery,
    /// CPU per delivery at the fixed rate, where a write carries fewer
    /// frames than at capacity.
    rate_us: PerDelivery,
    capacity_mps: f64,
    /// The window the capacity was reached at.
    capacity_window: u64,
    /// Deliveries/s at each window tried.
    by_window: Vec<(u64, f64)>,
    frame_bytes: f64,
    /// The fields of a `message` frame a member got, sorted.
    frame_fields: Option<Vec<String>>,
    connect_frames: f64,
}

/// A phase's CPU per delivery in µs: the server process (PostgreSQL not
/// included), this process (the clients), and PostgreSQL, which on one
/// machine comes out of the same cores as the other two.
struct PerDelivery {
    server: f64,
    client: f64,
    database: f64,
}

impl PerDelivery {
    /// Each part with the name the report gives it.
    fn parts(&self) -> [(&'static str, f64); 3] {
        [
            ("server", self.server),
            ("client", self.client),
            ("database", self.database),
        ]
    }
}

/// CPU seconds so far of the server, this process (the clients) and
/// PostgreSQL, to split a phase's CPU per delivery between them.
struct Cpu {
    server: Option<f64>,
    clients: Option<f64>,
    database: f64,
}

impl Cpu {
    fn now(server: Option<u32>) -> Cpu {
        Cpu {
            server: server.and_then(proc_cpu_secs),
            clients: proc_cpu_secs(std::process::id()),
            database: postgres_cpu_secs(),
        }
    }

    /// Each part's CPU per delivery since `self`.
    fn per_delivery(&self, server: Option<u32>, deliveries: u64) -> PerDelivery {
        let after = Cpu::now(server);
        let us = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(b), Some(a)) => (a - b) * 1e6 / deliveries.max(1) as f64,
            _ => f64::NAN,
        };
        PerDelivery {
            server: us(self.server, after.server),
            client: us(self.clients, after.clients),
            database: us(Some(self.database), Some(after.database)),
        }
    }
}

/// Send-to-receive split at the kernel's receive stamp (`stamp.rs`).
struct Split {
    /// From the send to the stamp: the server's part.
    socket_p50: f64,
    socket_p99: f64,
    /// From the stamp to the client's task reading the frame: the client's.
    read_p50: f64,
    read_p99: f64,
}

/// What every client of one case shares.
struct Shared {
    members: u32,
    stamps: bool,
    /// Every text frame received (to see when the servers have gone quiet).
    frames: AtomicU64,
    /// `message` frames from the benchmark's senders.
    deliveries: AtomicU64,
    last_delivery_ns: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// The first `message` frame received (its size is reported).
    sample: OnceLock<String>,
    /// The members' reading tasks, stopped when the case ends however it ends.
    readers: Mutex<Vec<AbortHandle>>,
    senders: Vec<Track>,
}

/// Capacity-phase completion of one sender's messages.
struct Track {
    slots: Vec<AtomicU32>,
    completed: AtomicU64,
    notify: Notify,
}

/// One member's view: per sender the next sequence number it expects.
struct Received {
    next: Vec<u64>,
    got: u64,
    disorder: u64,
    /// (send-to-receive µs, send-to-socket µs, sender, sequence number) of
    /// each message of the fixed-rate phase.
    latencies_us: Vec<(u32, u32, u32, u32)>,
}

struct Client {
    received: Arc<Mutex<Received>>,
}

impl Shared {
    /// Stops every member's reading task (closing its socket).
    fn stop_readers(&self) {
        for r in self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            r.abort();
        }
    }
}

/// Stops the readers when a case returns early.
struct StopReaders(Arc<Shared>);

impl Drop for StopReaders {
    fn drop(&mut self) {
        self.0.stop_readers();
    }
}

async fn run_case(
    addr: SocketAddr,
    pid: Option<u32>,
    users: &[User],
    chat: i64,
    set: &Settings,
) -> Result<CaseResult, String> {
    let m = users.len();
    let shared = Arc::new(Shared {
        members: m as u32,
        stamps: set.stamps,
        frames: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        sample: OnceLock::new(),
        readers: Mutex::new(Vec::new()),
        senders: (0..set.all_senders())
            .map(|_| Track {
                slots: (0..RING).map(|_| AtomicU32::new(0)).collect(),
                completed: AtomicU64::new(0),
                notify: Notify::new(),
            })
            .collect(),
    });
    // Connect everyone; each member starts reading as soon as it is ready.
    let _stop = StopReaders(shared.clone());
    let started = Instant::now();
    let connect_timeout = Duration::from_secs(60 + m as u64 / 50);
    let connected = tokio::time::timeout(
        connect_timeout,
        futures_util::stream::iter(users.iter().enumerate())
            .map(|(i, user)| connect(addr, i, user, set.all_senders(), shared.clone()))
            .buffered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| format!("{m} clients did not connect within {connect_timeout:?}"))?;
    let mut clients = Vec::new();
    let mut sinks = Vec::new();
    let mut failed = None;
    for c in connected {
        match c {
            Ok((client, sink)) => {
                clients.push(client);
                sinks.extend(sink);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let connect_s = started.elapsed().as_secs_f64();
    // chatapp tells every member of a chat when another comes online: let
    // that storm pass (and anything else the server does) before measuring.
    let settle_s = settle(&shared.frames, pid, Duration::from_secs(60 + m as u64 / 20)).await;
    // What each member heard before anyone spoke (`ready` is not counted).
    let connect_frames = shared.frames.load(Relaxed) as f64 / m as f64;
    // A marker for profilers (scripts/callgrind-fanout.sh zeroes its counters here).
    eprintln!("fanout: {m} members settled, sending");

    let tag = format!("k{:x}", crate::common::now_nanos() % 0xffff_ffff_ffff);
    let mut seqs = vec![0u64; set.all_senders()];
    let result = async {
        // Fixed rate.
        let per_sender = (set.rate / set.senders as f64).max(0.001);
        let n = ((per_sender * set.duration.as_secs_f64()).round() as u64).max(1);
        let interval = Duration::from_secs_f64(1.0 / per_sender);
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let start_ns = nanos() + 50_000_000;
        let rate_cpu = Cpu::now(pid);
        let sent = run_senders(
            &mut sinks,
            &mut seqs,
            set.senders,
            |s, mut sink, mut seq| {
                let tag = tag.clone();
                let offset = interval.mul_f64(s as f64 / set.senders as f64);
                async move {
                    let result = async {
                        for i in 0..n {
                            tokio::time::sleep_until(start + offset + interval * i as u32).await;
                            send(&mut sink, chat, 'r', s, seq, &tag).await?;
                            seq += 1;
                        }
                        Ok(n)
                    }
                    .await;
                    (sink, seq, result)
                }
            },
        )
        .await?;
        let expected = sent * m as u64;
        wait_deliveries(&shared, expected, drain_timeout(expected)).await?;
        // Over the send window (n intervals), or until the last delivery if
        // that came later: exactly rate x M for a server that keeps up.
        let window_secs = (interval * n as u32).as_secs_f64();
        let rate_secs = (shared
            .last_delivery_ns
            .load(Relaxed)
            .saturating_sub(start_ns)) as f64
            / 1e9;
        let rate_dps = expected as f64 / rate_secs.max(window_secs);
        let rate_us = rate_cpu.per_delivery(pid, expected);

        // Capacity, at each window: the highest rate is the capacity.
        let mut total = sent;
        let mut expected_so_far = expected;
        let mut capacity: Option<Capacity> = None;
        let mut by_window = Vec::new();
        for &window in &set.windows {
            let phase = CapacityPhase {
                shared: &shared,
                chat,
                tag: &tag,
                pid,
                before: expected_so_far,
            };
            let c = phase.run(&mut sinks, &mut seqs, set, window).await?;
            total += c.sent;
            expected_so_far += c.sent * m as u64;
            by_window.push((window, c.dps));
            if capacity.as_ref().is_none_or(|best| c.dps > best.dps) {
                capacity = Some(c);
            }
        }
        let capacity = capacity.ok_or("no capacity window")?;
        Ok::<_, String>((total, rate_dps, capacity, by_window, rate_us))
    }
    .await;

    // Close everything, then let the server finish its goodbyes (chatapp
    // tells the remaining members each one went offline) before going on.
    shared.stop_readers();
    drop(sinks);
    let _ = settle(&shared.frames, pid, Duration::from_secs(60 + m as u64 / 20)).await;

    let (messages, rate_dps, capacity, by_window, rate_us) = result?;
    let mut latencies = Vec::new();
    let mut deliveries = Vec::new();
    let (mut to_socket, mut to_read) = (Vec::new(), Vec::new());
    let (mut complete, mut missing, mut disorder) = (0, 0, 0);
    for c in &clients {
        let r = c.received.lock().unwrap_or_else(|p| p.into_inner());
        if r.got == messages && r.disorder == 0 {
            complete += 1;
        }
        missing += messages.saturating_sub(r.got);
        disorder += r.disorder;
        for &(us, socket_us, sender, seq) in &r.latencies_us {
            latencies.push(us as f64 / 1e3);
            if set.stamps {
                to_socket.push(socket_us as f64 / 1e3);
                to_read.push(us.saturating_sub(socket_us) as f64 / 1e3);
            }
            deliveries.push(((sender, seq), us as f64 / 1e3));
        }
    }
    let p = Percentiles::new(latencies);
    let split = set.stamps.then(|| {
        let (socket, read) = (Percentiles::new(to_socket), Percentiles::new(to_read));
        Split {
            socket_p50: socket.at(0.50),
            socket_p99: socket.at(0.99),
            read_p50: read.at(0.50),
            read_p99: read.at(0.99),
        }
    });
    let (first, last) = Percentiles::first_and_last(deliveries);
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(CaseResult {
        members: m,
        messages,
        complete,
        missing,
        disorder,
        closed: shared.closed.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        first_error,
        connect_s,
        settle_s,
        rate_dps,
        p50: p.at(0.50),
        p99: p.at(0.99),
        first_p50: first.at(0.50),
        first_p99: first.at(0.99),
        last_p50: last.at(0.50),
        last_p99: last.at(0.99),
        split,
        max: p.max(),
        capacity_dps: capacity.dps,
        capacity_us: capacity.us,
        rate_us,
        capacity_mps: capacity.mps,
        capacity_window: capacity.window,
        by_window,
        connect_frames,
        frame_bytes: shared.sample.get().map_or(f64::NAN, |f| f.len() as f64),
        frame_fields: shared.sample.get().map(|f| frame_fields(f)),
    })
}

/// The fields of message frame `text` and of its payload, sorted.
fn frame_fields(text: &str) -> Vec<String> {
    let frame: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut fields = keys(&frame);
    fields.extend(
        keys(&frame["payload"])
            .into_iter()
            .map(|k| format!("payload.{k}")),
    );
    fields.sort();
    fields
}

/// One capacity phase: `capacity_senders` keep `window` messages each in
/// flight for `--capacity` s on the case's sockets.
struct CapacityPhase<'a> {
    shared: &'a Arc<Shared>,
    chat: i64,
    tag: &'a str,
    pid: Option<u32>,
    /// Deliveries expected before this phase (earlier phases').
    before: u64,
}

/// What a capacity phase reached.
struct Capacity {
    window: u64,
    sent: u64,
    dps: f64,
    mps: f64,
    us: PerDelivery,
}

impl CapacityPhase<'_> {
    async fn run(
        &self,
        sinks: &mut Vec<Sink>,
        seqs: &mut [u64],
        set: &Settings,
        window: u64,
    ) -> Result<Capacity, String> {
        let m = self.shared.members as u64;
        // A marker for profilers: the capacity phase starts.
        eprintln!("fanout: {m} members, capacity phase");
        let cpu = Cpu::now(self.pid);
        let start_ns = nanos();
        let deadline = Instant::now() + set.capacity;
        let sent = run_senders(sinks, seqs, set.capacity_senders, |s, mut sink, mut seq| {
            let tag = self.tag.to_string();
            let shared = self.shared.clone();
            let chat = self.chat;
            async move {
                let result = async {
                    let track = &shared.senders[s];
                    // Completions count every capacity phase's messages;
                    // the earlier phases' have all completed.
                    let done_before = track.completed.load(Relaxed);
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        while done_before + sent - track.completed.load(Relaxed) >= window {
                            let wait = tokio::time::timeout(
                                Duration::from_secs(30),
                                track.notify.notified(),
                            );
                            if wait.await.is_err() {
                                return Err(format!(
                                    "sender {s}: no message reached every member within 30 s"
                                ));
                            }
                        }
                        send(&mut sink, chat, 'c', s, seq, &tag).await?;
                        seq += 1;
                        sent += 1;
                    }
                    Ok(sent)
                }
                .await;
                (sink, seq, result)
            }
        })
        .await?;
        let expected = sent * m;
        wait_deliveries(self.shared, self.before + expected, drain_timeout(expected)).await?;
        let secs = (self
            .shared
            .last_delivery_ns
            .load(Relaxed)
            .saturating_sub(start_ns)) as f64
            / 1e9;
        Ok(Capacity {
            window,
            sent,
            dps: expected as f64 / secs,
            mps: sent as f64 / secs,
            // CPU per delivery is steadier than deliveries/s on a shared
            // machine: it does not move when a neighbour takes a core for a while.
            us: cpu.per_delivery(self.pid, expected),
        })
    }
}

/// Generous: the slowest plausible delivery rate, plus a margin.
fn drain_timeout(deliveries: u64) -> Duration {
    Duration::from_secs(30 + deliveries / 10_000)
}

/// Runs one task for each of the first `count` senders, each owning its
/// socket and sequence counter for the while; returns the messages they sent.
async fn run_senders<F, Fut>(
    sinks: &mut Vec<Sink>,
    seqs: &mut [u64],
    count: usize,
    f: F,
) -> Result<u64, String>
where
    F: Fn(usize, Sink, u64) -> Fut,
    Fut: std::future::Future<Output = (Sink, u64, Result<u64, String>)> + Send + 'static,
{
    let idle = sinks.split_off(count.min(sinks.len()));
    let tasks: Vec<_> = sinks
        .drain(..)
        .enumerate()
        .map(|(s, sink)| tokio::spawn(f(s, sink, seqs[s])))
        .collect();
    let mut total = 0;
    let mut error = None;
    for (s, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok((sink, seq, result)) => {
                sinks.push(sink);
                seqs[s] = seq;
                match result {
                    Ok(n) => total += n,
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            Err(e) => {
                error.get_or_insert(format!("sender {s}: {e}"));
            }
        }
    }
    sinks.extend(idle);
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

async fn send(
    sink: &mut Sink,
    chat: i64,
    phase: char,
    sender: usize,
    seq: u64,
    tag: &str,
) -> Result<(), String> {
    let frame = format!(
        "{{\"type\":\"message\",\"payload\":{{\"chat_id\":{chat},\"content\":\"{MARK}{phase}~{sender}~{seq}~{}~{PAD}\",\"client_id\":\"{tag}-{sender}-{seq}\"}}}}",
        nanos()
    );
    tokio::time::timeout(Duration::from_secs(30), sink.send(Message::text(frame)))
        .await
        .map_err(|_| format!("sender {sender}: a send blocked for 30 s"))?
        .map_err(|e| format!("sender {sender}: {e}"))
}

async fn connect(
    addr: SocketAddr,
    i: usize,
    user: &User,
    senders: usize,
    shared: Arc<Shared>,
) -> Result<(Client, Option<Sink>), String> {
    let (ws, _ready, landed) = crate::stamp::login(addr, source_ip(i), user, None, shared.stamps)
        .await
        .map_err(|e| format!("client {i}: {e}"))?;
    let received = Arc::new(Mutex::new(Received {
        next: vec![0; senders],
        got: 0,
        disorder: 0,
        latencies_us: Vec::new(),
    }));
    let readers = shared.clone();
    let (task, sink) = if i < senders {
        let (sink, stream) = ws.split();
        let task = tokio::spawn(receive(stream, landed, received.clone(), shared));
        (task, Some(sink))
    } else {
        let task = tokio::spawn(receive(ws, landed, received.clone(), shared));
        (task, None)
    };
    readers
        .readers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(task.abort_handle());
    Ok((Client { received }, sink))
}

/// A member's reading loop; `landed` holds the kernel's stamp of its last read.
async fn receive<S>(
    mut stream: S,
    landed: Arc<AtomicU64>,
    me: Arc<Mutex<Received>>,
    shared: Arc<Shared>,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        shared.frames.fetch_add(1, Relaxed);
        let text = text.as_str();
        let Some((phase, sender, seq, sent_ns)) = parse(text) else {
            if text.starts_with("{\"type\":\"error\"") {
                shared.errors.fetch_add(1, Relaxed);
                let mut first = shared.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| text.chars().take(300).collect());
            }
            continue;
        };
        let now = nanos();
        if shared.sample.get().is_none() {
            let _ = shared.sample.set(text.to_string());
        }
        {
            let mut r = me.lock().unwrap_or_else(|p| p.into_inner());
            let Some(next) = r.next.get_mut(sender) else {
                continue;
            };
            let in_order = *next == seq;
            *next = seq + 1;
            r.got += 1;
            if !in_order {
                r.disorder += 1;
            }
            if phase == b'r' {
                let micros = |ns: u64| (ns / 1000).min(u32::MAX as u64) as u32;
                let us = micros(now.saturating_sub(sent_ns));
                // The stamp of the read that completed this frame; never
                // after the read itself on a sane clock.
                let at_socket = stamp_nanos(landed.load(Relaxed)).min(now);
                let socket_us = micros(at_socket.saturating_sub(sent_ns));
                r.latencies_us
                    .push((us, socket_us, sender as u32, seq as u32));
            }
        }
        shared.deliveries.fetch_add(1, Relaxed);
        shared.last_delivery_ns.fetch_max(now, Relaxed);
        if phase == b'c' {
            let track = &shared.senders[sender];
            let slot = &track.slots[seq as usize % RING];
            if slot.fetch_add(1, Relaxed) + 1 == shared.members {
                slot.store(0, Relaxed);
                track.completed.fetch_add(1, Relaxed);
                track.notify.notify_one();
            }
        }
    }
    shared.closed.fetch_add(1, Relaxed);
}

/// `fo~<phase>~<sender>~<seq>~<sent ns>~...` out of a message frame's content.
fn parse(text: &str) -> Option<(u8, usize, u64, u64)> {
    let at = text.find(MARK)? + MARK.len();
    let mut parts = text[at..].splitn(5, '~');
    let phase = *parts.next()?.as_bytes().first()?;
    let sender = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((phase, sender, seq, sent))
}

/// Waits until `total` deliveries have arrived.
async fn wait_deliveries(shared: &Shared, total: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = shared.deliveries.load(Relaxed);
        if got >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {got} of {total} deliveries arrived within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
