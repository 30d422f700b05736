//! `failover`: three `chatapp serve` nodes on one database; `--clients` N
//! WebSocket clients spread evenly over them, in chats of `--chat-sizes`
//! members (10, 100, 1,000, repeated until everyone is in one); senders
//! post `--rate` messages/s in all, over REST through the nodes that will
//! survive. After `--warm-ms` one node is killed (`--modes kill`: SIGKILL)
//! or stopped (`term`: SIGTERM; it closes its sockets with 1001 and a
//! `retry_after_ms`). Each of its clients reconnects to a live node with
//! `since` = the last event it saw, as README says a client should: after a
//! 1001 it waits `retry_after_ms`; after a connection lost without a close
//! frame, or a failed attempt, it backs off exponentially with full jitter.
//!
//! The storm lasts from the signal until the last of the node's clients has
//! recovered: it is connected again and has every message of its chat up to
//! its new `ready.last_event_id`. Figures: that time (target <= 10 s) and
//! the median client's, split for each client after its wait into the
//! attempt up to `ready` and `ready` up to recovered; send-to-receive
//! p50/p99/max of the clients of the surviving nodes during the storm
//! (target p99 < 100 ms) and before it, with `--stamps on` the storm's
//! split at the kernel's receive stamp (`stamp.rs`) into send-to-socket and
//! socket-to-read; PostgreSQL's CPU over the storm (utime + stime of its
//! processes, from /proc) and its connections (pg_stat_activity) before and
//! during it; the surviving nodes' CPU and how busy the whole machine was
//! (/proc/stat) over the storm and before it; the surviving nodes' replays
//! by source (`chatapp_ws_replays_total{source}`); printed, the storm's p99
//! by second and each storm message's path (its statement's start, its 201,
//! its first and last delivery; [`message_paths`]); and how long until
//! users of the dead node who do not come back (`--leavers`, watched from a
//! surviving node) are shown offline — the nodes' presence timeout,
//! `--presence-timeout-secs`, the server's default unless given. Checks:
//! every client has every message of its chat exactly once and in event
//! order; every resume was `recovered`; every send succeeded; after SIGTERM
//! every client of the node was told a `retry_after_ms` within
//! `ws.reconnect_spread_ms`.
//!
//! Clients live in worker processes (`failover-worker`, see
//! `failover_worker.rs`), at most `--per-worker` each, each holding the
//! clients of one home node.

use crate::common::{
    BENCH_CONFIG, Env, Percentiles, Server, ServerOpts, User, connect_db, machine_cpu_secs,
    postgres_cpu_secs, proc_cpu_secs, seed_chat, seed_users, settle_cpu, source_ip, ws_login,
};
use crate::failover_worker::{self, MARK, Outcome, WORKER, wall_ms};
use crate::report::Report;
use crate::worker::{Worker, floats};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SCENARIO: &str = "failover";
/// The node that fails; the senders and the watcher use the others.
const DEAD: usize = 0;
const NODES: usize = 3;
/// POSTs in flight at most; a tick finding none free is counted as skipped.
const SENDS_IN_FLIGHT: usize = 64;

struct Params {
    clients: usize,
    chat_sizes: Vec<u64>,
    rate: f64,
    warm: Duration,
    /// How long sends go on after the last client reconnected.
    tail: Duration,
    per_worker: usize,
    leavers: usize,
    spread_ms: u64,
    presence: Option<(u64, u64)>,
    /// Kernel receive stamps on the clients' sockets (`--stamps on`).
    stamps: bool,
}

pub async fn run(env: &Env, report: &mut Report) {
    if env.opts.server.is_some() {
        report.check(
            SCENARIO,
            false,
            "failover starts and kills its own nodes; it cannot run with --server",
        );
        return;
    }
    let smoke = env.smoke();
    let modes: Vec<String> = env
        .opts
        .get("modes")
        .unwrap_or("kill,term")
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    if let Some(bad) = modes.iter().find(|m| *m != "kill" && *m != "term") {
        report.check(SCENARIO, false, format!("unknown --modes {bad:?}"));
        return;
    }
    let presence_timeout = env.opts.get("presence-timeout-secs").map(|_| {
        let timeout = env.opts.num("presence-timeout-secs", 45, 2).max(2);
        let beat = env
            .opts
            .num("presence-heartbeat-secs", 10, 1)
            .clamp(1, timeout - 1);
        (beat, timeout)
    });
    let p = Params {
        clients: env.opts.num("clients", 30_000, 300).max(NODES as u64) as usize,
        chat_sizes: env.opts.list("chat-sizes", &[10, 100, 1000], &[10, 100]),
        rate: env.opts.num("rate", 20, 20).max(1) as f64,
        warm: Duration::from_millis(env.opts.num("warm-ms", 5_000, 500)),
        tail: Duration::from_millis(env.opts.num("tail-ms", 2_000, 500)),
        per_worker: env.opts.num("per-worker", 15_000, 150).max(1) as usize,
        leavers: env.opts.num("leavers", 20, 3).max(1) as usize,
        spread_ms: env.opts.num("spread-ms", 5_000, 500),
        presence: presence_timeout.or(smoke.then_some((1, 2))),
        stamps: env.opts.get("stamps").is_some_and(|v| v == "on"),
    };
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- failover --modes {} --clients {} --chat-sizes {} --rate {} \
             --warm-ms {} --tail-ms {} --per-worker {} --leavers {} --spread-ms {}{}{} --repeats {}",
            modes.join(","),
            p.clients,
            crate::common::join(&p.chat_sizes),
            p.rate,
            p.warm.as_millis(),
            p.tail.as_millis(),
            p.per_worker,
            p.leavers,
            p.spread_ms,
            p.presence
                .map(|(b, t)| format!(
                    " --presence-heartbeat-secs {b} --presence-timeout-secs {t}"
                ))
                .unwrap_or_default(),
            if p.stamps { " --stamps on" } else { "" },
            env.opts.repeats
        ),
    );
    for _ in 0..env.opts.repeats {
        for mode in &modes {
            let case = format!("N={} {mode}", p.clients);
            if let Err(e) = once(env, report, &case, mode == "kill", &p).await {
                report.check(SCENARIO, false, format!("{case}: {e}"));
            }
        }
    }
    for mode in &modes {
        let case = format!("N={} {mode}", p.clients);
        let recovered = report.median(SCENARIO, &case, "chatapp", "all recovered after");
        let p99 = report.median(SCENARIO, &case, "chatapp", "storm send-to-receive p99");
        if let Some(s) = recovered {
            report.target(SCENARIO, &format!("{case} all recovered s"), s, "<=", 10.0);
        }
        if let Some(ms) = p99 {
            report.target(
                SCENARIO,
                &format!("{case} surviving clients' p99 during the storm ms"),
                ms,
                "<=",
                100.0,
            );
        }
    }
}

/// The chats' sizes: `sizes` in turn until `n` clients are placed.
fn chat_plan(n: usize, sizes: &[u64]) -> Vec<usize> {
    let mut plan = Vec::new();
    let mut left = n;
    for &size in sizes.iter().cycle() {
        if left == 0 {
            break;
        }
        let size = (size.max(2) as usize).min(left);
        plan.push(size);
        left -= size;
    }
    plan
}

/// The nodes' configuration: the bench's, plus no drain delay (no load
/// balancer here to tell), the reconnect spread and the presence timing.
fn node_config(p: &Params) -> String {
    let mut config = BENCH_CONFIG.replace("http:\n", "http:\n  drain_delay_secs: 0\n");
    config.push_str(&format!("ws:\n  reconnect_spread_ms: {}\n", p.spread_ms));
    if let Some((beat, timeout)) = p.presence {
        config.push_str(&format!(
            "  presence_heartbeat_secs: {beat}\n  presence_timeout_secs: {timeout}\n"
        ));
    }
    config
}

async fn once(
    env: &Env,
    report: &mut Report,
    case: &str,
    kill: bool,
    p: &Params,
) -> Result<(), String> {
    let n = p.clients;
    eprintln!("failover {case}: seeding {n} users, starting {NODES} nodes");
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let users = seed_users(env, &db, "failover", n + p.leavers + 1).await;
    let (clients, rest) = users.split_at(n);
    let (watcher, leavers) = rest.split_first().expect("a watcher");
    let mut chats = Vec::new();
    let mut first = 0;
    for (k, size) in chat_plan(n, &p.chat_sizes).into_iter().enumerate() {
        let members: Vec<i64> = clients[first..first + size].iter().map(|u| u.id).collect();
        let chat = seed_chat(&db, &format!("failover {k}"), &members).await;
        chats.push((chat, first, size));
        first += size;
    }
    let leaver_ids: Vec<i64> = std::iter::once(watcher.id)
        .chain(leavers.iter().map(|u| u.id))
        .collect();
    seed_chat(&db, "failover leavers", &leaver_ids).await;
    let clients_file = write_clients(env, clients, &chats);
    let config = node_config(p);
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let opts = ServerOpts {
            config: config.clone(),
            ..ServerOpts::default()
        };
        nodes.push(env.server(&db_url, opts).await);
    }
    let node_list = nodes
        .iter()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let pids: Vec<u32> = nodes.iter().filter_map(Server::pid).collect();

    // Connect every client to its home node (client i: node i % 3). A
    // worker holds the clients of one home node: each is one thread, and a
    // surviving client's frames must not wait behind the handshakes of the
    // dead node's clients, which a real client (one per device) never does.
    let mut workers = Vec::new();
    for home in 0..NODES {
        let on_home = (0..n).filter(|i| i % NODES == home).count();
        let k = on_home.div_ceil(p.per_worker).max(1);
        for w in 0..k {
            let from = on_home * w / k;
            workers.push(Worker::spawn(
                WORKER,
                &[
                    ("clients", clients_file.display().to_string()),
                    ("home", home.to_string()),
                    ("first", from.to_string()),
                    ("count", (on_home * (w + 1) / k - from).to_string()),
                    ("nodes", node_list.clone()),
                    ("db", db_url.clone()),
                    ("stamps", if p.stamps { "on" } else { "off" }.to_string()),
                ],
            )?);
        }
    }
    for w in &mut workers {
        w.expect("loaded", Duration::from_secs(60)).await?;
    }
    let connecting = Instant::now();
    for w in &mut workers {
        w.send("connect")?;
    }
    let mut connected = 0;
    for w in &mut workers {
        let r = w
            .expect("connected", Duration::from_secs(60 + n as u64 / 100))
            .await?;
        connected += r["ok"].as_u64().unwrap_or(0);
        if r["failed"].as_u64().unwrap_or(0) > 0 {
            return Err(format!("clients failed to connect: {}", r["errors"]));
        }
    }
    eprintln!(
        "failover {case}: {connected} clients connected in {:.1}s; waiting for the nodes to settle",
        connecting.elapsed().as_secs_f64()
    );
    let dead_addr = nodes[DEAD].addr();
    // The leavers read what comes (so a stopping node closes them at once)
    // and never come back.
    for (i, u) in leavers.iter().enumerate() {
        let (mut ws, _) = ws_login(dead_addr, source_ip(n + i), u, None).await?;
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    let watch = tokio::spawn(watch_offline(
        nodes[1].addr(),
        source_ip(n + p.leavers),
        watcher.clone(),
        leavers.iter().map(|u| u.id).collect(),
    ));
    // The connects' presence notices fan out to every co-member: let them pass.
    settle_cpu(&pids, 0.3, Duration::from_secs(180)).await;

    // Steady sends, then the failure.
    let survivors: Vec<u32> = nodes[DEAD + 1..].iter().filter_map(Server::pid).collect();
    let sampler = Sampler::start(&db_url, survivors).await;
    let (stop_tx, stop) = watch::channel(false);
    let senders = tokio::spawn(send_steady(
        nodes[1..].iter().map(|s| s.url.clone()).collect(),
        chats
            .iter()
            .map(|&(chat, first, _)| (chat, format!("Bearer {}", clients[first].token)))
            .collect(),
        p.rate,
        stop,
    ));
    let steady_from = wall_ms() + 500.0;
    tokio::time::sleep(p.warm).await;
    // A marker for profilers (as fanout's): the storm starts now.
    eprintln!("failover {case}: signalling the node");
    let signalled = wall_ms();
    nodes[DEAD].signal(if kill { libc::SIGKILL } else { libc::SIGTERM });
    let on_dead = (0..n).filter(|i| i % NODES == DEAD).count() as u64;
    let all_back = wait_reconnected(&mut workers, on_dead, n).await;
    eprintln!(
        "failover {case}: {}",
        match all_back {
            Ok(s) => format!("every client of the dead node reconnected after {s:.2}s"),
            Err(ref e) => e.clone(),
        }
    );
    tokio::time::sleep(p.tail).await;
    let _ = stop_tx.send(true);
    let sent = senders.await.map_err(|e| e.to_string())?;
    let offline_limit = Duration::from_secs(p.presence.map_or(45 + 10, |(b, t)| t + b) * 2 + 10);
    let offline = tokio::time::timeout(offline_limit, watch)
        .await
        .map_err(|_| "the dead node's leavers were never shown offline".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|r| r);
    let samples = sampler.stop().await;

    // Every client checks its messages against the event log.
    let mut totals = Outcome::default();
    for w in &mut workers {
        w.send("finish")?;
    }
    for w in &mut workers {
        let r = w
            .expect("finished", Duration::from_secs(120 + n as u64 / 100))
            .await?;
        let outcome = serde_json::from_value(r["outcome"].clone())
            .map_err(|e| format!("a worker's outcome: {e}"))?;
        totals.merge(outcome);
    }
    let recovered_at = Percentiles::new(totals.recovered_ms.clone());
    let storm_end = recovered_at.max().max(signalled);
    let mut storm_lat = Vec::new();
    let mut storm_at = Vec::new();
    let mut storm_event = Vec::new();
    let mut storm_socket = Vec::new();
    let mut steady_lat = Vec::new();
    for w in &mut workers {
        w.send(&format!(
            "latency {signalled} {storm_end} {steady_from} {signalled}"
        ))?;
    }
    for w in &mut workers {
        let r = w.expect("latency", Duration::from_secs(60)).await?;
        storm_lat.extend(floats(&r["storm"]));
        storm_at.extend(floats(&r["storm_at"]));
        storm_event.extend(floats(&r["storm_event"]));
        storm_socket.extend(floats(&r["storm_socket"]));
        steady_lat.extend(floats(&r["steady"]));
    }
    let replays = replays(&nodes[1..]).await;
    for w in &mut workers {
        let _ = w.send("exit");
    }
    for w in &mut workers {
        w.wait(Duration::from_secs(10)).await;
    }
    drop(nodes);
    let _ = std::fs::remove_file(&clients_file);

    // Checks.
    report.check(
        SCENARIO,
        totals.complete == n as u64,
        format!(
            "{case}: {}/{n} clients have every message of their chat exactly once, in event order \
             ({} missing, {} repeated, {} not of their chat, {} out of order)",
            totals.complete, totals.missing, totals.repeated, totals.stray, totals.disorder
        ),
    );
    report.check(
        SCENARIO,
        all_back.is_ok() && totals.recovered_ms.len() as u64 == on_dead && totals.unrecovered == 0,
        format!(
            "{case}: {}/{on_dead} clients of the dead node resumed on a live node with ready.recovered \
             ({} resumes not recovered; {} clients of surviving nodes dropped)",
            totals.recovered_ms.len(),
            totals.unrecovered,
            totals.dropped.saturating_sub(on_dead)
        ),
    );
    report.check(
        SCENARIO,
        sent.failed == 0 && sent.sent > 0,
        format!(
            "{case}: {} messages sent through the surviving nodes, {} failed{}",
            sent.sent,
            sent.failed,
            sent.error
                .as_ref()
                .map(|e| format!(" (e.g. {e})"))
                .unwrap_or_default()
        ),
    );
    if !kill {
        let told = &totals.retry_after_ms;
        report.check(
            SCENARIO,
            told.len() as u64 == on_dead && told.iter().all(|&ms| ms <= p.spread_ms),
            format!(
                "{case}: {}/{on_dead} clients of the stopped node were closed with 1001 and a \
                 retry_after_ms within {} ms (spread over {}..{} ms)",
                told.len(),
                p.spread_ms,
                told.iter().min().unwrap_or(&0),
                told.iter().max().unwrap_or(&0)
            ),
        );
    }
    report.check(
        SCENARIO,
        offline.is_ok(),
        format!(
            "{case}: the dead node's {} leavers were shown offline to a client of a live node{}",
            p.leavers,
            offline
                .as_ref()
                .err()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    );

    // Figures.
    let add = |report: &mut Report, metric: &str, unit: &str, v: f64| {
        report.add(SCENARIO, case, "chatapp", metric, unit, v)
    };
    let since = |at: f64| (at - signalled) / 1e3;
    add(report, "all recovered after", "s", since(storm_end));
    add(
        report,
        "median client recovered after",
        "s",
        since(recovered_at.at(0.5)),
    );
    // Where a client's time after its wait goes: its session start (the
    // handshake, the line of starts and their reads) up to `ready`, then
    // its presence snapshot's line and the replay.
    let to_ready = Percentiles::new(totals.attempt_to_ready_ms.clone());
    let after_ready = Percentiles::new(totals.ready_to_recovered_ms.clone());
    add(report, "attempt to ready p50", "ms", to_ready.at(0.5));
    add(report, "attempt to ready p99", "ms", to_ready.at(0.99));
    add(report, "ready to recovered p50", "ms", after_ready.at(0.5));
    add(report, "ready to recovered p99", "ms", after_ready.at(0.99));
    add(
        report,
        "reconnects refused or failed",
        "count",
        totals.failed_attempts as f64,
    );
    let seconds = by_second(&storm_at, &storm_lat);
    let (first, last) = Percentiles::first_and_last(
        storm_event
            .iter()
            .map(|&e| e as i64)
            .zip(storm_lat.iter().copied()),
    );
    let paths = message_paths(
        &db,
        storm_event
            .iter()
            .map(|&e| e as i64)
            .zip(storm_lat.iter().copied()),
        &sent.replies,
        signalled,
    )
    .await;
    if p.stamps {
        // The storm's delays split at the kernel's receive stamp: until the
        // server's write landed, and from there until the worker read it.
        let to_read = storm_lat.iter().zip(&storm_socket).map(|(all, s)| all - s);
        let to_read = Percentiles::new(to_read.collect());
        let to_socket = Percentiles::new(storm_socket);
        add(report, "storm send-to-socket p50", "ms", to_socket.at(0.5));
        add(report, "storm send-to-socket p99", "ms", to_socket.at(0.99));
        add(report, "storm socket-to-read p50", "ms", to_read.at(0.5));
        add(report, "storm socket-to-read p99", "ms", to_read.at(0.99));
    }
    let storm = Percentiles::new(storm_lat);
    let steady = Percentiles::new(steady_lat);
    add(report, "storm send-to-receive p50", "ms", storm.at(0.5));
    add(report, "storm send-to-receive p99", "ms", storm.at(0.99));
    add(report, "storm send-to-receive max", "ms", storm.max());
    add(
        report,
        "storm deliveries measured",
        "count",
        storm.count() as f64,
    );
    add(report, "before send-to-receive p99", "ms", steady.at(0.99));
    add(report, "messages sent", "count", sent.sent as f64);
    if sent.skipped > 0 {
        add(
            report,
            "sends skipped (64 in flight)",
            "count",
            sent.skipped as f64,
        );
    }
    if let Some(u) = samples.over(signalled, storm_end) {
        let secs = (storm_end - signalled).max(1.0) / 1e3;
        add(
            report,
            "PostgreSQL CPU seconds over the storm",
            "s",
            u.postgres_secs,
        );
        add(
            report,
            "PostgreSQL CPU over the storm",
            "% core",
            u.postgres_secs / secs * 100.0,
        );
        add(
            report,
            "PostgreSQL connections before",
            "count",
            u.connections_before,
        );
        add(
            report,
            "PostgreSQL connections during (max)",
            "count",
            u.connections_max,
        );
        // Whether the storm's latency is the machine's queue: the nodes,
        // PostgreSQL and the clients share its cores.
        add(
            report,
            "surviving nodes' CPU over the storm",
            "% core",
            u.nodes_secs / secs * 100.0,
        );
        add(
            report,
            "machine busy over the storm",
            "% all cores",
            u.machine_busy * 100.0,
        );
    }
    if let Some(u) = samples.over(steady_from, signalled) {
        add(
            report,
            "machine busy before the storm",
            "% all cores",
            u.machine_busy * 100.0,
        );
    }
    for source in ["memory", "log", "not_recovered"] {
        let v = replays
            .iter()
            .find(|(s, _)| s == source)
            .map_or(0.0, |r| r.1);
        add(report, &format!("replays from {source}"), "count", v);
    }
    if let Ok(at) = offline {
        add(
            report,
            "dead node's users shown offline after",
            "s",
            since(at),
        );
    }
    eprintln!(
        "failover {case}: all recovered {:.2}s after the signal, storm p99 {:.1} ms over {} deliveries",
        since(storm_end),
        storm.at(0.99),
        storm.count()
    );
    eprintln!("failover {case}: {seconds}");
    eprintln!(
        "failover {case}: the storm's {} messages: first delivery p50 {:.1} ms, p99 {:.1}; last delivery p50 {:.1}, p99 {:.1}",
        first.count(),
        first.at(0.5),
        first.at(0.99),
        last.at(0.5),
        last.at(0.99),
    );
    eprintln!("failover {case}: {}", paths.unwrap_or_else(|e| e));
    Ok(())
}

/// Where each storm message's time went, in ms after its POST began: up to
/// its statement's start (the message's `created_at`, the transaction's
/// start: the request, the token, the wait in the send queue), up to its
/// 201 (the statement, the commit and the reply), and up to its first and
/// last delivery to a surviving client (the NOTIFY, the listener, the
/// dispatch and the fan-out). Percentiles over the messages, then the
/// slowest ones by their last delivery, each with its second after the
/// signal: a second's p99 is set by its slowest message or two.
async fn message_paths(
    db: &tokio_postgres::Client,
    deliveries: impl Iterator<Item = (i64, f64)>,
    replies: &[(i64, f64, f64)],
    signalled: f64,
) -> Result<String, String> {
    let mut by_event: HashMap<i64, (f64, f64)> = HashMap::new();
    for (event, ms) in deliveries {
        let (first, last) = by_event.entry(event).or_insert((ms, ms));
        *first = first.min(ms);
        *last = last.max(ms);
    }
    let events: Vec<i64> = by_event.keys().copied().collect();
    let rows = db
        .query(
            "select e.id, m.id, (extract(epoch from m.created_at) * 1000)::float8
             from events e join messages m on m.id = (e.payload->>'message_id')::bigint
             where e.id = any($1)",
            &[&events],
        )
        .await
        .map_err(|e| format!("the storm messages' paths: {e}"))?;
    let replied: HashMap<i64, (f64, f64)> = replies
        .iter()
        .map(|&(id, sent, replied)| (id, (sent, replied)))
        .collect();
    // (second after the signal, statement began, 201, first, last)
    let mut paths: Vec<[f64; 5]> = rows
        .iter()
        .filter_map(|row| {
            let (first, last) = by_event.get(&row.get::<_, i64>(0))?;
            let (sent, done) = replied.get(&row.get::<_, i64>(1))?;
            let began: f64 = row.get(2);
            Some([
                (sent - signalled) / 1e3,
                began - sent,
                done - sent,
                *first,
                *last,
            ])
        })
        .collect();
    let column = |k: usize| Percentiles::new(paths.iter().map(|p| p[k]).collect());
    let mut out = format!(
        "the paths of {} storm messages (ms after the POST, p50 / p99):",
        paths.len()
    );
    for (k, name) in [
        (1, "statement began"),
        (2, "201 received"),
        (3, "first delivery"),
        (4, "last delivery"),
    ] {
        let p = column(k);
        out.push_str(&format!(" {name} {:.1} / {:.1};", p.at(0.5), p.at(0.99)));
    }
    paths.sort_by(|a, b| b[4].total_cmp(&a[4]));
    out.push_str(" slowest (second, statement, 201, first, last):");
    for p in paths.iter().take(8) {
        out.push_str(&format!(
            " [{:.1} s: {:.1}, {:.1}, {:.1}, {:.1}]",
            p[0], p[1], p[2], p[3], p[4]
        ));
    }
    Ok(out)
}

/// The storm's send-to-receive p99 and deliveries for each second after the
/// signal (`at`: ms after it, `ms`: latency), to see when its tail happens.
fn by_second(at: &[f64], ms: &[f64]) -> String {
    let mut seconds: Vec<Vec<f64>> = Vec::new();
    for (&at, &ms) in at.iter().zip(ms) {
        let s = (at / 1e3).max(0.0) as usize;
        if seconds.len() <= s {
            seconds.resize_with(s + 1, Vec::new);
        }
        seconds[s].push(ms);
    }
    let parts: Vec<String> = seconds
        .into_iter()
        .enumerate()
        .map(|(s, ms)| {
            let n = ms.len();
            let p = Percentiles::new(ms);
            format!("{s}-{} s: p99 {:.0} ms of {n}", s + 1, p.at(0.99))
        })
        .collect();
    format!("storm p99 by second: {}", parts.join("; "))
}

/// One line per client: `user_id chat_id home_node token`.
fn write_clients(env: &Env, clients: &[User], chats: &[(i64, usize, usize)]) -> PathBuf {
    let path = env
        .log_dir
        .join(format!("failover-clients-{}.txt", std::process::id()));
    let mut text = String::with_capacity(clients.len() * 220);
    for &(chat, first, size) in chats {
        for (i, u) in clients.iter().enumerate().skip(first).take(size) {
            text.push_str(&format!("{} {chat} {} {}\n", u.id, i % NODES, u.token));
        }
    }
    std::fs::write(&path, text).expect("write failover clients");
    path
}

/// Polls the workers until `on_dead` clients have reconnected and none is
/// still away; the seconds it took, or why it gave up.
async fn wait_reconnected(workers: &mut [Worker], on_dead: u64, n: usize) -> Result<f64, String> {
    let started = Instant::now();
    let limit = Duration::from_secs(60 + n as u64 / 500);
    loop {
        let (mut dropped, mut back) = (0, 0);
        for w in workers.iter_mut() {
            w.send("status")?;
            let r = w.expect("status", Duration::from_secs(30)).await?;
            dropped += r["dropped"].as_u64().unwrap_or(0);
            back += r["reconnected"].as_u64().unwrap_or(0);
        }
        if back >= on_dead && back == dropped {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "after {limit:?} {back} of {dropped} dropped clients had reconnected ({on_dead} were on the dead node)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct SendStats {
    sent: u64,
    failed: u64,
    skipped: u64,
    error: Option<String>,
    /// Each stored message's id, when its POST began and when its 201 came
    /// (wall-clock ms), to split its path ([`message_paths`]).
    replies: Vec<(i64, f64, f64)>,
}

/// Posts `rate` messages/s, round-robin over the chats (each by its first
/// member) and the nodes, until `stop`; open loop, so a slow node does not
/// lower the offered rate.
async fn send_steady(
    nodes: Vec<String>,
    chats: Vec<(i64, String)>,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> SendStats {
    let http = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(SENDS_IN_FLIGHT));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let error = Arc::new(std::sync::Mutex::new(None));
    let replies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut skipped = 0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0usize.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (chat, auth) = &chats[i % chats.len()];
        let url = format!("{}/api/v1/messages", nodes[i % nodes.len()]);
        let at = failover_worker::wall_nanos();
        let body = json!({
            "chat_id": chat,
            "content": format!("{MARK}{at}~a failover benchmark message of ordinary length"),
        });
        let request = http.post(url).header("authorization", auth).json(&body);
        let (sent, failed, error) = (sent.clone(), failed.clone(), error.clone());
        let replies = replies.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match request.send().await {
                Ok(r) if r.status() == 201 => {
                    let replied = wall_ms();
                    if let Some(id) = r.json::<Value>().await.ok().and_then(|m| m["id"].as_i64()) {
                        replies.lock().unwrap().push((id, at as f64 / 1e6, replied));
                    }
                    sent.fetch_add(1, Relaxed)
                }
                outcome => {
                    let why = match outcome {
                        Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    error.lock().unwrap().get_or_insert(why);
                    failed.fetch_add(1, Relaxed)
                }
            };
        });
    }
    let _ = gate.acquire_many(SENDS_IN_FLIGHT as u32).await;
    let error = error.lock().unwrap().take();
    let replies = std::mem::take(&mut *replies.lock().unwrap());
    SendStats {
        sent: sent.load(Relaxed),
        failed: failed.load(Relaxed),
        skipped,
        error,
        replies,
    }
}

/// A client of a surviving node sharing a chat with the leavers: when (wall
/// clock, ms) the last of them was shown offline.
async fn watch_offline(
    node: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    watcher: User,
    leavers: HashSet<i64>,
) -> Result<f64, String> {
    let (mut ws, _) = ws_login(node, source, &watcher, None).await?;
    let mut waiting = leavers;
    while let Some(msg) = ws.next().await {
        let Ok(Message::Text(text)) = msg else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        if frame["type"] == "presence" && frame["payload"]["online"] == false {
            waiting.remove(&frame["payload"]["user_id"].as_i64().unwrap_or(0));
            if waiting.is_empty() {
                return Ok(wall_ms());
            }
        }
    }
    Err("the watcher's socket closed".into())
}

/// The surviving nodes' replays by source, from their `/metrics`.
async fn replays(nodes: &[Server]) -> Vec<(String, f64)> {
    let mut by_source: Vec<(String, f64)> = Vec::new();
    for node in nodes {
        let Ok(r) = reqwest::get(format!("{}/metrics", node.url)).await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("chatapp_ws_replays_total{source=\"") else {
                continue;
            };
            let Some((source, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            match by_source.iter_mut().find(|(s, _)| s == source) {
                Some(e) => e.1 += v,
                None => by_source.push((source.to_string(), v)),
            }
        }
    }
    by_source
}

/// CPU seconds (PostgreSQL's, the surviving nodes', the whole machine's)
/// and PostgreSQL's connection count, sampled every 250 ms.
struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    wall_ms: f64,
    postgres: f64,
    connections: f64,
    nodes: f64,
    /// The machine's busy and total CPU seconds (every core).
    machine: (f64, f64),
}

impl Sample {
    fn take(survivors: &[u32], connections: f64) -> Sample {
        Sample {
            wall_ms: wall_ms(),
            postgres: postgres_cpu_secs(),
            connections,
            nodes: survivors.iter().filter_map(|&p| proc_cpu_secs(p)).sum(),
            machine: machine_cpu_secs(),
        }
    }
}

/// What [`Samples::over`] finds between two instants.
struct Usage {
    postgres_secs: f64,
    connections_before: f64,
    connections_max: f64,
    nodes_secs: f64,
    /// The share of the machine's cores that was busy, 0..=1.
    machine_busy: f64,
}

struct Samples(Vec<Sample>);

impl Sampler {
    async fn start(db_url: &str, survivors: Vec<u32>) -> Sampler {
        let db = connect_db(db_url).await;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return samples,
                }
                let connections = db
                    .query_one(
                        "select count(*) from pg_stat_activity
                         where datname = current_database() and pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map_or(f64::NAN, |r| r.get::<_, i64>(0) as f64);
                samples.push(Sample::take(&survivors, connections));
            }
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Samples {
        let _ = self.stop.send(true);
        Samples(self.task.await.unwrap_or_default())
    }
}

impl Samples {
    /// What was used over [`from`, `to`] (wall ms).
    fn over(&self, from: f64, to: f64) -> Option<Usage> {
        let before = self.0.iter().rev().find(|s| s.wall_ms <= from)?;
        let after = self.0.iter().find(|s| s.wall_ms >= to).or(self.0.last())?;
        let connections_max = self
            .0
            .iter()
            .filter(|s| s.wall_ms >= from && s.wall_ms <= after.wall_ms)
            .map(|s| s.connections)
            .fold(before.connections, f64::max);
        let machine_all = after.machine.1 - before.machine.1;
        Some(Usage {
            postgres_secs: after.postgres - before.postgres,
            connections_before: before.connections,
            connections_max,
            nodes_secs: after.nodes - before.nodes,
            machine_busy: (after.machine.0 - before.machine.0) / machine_all.max(f64::EPSILON),
        })
    }
}
