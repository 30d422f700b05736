//! `replay-cost`: what a WebSocket replay from an old `since` costs a user of
//! one quiet chat, on an event log of 10,000 events and on one of 1,000,000
//! (smoke: 2,000 and 20,000), side by side in one run. Replay reads the
//! user's own events (a walk of each of their chats on `events (chat_id,
//! id)`, and the partial GIN on `user_ids` for the events addressed to
//! them), so the two should cost the same.
//!
//! Per size, a fresh database whose log holds `--events` events of other
//! chats (written with SQL, shaped as the server logs message events, 1 in
//! 100 addressed to some other user as membership events are), then the
//! user's own chat: created and `--messages` messages posted over REST.
//! Servers run with `ws.replay_cache_bytes: 0`, so every replay reads the
//! log. Each repeat and size: a server is started, replays `since=0`
//! `--replays` times one after the other (after one untimed), and is
//! stopped.
//!
//! Figures: the replay's wall time as the client sees it (connect to the
//! last replayed frame; and to `ready`, which follows the budget count),
//! median and p99 over the replays; event rows PostgreSQL read per replay
//! (`pg_stat_user_tables`: `seq_tup_read + idx_tup_fetch` over the server's
//! whole life, divided by its replays, the untimed one too — its backends
//! flush their counts when they exit, so the stopped server's are all in); and the replay's
//! two statements (the budget count and the first page) under `EXPLAIN
//! (ANALYZE, BUFFERS)`: time and buffers, and the plan's shape on stderr.
//! Checks: `ready.recovered` is true, and every replay brings exactly the
//! chat's events, in order, none of another chat. Targets (reported, not
//! enforced): the largest log's median replay within 1.5x the smallest's,
//! and at most 4 event rows read per event replayed at every size.

use crate::common::{
    BENCH_CONFIG, Env, Percentiles, ServerOpts, User, connect_db, join, next_json, seed_users,
    source_ip, ws_login,
};
use crate::pg;
use crate::report::Report;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_tungstenite::tungstenite::Message;

const SCENARIO: &str = "replay-cost";
/// Chats the other events belong to.
const FOREIGN_CHATS: i64 = 100;

pub async fn run(env: &Env, report: &mut Report) {
    if env.opts.server.is_some() {
        eprintln!("replay-cost: skipped with --server (it fills fresh databases of its own)");
        return;
    }
    let sizes = env
        .opts
        .list("events", &[10_000, 1_000_000], &[2_000, 20_000]);
    let messages = env.opts.num("messages", 100, 100).max(1) as usize;
    let replays = env.opts.num("replays", 20, 5).max(1) as usize;
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- replay-cost --events {} --messages {messages} --replays {replays} --repeats {}",
            join(&sizes),
            env.opts.repeats
        ),
    );
    let config = format!("{BENCH_CONFIG}ws:\n  replay_cache_bytes: 0\n");
    let mut logs = Vec::new();
    for &n in &sizes {
        match seed(env, &config, n as i64, messages).await {
            Ok(log) => logs.push(log),
            Err(e) => {
                report.check(SCENARIO, false, format!("{n} events: seeding: {e}"));
                return;
            }
        }
    }
    for repeat in 0..env.opts.repeats {
        // Alternate the order, so a drift of the machine weighs on both.
        let order: Vec<&Log> = if repeat % 2 == 0 {
            logs.iter().collect()
        } else {
            logs.iter().rev().collect()
        };
        for log in order {
            measure(env, report, &config, log, replays).await;
        }
    }
    let median = |report: &Report, log: &Log, metric: &str| {
        report.median(SCENARIO, &log.case, "chatapp", metric)
    };
    if let [small, .., large] = &logs[..]
        && let (Some(a), Some(b)) = (
            median(report, small, "replay p50"),
            median(report, large, "replay p50"),
        )
    {
        report.target(
            SCENARIO,
            &format!(
                "replay time: {}-event / {}-event log",
                large.events, small.events
            ),
            b / a,
            "<=",
            1.5,
        );
    }
    // Each of the user's events is read at most three times (counted for
    // the budget, found by its chat's walk, fetched for its frame), so a
    // replay that reads more has read events of other chats.
    for log in &logs {
        if let Some(rows) = median(report, log, "event rows read per replay") {
            report.target(
                SCENARIO,
                &format!("{}: event rows read per event replayed", log.case),
                rows / log.own as f64,
                "<=",
                4.0,
            );
        }
    }
}

/// One size's database, as seeded.
struct Log {
    /// Events of other chats, ids 1..=events.
    events: i64,
    case: String,
    db_url: String,
    user: User,
    chat: i64,
    /// The user's events: ids events+1..=head.
    own: usize,
    head: i64,
}

async fn seed(env: &Env, config: &str, n: i64, messages: usize) -> Result<Log, String> {
    let started = Instant::now();
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    // Shaped as the server logs them: a message event keeps the message's
    // id, a membership event also the users it addresses.
    db.execute(
        "insert into events (id, chat_id, kind, user_ids, payload)
         select g, c, k, case when k = 'member_added' then array[2000000000 + g % 1000] else '{}' end,
                jsonb_build_object('chat_id', c, 'message_id', g)
         from generate_series(1, $1::bigint) g,
              lateral (select 1000000 + g % $2::bigint as c,
                              case when g % 100 = 0 then 'member_added' else 'message' end as k) x",
        &[&n, &FOREIGN_CHATS],
    )
    .await
    .map_err(|e| format!("insert events: {e}"))?;
    db.execute("update event_seq set last_id = $1", &[&n])
        .await
        .map_err(|e| format!("event_seq: {e}"))?;
    let user = seed_users(env, &db, &format!("replay{n}"), 1)
        .await
        .remove(0);
    let chat = {
        let server = env
            .server(
                &db_url,
                ServerOpts {
                    config: config.to_string(),
                    ..ServerOpts::default()
                },
            )
            .await;
        let http = reqwest::Client::new();
        let auth = format!("Bearer {}", user.token);
        let created = post(
            &http,
            &format!("{}/api/v1/chats", server.url),
            &auth,
            json!({ "name": "quiet", "is_group": true, "member_ids": [] }),
        )
        .await?;
        let chat = created["id"]
            .as_i64()
            .ok_or(format!("chat without id: {created}"))?;
        for i in 0..messages {
            post(
                &http,
                &format!("{}/api/v1/messages", server.url),
                &auth,
                json!({ "chat_id": chat, "content": format!("message {i} of the quiet chat") }),
            )
            .await?;
        }
        chat
    };
    let row = db
        .query_one(
            "select count(*), coalesce(max(id), 0), count(*) filter (where chat_id = $2)
             from events where id > $1",
            &[&n, &chat],
        )
        .await
        .map_err(|e| e.to_string())?;
    let (own, head, of_chat): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if own != messages as i64 + 1 || of_chat != own || head != n + own {
        return Err(format!(
            "expected chat_created and {messages} messages after event {n}: {own} events \
             ({of_chat} of the chat), the last {head}"
        ));
    }
    // A log this size has been vacuumed by autovacuum long since; here it
    // would run during the replays.
    db.batch_execute("vacuum analyze events")
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "   seeded {n} events and a chat of {messages} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Log {
        events: n,
        case: format!("{n} events"),
        db_url,
        user,
        chat,
        own: own as usize,
        head,
    })
}

async fn post(http: &reqwest::Client, url: &str, auth: &str, body: Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .header("authorization", auth)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != 201 {
        return Err(format!("POST {url}: {status} {body}"));
    }
    Ok(body)
}

/// One server's life on `log`'s database: an untimed replay, `replays`
/// timed ones, then the rows they read and the statements' plans.
async fn measure(env: &Env, report: &mut Report, config: &str, log: &Log, replays: usize) {
    let case = &log.case;
    let db = connect_db(&log.db_url).await;
    let before = settled_rows_read(&db).await;
    let server = env
        .server(
            &log.db_url,
            ServerOpts {
                config: config.to_string(),
                ..ServerOpts::default()
            },
        )
        .await;
    let mut times = Vec::new();
    let mut ready_times = Vec::new();
    let mut failed = Vec::new();
    for i in 0..=replays {
        match replay(server.addr(), log).await {
            // The first pays for the server's first database connections.
            Ok(_) if i == 0 => {}
            Ok((ready, done)) => {
                ready_times.push(ready);
                times.push(done);
            }
            Err(e) => failed.push(e),
        }
    }
    drop(server);
    let read = settled_rows_read(&db).await - before;
    report.check(
        SCENARIO,
        failed.is_empty(),
        format!(
            "{case}: {}/{} replays from since=0 were recovered and brought exactly the chat's {} events, \
             in order{}",
            replays + 1 - failed.len(),
            replays + 1,
            log.own,
            failed
                .first()
                .map(|e| format!(" (e.g. {e})"))
                .unwrap_or_default()
        ),
    );
    if times.is_empty() {
        return;
    }
    let add = |report: &mut Report, metric: &str, unit: &str, v: f64| {
        report.add(SCENARIO, case, "chatapp", metric, unit, v)
    };
    let done = Percentiles::new(times);
    let ready = Percentiles::new(ready_times);
    add(report, "replay p50", "ms", done.at(0.5));
    add(report, "replay p99", "ms", done.at(0.99));
    add(report, "ready p50", "ms", ready.at(0.5));
    add(
        report,
        "event rows read per replay",
        "rows",
        read as f64 / (replays + 1) as f64,
    );
    match explain(log).await {
        Ok(plans) => {
            for (name, plan) in plans {
                add(report, &format!("{name} query (EXPLAIN)"), "ms", plan.ms);
                add(
                    report,
                    &format!("{name} query buffers"),
                    "blocks",
                    plan.buffers,
                );
                eprintln!("   {case} {name} query: {}", plan.shape);
            }
        }
        Err(e) => eprintln!("   {case}: no EXPLAIN of the replay queries: {e}"),
    }
    // The EXPLAINs' connection is closed: let its counts land before the
    // next server's baseline.
    let _ = settled_rows_read(&db).await;
}

/// Connects with `since=0` and reads the replay through its last event;
/// returns the milliseconds to `ready` and to the last replayed frame.
async fn replay(addr: SocketAddr, log: &Log) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let (mut ws, ready) = ws_login(addr, source_ip(0), &log.user, Some(0)).await?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    if ready["recovered"] != true {
        return Err(format!("ready.recovered is not true: {ready}"));
    }
    if ready["last_event_id"].as_i64() != Some(log.head) {
        return Err(format!("ready.last_event_id is not {}: {ready}", log.head));
    }
    let mut last = log.events;
    for _ in 0..log.own {
        let frame = loop {
            let frame = next_json(&mut ws, Duration::from_secs(60)).await?;
            if frame["payload"]["event_id"].is_i64() {
                break frame;
            }
        };
        let id = frame["payload"]["event_id"].as_i64().unwrap_or(0);
        if id <= last {
            return Err(format!(
                "event {id} after {last} (another chat's, or out of order): {frame}"
            ));
        }
        last = id;
    }
    let done_ms = started.elapsed().as_secs_f64() * 1e3;
    // Nothing more: the answer to a ping queues behind the replay.
    ws.send(Message::Text(r#"{"type":"ping","ref":"end"}"#.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let frame = next_json(&mut ws, Duration::from_secs(10)).await?;
        if frame["payload"]["event_id"].is_i64() {
            return Err(format!("more than {} events replayed: {frame}", log.own));
        }
        if frame["type"] == "pong" {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok((ready_ms, done_ms))
}

/// Rows read from `events` so far, once no other client is connected to the
/// database: a backend's table counts reach the view when it exits (or
/// within seconds of going idle, not sooner).
async fn settled_rows_read(db: &tokio_postgres::Client) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let others: i64 = db
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and pid <> pg_backend_pid()
                   and backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if others == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg::rows_read(db, "events").await
}

struct Plan {
    ms: f64,
    buffers: f64,
    /// The plan's nodes, outermost first, one line.
    shape: String,
}

/// The replay's statements (`src/ws/conn/replay.rs`, read from the source
/// so they cannot drift) under `EXPLAIN (ANALYZE, BUFFERS)`, with the
/// values a replay from `since=0` binds, on a connection of their own.
async fn explain(log: &Log) -> Result<Vec<(&'static str, Plan)>, String> {
    let source = include_str!("../../src/ws/conn/replay.rs");
    let candidates = between(source, "static CANDIDATES_SQL: &str = \"", "\";")
        .ok_or("CANDIDATES_SQL not found in src/ws/conn/replay.rs")?;
    let page: i64 = between(source, "const REPLAY_PAGE: i64 = ", ";")
        .and_then(|v| v.trim().parse().ok())
        .ok_or("REPLAY_PAGE not found in src/ws/conn/replay.rs")?;
    let budget = chatapp::config::Config::default().ws.replay_max_events as i64 + 1;
    let statements = [
        (
            "budget",
            format!("select count(*) from ({candidates}) candidates"),
            budget,
        ),
        (
            "page",
            format!(
                "{} where e.id in ({candidates}) order by e.id",
                chatapp::events::READ_EVENTS_SQL.as_str()
            ),
            page,
        ),
    ];
    let db = connect_db(&log.db_url).await;
    let chats = vec![log.chat];
    let mut plans = Vec::new();
    for (name, sql, limit) in statements {
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&log.user.id, Type::INT8),
            (&0i64, Type::INT8),
            (&log.head, Type::INT8),
            (&chats, Type::INT8_ARRAY),
            (&limit, Type::INT8),
        ];
        let rows = db
            .query_typed(
                &format!("explain (analyze, buffers, format json) {sql}"),
                &params,
            )
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let text: String = rows
            .first()
            .map(|r| r.get::<_, Value>(0).to_string())
            .ok_or("no plan")?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let top = &doc[0];
        let plan = &top["Plan"];
        let blocks = |k: &str| plan[k].as_f64().unwrap_or(0.0);
        let mut shape = Vec::new();
        describe(plan, &mut shape);
        plans.push((
            name,
            Plan {
                ms: top["Execution Time"].as_f64().unwrap_or(f64::NAN),
                buffers: blocks("Shared Hit Blocks") + blocks("Shared Read Blocks"),
                shape: shape.join(" > "),
            },
        ));
    }
    Ok(plans)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// Each node as `type [index] (rows x loops)`, depth first.
fn describe(plan: &Value, out: &mut Vec<String>) {
    let mut node = plan["Node Type"].as_str().unwrap_or("?").to_string();
    if let Some(index) = plan["Index Name"].as_str() {
        node.push_str(&format!(" {index}"));
    } else if let Some(rel) = plan["Relation Name"].as_str() {
        node.push_str(&format!(" {rel}"));
    }
    let rows = plan["Actual Rows"].as_f64().unwrap_or(0.0);
    let loops = plan["Actual Loops"].as_f64().unwrap_or(0.0);
    node.push_str(&format!(" ({rows}x{loops})"));
    out.push(node);
    for child in plan["Plans"].as_array().into_iter().flatten() {
        describe(child, out);
    }
}
