//! `send`: C concurrent clients POST /api/v1/messages into a few chats, side
//! by side with pgbench running the transaction the handler commits (the
//! same statements, generated from the server's own SQL) at the same
//! concurrency against the same database, and beside the ceiling that
//! batches as chatapp does: pgbench on one connection (chatapp commits sends
//! on one) running the group-commit statement with as many messages per
//! transaction as chatapp was seen to commit per batch at that concurrency
//! (its `chatapp_send_batch_size` histogram over the run).
//!
//! `--limits both` (the default) also runs each size with the rate limits on
//! (`C=N limits on`), every limit far above what the load offers, so that
//! each send is checked and none refused: beside the run with them off
//! (`C=N`, as every other scenario runs), alternated, the difference is what
//! the limiter's bookkeeping costs. One server runs at a time (two would
//! both LISTEN, and each send's NOTIFY would cost both), so with both, each
//! run starts a fresh one and warms it up first; pgbench runs with the last
//! one listening, as its sends notify a live server's listener too.
//! `--limits off` keeps one server for the whole run; `--limits on` runs
//! only with them on.

use crate::common::{
    BENCH_CONFIG, Env, Percentiles, Protocol, Server, ServerOpts, User, connect_db, join, pgbench,
    postgres_cpu_secs, proc_cpu_secs, seed_chat, seed_users,
};
use crate::report::Report;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SCENARIO: &str = "send";
const CONTENT: &str = "a benchmark message of ordinary length, about sixty bytes";
/// The ceiling that commits as chatapp does: see the module doc.
const BATCHED: &str = "pgbench batched";
/// chatapp's own bound on a commit's sends (messages::send::MAX_BATCH).
const MAX_BATCH: usize = 128;

/// Whether the server checks its rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    Off,
    On,
}

impl Limits {
    fn case(self, clients: u64) -> String {
        match self {
            Limits::Off => format!("C={clients}"),
            Limits::On => format!("C={clients} limits on"),
        }
    }

    fn config(self) -> String {
        match self {
            Limits::Off => BENCH_CONFIG.to_string(),
            Limits::On => limits_on_config(),
        }
    }
}

/// [`BENCH_CONFIG`] with the rate limits on, each at the most the
/// configuration accepts (10,000,000 a minute, bursts of 1,000,000, per user
/// or per address): checked on every request, never reached by this load.
fn limits_on_config() -> String {
    let rate = "{ per_minute: 10000000, burst: 1000000 }";
    let rates: String = [
        "register_per_ip",
        "login_per_ip",
        "messages",
        "chats_created",
        "member_adds",
        "typing",
        "reads",
        "frames",
    ]
    .iter()
    .map(|key| format!("    {key}: {rate}\n"))
    .collect();
    let config = BENCH_CONFIG.replace(
        "    enabled: false\n",
        &format!("    enabled: true\n{rates}"),
    );
    assert_ne!(
        config, BENCH_CONFIG,
        "BENCH_CONFIG turns the rate limits off"
    );
    config
}

pub async fn run(env: &Env, report: &mut Report) {
    let clients = env.opts.list("clients", &[1, 16, 64], &[1, 4]);
    let n_chats = env.opts.num("chats", 4, 2) as usize;
    let secs = env.opts.num("duration", 10, 1);
    let limits = env.opts.get("limits").unwrap_or("both");
    let modes: &[Limits] = match limits {
        "both" => &[Limits::Off, Limits::On],
        "off" => &[Limits::Off],
        "on" => &[Limits::On],
        other => {
            eprintln!("load: --limits {other:?}: expected on, off or both");
            std::process::exit(2);
        }
    };
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- send --clients {} --chats {n_chats} --duration {secs} --limits {limits} --repeats {}",
            join(&clients),
            env.opts.repeats
        ),
    );
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let max_c = *clients.iter().max().unwrap_or(&1) as usize;
    let users = seed_users(env, &db, "send", max_c).await;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let mut chats = Vec::new();
    for i in 0..n_chats {
        chats.push(seed_chat(&db, &format!("send {i}"), &ids).await);
    }
    // The server's own pool size unless --pool says otherwise: an operator's
    // default is what is measured.
    let pool = env.opts.get("pool").map(|p| p.parse().expect("--pool N"));
    let start = |mode: Limits| {
        env.server(
            &db_url,
            ServerOpts {
                pool_size: pool,
                config: mode.config(),
                ..ServerOpts::default()
            },
        )
    };
    let script = write_pgbench_script(env, &chats, &users);
    let duration = Duration::from_secs(secs);
    let warm_up = Duration::from_millis(if env.smoke() { 200 } else { 1000 }).min(duration);
    let mut running: Option<(Limits, Server)> = None;
    for repeat in 0..env.opts.repeats {
        for &c in &clients {
            // Alternated: off then on in one repeat, on then off in the next.
            let mut order = modes.to_vec();
            order.rotate_left(repeat % modes.len());
            for mode in order {
                if modes.len() > 1 || running.as_ref().is_none_or(|(m, _)| *m != mode) {
                    drop(running.take());
                    let server = start(mode).await;
                    if modes.len() > 1 {
                        // Its pool's connections open here, not in the run.
                        chatapp_load(&server.url, &users[..c as usize], &chats, warm_up).await;
                    }
                    running = Some((mode, server));
                }
                let Some((_, server)) = &running else {
                    unreachable!("a server was just started")
                };
                let case = mode.case(c);
                let batches_before = batch_sizes(&server.url).await;
                let cpu = CpuUse::start(server.pid(), false);
                let (sent, elapsed, latencies, errors) =
                    chatapp_load(&server.url, &users[..c as usize], &chats, duration).await;
                cpu.record(report, &case, "chatapp", sent as f64);
                if mode == Limits::Off {
                    let (sum, count) = batch_sizes(&server.url).await;
                    let (sum, count) = (sum - batches_before.0, count - batches_before.1);
                    if count > 0.0 {
                        report.add(
                            SCENARIO,
                            &case,
                            "chatapp",
                            "messages per commit",
                            "msgs",
                            sum / count,
                        );
                    }
                }
                report.check(
                    SCENARIO,
                    errors == 0,
                    format!("{case}: every POST /messages answered 201 ({errors} did not)"),
                );
                record(report, &case, "chatapp", sent as f64 / elapsed, latencies);
            }
            let case = format!("C={c}");
            let cpu = CpuUse::start(None, true);
            let (tps, latencies) = pgbench(&db_url, &script, Protocol::Prepared, c as usize, secs);
            cpu.record(report, &case, "pgbench", latencies.len() as f64);
            record(report, &case, "pgbench", tps, latencies);
            // The batch size chatapp committed at in this repeat's run.
            let batch = report
                .last(SCENARIO, &case, "chatapp", "messages per commit")
                .map_or(1, |b| (b.round() as usize).clamp(1, MAX_BATCH));
            let batched = write_pgbench_batch_script(env, &chats, &users[..c as usize], batch);
            let cpu = CpuUse::start(None, true);
            let (tps, latencies) = pgbench(&db_url, &batched, Protocol::Prepared, 1, secs);
            cpu.record(report, &case, BATCHED, (latencies.len() * batch) as f64);
            record(report, &case, BATCHED, tps * batch as f64, latencies);
            report.add(
                SCENARIO,
                &case,
                BATCHED,
                "messages per commit",
                "msgs",
                batch as f64,
            );
        }
        // Both sides' rows really landed: the log has one event per message.
        let row = db
            .query_one(
                "select (select count(*) from messages), (select count(*) from events where kind = 'message')",
                &[],
            )
            .await
            .expect("count");
        let (messages, events): (i64, i64) = (row.get(0), row.get(1));
        report.check(
            SCENARIO,
            messages == events && messages > 0,
            format!("{messages} messages committed with {events} message events"),
        );
    }
    if let Some(&c) = clients.iter().max() {
        let case = format!("C={c}");
        let ours = report.median(SCENARIO, &case, "chatapp", "messages/s");
        let ceiling = report.median(SCENARIO, &case, "pgbench", "messages/s");
        if let (Some(ours), Some(ceiling)) = (ours, ceiling) {
            report.target(
                SCENARIO,
                &format!("{case} chatapp / pgbench messages/s"),
                ours / ceiling,
                ">=",
                0.8,
            );
        }
        let batched = report.median(SCENARIO, &case, BATCHED, "messages/s");
        if let (Some(ours), Some(ceiling)) = (ours, batched) {
            report.target(
                SCENARIO,
                &format!("{case} chatapp / {BATCHED} messages/s"),
                ours / ceiling,
                ">=",
                0.8,
            );
        }
        if let Some(p99) = report.median(SCENARIO, &case, "chatapp", "p99 latency") {
            report.target(
                SCENARIO,
                &format!("{case} chatapp p99 latency ms"),
                p99,
                "<=",
                20.0,
            );
        }
        // No measurable cost: within 5 %, about the spread of repeated runs here.
        let on = report.median(SCENARIO, &Limits::On.case(c), "chatapp", "messages/s");
        let off = report.median(SCENARIO, &Limits::Off.case(c), "chatapp", "messages/s");
        if let (Some(on), Some(off)) = (on, off) {
            report.target(
                SCENARIO,
                &format!("{case} chatapp limits on / off messages/s"),
                on / off,
                ">=",
                0.95,
            );
        }
    }
}

fn record(report: &mut Report, case: &str, system: &str, per_sec: f64, latencies: Vec<f64>) {
    let p = Percentiles::new(latencies);
    report.add(SCENARIO, case, system, "messages/s", "1/s", per_sec);
    report.add(SCENARIO, case, system, "p50 latency", "ms", p.at(0.50));
    report.add(SCENARIO, case, system, "p99 latency", "ms", p.at(0.99));
    report.add(SCENARIO, case, system, "p999 latency", "ms", p.at(0.999));
}

/// Where the CPU went per message: PostgreSQL, the server, the clients (this
/// process for chatapp, the pgbench process for pgbench). With both cores
/// busy, messages/s is their sum's inverse; the split shows what to cut.
struct CpuUse {
    server_pid: Option<u32>,
    server: Option<f64>,
    pgbench: bool,
    postgres: f64,
    clients: f64,
}

impl CpuUse {
    fn start(server_pid: Option<u32>, pgbench: bool) -> CpuUse {
        CpuUse {
            server_pid,
            server: server_pid.and_then(proc_cpu_secs),
            postgres: postgres_cpu_secs(),
            clients: clients_cpu_secs(pgbench),
            pgbench,
        }
    }

    fn record(self, report: &mut Report, case: &str, system: &str, messages: f64) {
        let per_message = |secs: f64| secs / messages.max(1.0) * 1e6;
        let postgres = postgres_cpu_secs() - self.postgres;
        report.add(
            SCENARIO,
            case,
            system,
            "PostgreSQL CPU per message",
            "µs",
            per_message(postgres),
        );
        if let (Some(before), Some(now)) = (self.server, self.server_pid.and_then(proc_cpu_secs)) {
            report.add(
                SCENARIO,
                case,
                system,
                "server CPU per message",
                "µs",
                per_message(now - before),
            );
        }
        let clients = clients_cpu_secs(self.pgbench) - self.clients;
        report.add(
            SCENARIO,
            case,
            system,
            "client CPU per message",
            "µs",
            per_message(clients),
        );
    }
}

/// CPU seconds of the load's clients: this process, or (`pgbench`) the child
/// processes this one has waited for, of which pgbench is the one that runs
/// in between.
fn clients_cpu_secs(pgbench: bool) -> f64 {
    if !pgbench {
        return proc_cpu_secs(std::process::id()).unwrap_or(0.0);
    }
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Closed loop: each client sends its next message when the last was answered.
/// Returns (messages, seconds, latencies in ms, failures).
async fn chatapp_load(
    url: &str,
    senders: &[User],
    chats: &[i64],
    duration: Duration,
) -> (usize, f64, Vec<f64>, usize) {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        let url = format!("{url}/api/v1/messages");
        let auth = format!("Bearer {}", user.token);
        let chat = chats[i % chats.len()];
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per client, as a real client holds.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("http client");
            let body = serde_json::json!({ "chat_id": chat, "content": CONTENT }).to_string();
            let mut latencies = Vec::new();
            let mut failures = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = http
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map(|r| r.status() == 201)
                    .unwrap_or(false);
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                if !ok {
                    failures += 1;
                }
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await.expect("sender task");
        all.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    (all.len(), elapsed, all, failures)
}

/// The handler's statement as a pgbench script, with the request's
/// parameters as pgbench variables (`-M prepared` binds them).
fn write_pgbench_script(env: &Env, chats: &[i64], users: &[User]) -> PathBuf {
    let first_chat = chats[0];
    assert!(
        chats.windows(2).all(|w| w[1] == w[0] + 1),
        "seeded chats have consecutive ids"
    );
    let first_user = users[0].id;
    assert!(
        users.windows(2).all(|w| w[1].id == w[0].id + 1),
        "seeded users have consecutive ids"
    );
    let send = chatapp::messages::SEND_SQL
        .replace("$1", ":chat")
        .replace("$2", ":sender")
        .replace("$3", &format!("'{CONTENT}'"))
        .replace("$4", "null::text")
        .replace("$5", &content_words())
        .replace("$6", "null::bigint")
        .replace("$7", "null::text")
        // The seeded users' tokens are of the first version.
        .replace("$8", "0");
    let one_line = send.split_whitespace().collect::<Vec<_>>().join(" ");
    // One statement, committed on its own: exactly what the handler sends.
    let script = format!(
        "\\set chat {first_chat} + (:client_id % {n})\n\\set sender {first_user} + :client_id\n{one_line};\n",
        n = chats.len(),
    );
    let path = env
        .log_dir
        .join(format!("send-{}.pgbench.sql", std::process::id()));
    std::fs::write(&path, script).expect("write pgbench script");
    path
}

/// The search words the server sends with [`CONTENT`], as an SQL literal.
fn content_words() -> String {
    let words = chatapp::messages::words::tsvector_text(CONTENT);
    format!("'{}'", words.replace('\'', "''"))
}

/// The server's `chatapp_send_batch_size` histogram so far: (sum, count).
async fn batch_sizes(url: &str) -> (f64, f64) {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("chatapp_send_batch_size_sum "),
        value("chatapp_send_batch_size_count "),
    )
}

/// The group-commit statement as a pgbench script: `batch` sends per
/// transaction, from `users` (each a member of every chat) spread over
/// `chats`, as the server's committing task sends them.
fn write_pgbench_batch_script(env: &Env, chats: &[i64], users: &[User], batch: usize) -> PathBuf {
    let (first_chat, first_user) = (chats[0], users[0].id);
    let (n_chats, n_users) = (chats.len(), users.len());
    let series = format!("generate_series(0, {}) i", batch - 1);
    let send = chatapp::messages::SEND_BATCH_SQL
        .replace(
            "$1",
            &format!(
                "(select array_agg({first_chat} + (i + :client_id) % {n_chats}) from {series})"
            ),
        )
        .replace(
            "$2",
            &format!(
                "(select array_agg({first_user} + (i + :client_id) % {n_users}) from {series})"
            ),
        )
        .replace(
            "$3",
            &format!("array_fill('{CONTENT}'::text, array[{batch}])"),
        )
        .replace("$4", &format!("array_fill(null::text, array[{batch}])"))
        .replace(
            "$5",
            &format!("array_fill({}::text, array[{batch}])", content_words()),
        )
        .replace("$6", &format!("array_fill(null::int8, array[{batch}])"))
        .replace("$7", &format!("array_fill(null::text, array[{batch}])"))
        .replace("$8", &format!("array_fill(0, array[{batch}])"));
    let one_line = send.split_whitespace().collect::<Vec<_>>().join(" ");
    let path = env.log_dir.join(format!(
        "send-batch{batch}-{}.pgbench.sql",
        std::process::id()
    ));
    std::fs::write(&path, format!("{one_line};\n")).expect("write pgbench script");
    path
}
