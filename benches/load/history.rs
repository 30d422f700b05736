//! `history`: GET /api/v1/messages/chat/:id pages on a chat of 10,000 and one
//! of 1,000,000 messages — the newest page, and `before_id` pages at random
//! depths — side by side with pgbench running the handler's own query.
//! Cursor pages are index range scans, so depth and chat size should not show.
//! pgbench plans every execution with its values (`-M extended`), as chatapp's
//! per-call prepare does: a statement prepared once falls back to a generic
//! plan, which cannot use `$3 is null or m.id < $3` as an index bound and so
//! walks the 1,000,000-message chat from its newest row.

use crate::common::{
    Env, Protocol, SEEDED_WORDS_SQL, ServerOpts, connect_db, join, pgbench, record_requests,
    seed_users, seeded_words_match,
};
use crate::report::Report;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SCENARIO: &str = "history";
const PAGE: i64 = 50;

pub async fn run(env: &Env, report: &mut Report) {
    let sizes = env
        .opts
        .list("messages", &[10_000, 1_000_000], &[1_000, 10_000]);
    let requests = env.opts.num("requests", 4000, 200) as usize;
    let concurrency = env.opts.num("concurrency", 8, 4) as usize;
    let secs = env.opts.num("duration", 5, 1);
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- history --messages {} --requests {requests} --concurrency {concurrency} --duration {secs} --repeats {}",
            join(&sizes),
            env.opts.repeats
        ),
    );
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let reader = seed_users(env, &db, "history", 1).await.remove(0);
    let mut chats = Vec::new();
    for &n in &sizes {
        let started = Instant::now();
        let row = db
            .query_one(
                &format!("with c as (
                     insert into chats (name, is_group, creator_id) values ('history ' || $2::bigint, true, $1) returning id
                 ), m as (
                     insert into chat_members (chat_id, user_id, is_admin) select id, $1, true from c
                 ), msgs as (
                     insert into messages (chat_id, sender_id, content, search)
                     select c.id, $1, t.content, {words}
                     from c, generate_series(1, $2::bigint) g,
                          lateral (select 'history message number ' || g || ', of an ordinary length' as content) t
                     returning id
                 )
                 select (select id from c), min(id), max(id) from msgs",
                    words = SEEDED_WORDS_SQL
                ),
                &[&reader.id, &(n as i64)],
            )
            .await
            .expect("seed history");
        let (chat, lo, hi): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        eprintln!(
            "   seeded {n} messages in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        report.check(
            SCENARIO,
            seeded_words_match(&db, chat).await,
            format!("{n} msgs: seeded messages carry the words the server writes"),
        );
        chats.push((n, chat, lo, hi));
    }
    db.batch_execute("vacuum analyze messages")
        .await
        .expect("analyze");
    let server = env.server(&db_url, ServerOpts::default()).await;
    let duration = Duration::from_secs(secs);
    for _ in 0..env.opts.repeats {
        for &(n, chat, lo, hi) in &chats {
            for (kind, deep) in [("newest page", false), ("before_id page", true)] {
                let case = format!("{n} msgs");
                let (rps, latencies, bad) = load(
                    &server.url,
                    &reader.token,
                    chat,
                    (lo, hi),
                    deep,
                    requests,
                    concurrency,
                )
                .await;
                report.check(
                    SCENARIO,
                    bad == 0,
                    format!("{case} {kind}: every page had {PAGE} messages below its cursor ({bad} did not)"),
                );
                record_requests(report, SCENARIO, &case, "chatapp", (kind, rps), latencies);
                let script = write_script(env, chat, reader.id, (lo, hi), deep);
                let (tps, latencies) =
                    pgbench(&db_url, &script, Protocol::Extended, concurrency, secs);
                record_requests(report, SCENARIO, &case, "pgbench", (kind, tps), latencies);
            }
        }
    }
    let _ = duration;
    if let [(small, ..), .., (large, ..)] = chats[..] {
        for kind in ["newest page", "before_id page"] {
            let rps = |n: u64| {
                report.median(
                    SCENARIO,
                    &format!("{n} msgs"),
                    "chatapp",
                    &format!("{kind} requests/s"),
                )
            };
            if let (Some(a), Some(b)) = (rps(small), rps(large)) {
                report.target(
                    SCENARIO,
                    &format!("{kind}: {small}-msg / {large}-msg chat requests/s"),
                    a / b,
                    "<=",
                    1.5,
                );
            }
        }
    }
}

/// `requests` pages fetched by `concurrency` clients; `deep` picks a random
/// `before_id` in the chat. Returns (requests/s, latencies ms, bad pages).
async fn load(
    url: &str,
    token: &str,
    chat: i64,
    (lo, hi): (i64, i64),
    deep: bool,
    requests: usize,
    concurrency: usize,
) -> (f64, Vec<f64>, usize) {
    let remaining = Arc::new(AtomicU64::new(requests as u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let remaining = remaining.clone();
        let base = format!("{url}/api/v1/messages/chat/{chat}?limit={PAGE}");
        let auth = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("http client");
            let mut rng = crate::common::Rng::new(worker as u64 + 1);
            let mut latencies = Vec::new();
            let mut bad = 0;
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let before =
                    deep.then(|| lo + PAGE + rng.below((hi - lo - PAGE) as u64 + 1) as i64);
                let url = match before {
                    Some(b) => format!("{base}&before_id={b}"),
                    None => base.clone(),
                };
                let t = Instant::now();
                let page: Option<Vec<serde_json::Value>> =
                    match http.get(&url).header("authorization", &auth).send().await {
                        Ok(r) if r.status() == 200 => r.json().await.ok(),
                        _ => None,
                    };
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                let newest = before.unwrap_or(hi + 1) - 1;
                let ok = page.is_some_and(|p| {
                    p.len() == PAGE as usize && p[0]["id"].as_i64() == Some(newest)
                });
                if !ok {
                    bad += 1;
                }
            }
            (latencies, bad)
        }));
    }
    let mut all = Vec::new();
    let mut bad = 0;
    for t in tasks {
        let (l, b) = t.await.expect("history client");
        all.extend(l);
        bad += b;
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), all, bad)
}

fn write_script(
    env: &Env,
    chat: i64,
    user: i64,
    (lo, hi): (i64, i64),
    deep: bool,
) -> std::path::PathBuf {
    let sql = chatapp::messages::history_sql(false)
        .replace("$1", &chat.to_string())
        .replace("$2", &user.to_string())
        .replace(
            "$3::bigint",
            if deep {
                ":before::bigint"
            } else {
                "null::bigint"
            },
        )
        .replace("$3", if deep { ":before" } else { "null" })
        .replace("$4::bigint", "null::bigint")
        .replace("$4", "null")
        .replace("$5", &PAGE.to_string())
        .replace("$6", "0");
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let script = format!("\\set before random({}, {})\n{one_line};\n", lo + PAGE, hi);
    let path = env
        .log_dir
        .join(format!("history-{chat}-{deep}.pgbench.sql"));
    std::fs::write(&path, script).expect("write pgbench script");
    path
}
