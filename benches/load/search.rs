//! `search`: GET /api/v1/messages/search on a corpus of 10,000 messages and
//! one of 1,000,000, each in a database of its own, side by side with
//! pgbench running the handler's own query. (Smoke: 300 and 1,000 messages,
//! the `selective` and `common` cases only.)
//!
//! The corpus is written with SQL: 4 to 16 words a message (10 on average)
//! drawn from a vocabulary of 20,000 made-up words with a Zipf distribution
//! (a word's frequency falls as 1/rank, as in natural language: the commonest
//! word is in about half the messages, a word of rank r in about 1 in r), in
//! 10 chats of one reader, who searches all of them. Cases, each a set of
//! queries picked at random per request:
//!
//! - `rare`: one of 32 words planted in exactly 10 messages each, whatever
//!   the corpus's size (spread evenly over it): the index finds the same 10
//!   matches in a corpus of any size, so this case shows what the corpus's
//!   size alone costs;
//! - `selective`: one rare word (ranks 5,000-20,000: about 1 message in
//!   10,000 holds one, so about 1 in the small corpus and a full page of
//!   50 from 50-200 matches in the large one): the index finds its few
//!   matches;
//! - `mid`: one word of ranks 200-400 (about 1 message in 300): the index
//!   finds its matches, all of which are read and sorted for the newest 50;
//! - `common`: one of the 3 commonest words (a third to a half of all
//!   messages): the newest messages are read until the page is full;
//! - `phrase`: two common words adjacent, in order (a few percent).
//!
//! Figures per case: requests/s, p50, p99, and how many messages the
//! queries match (median over them). pgbench runs the handler's statement
//! alone (`-M extended`: planned with its query, as the server's is; the
//! query is picked by subscripting an array literal, which PostgreSQL folds
//! before planning), without the handler's transaction and time limit.
//! Checks: every response is a page of as many messages as the query
//! matches, up to 50, or 503 `query_timeout` — the time limit bounds what
//! the page size does not, so timeouts are counted and reported; anything
//! else fails the run. Targets: `rare` and `selective` p99 under 50 ms on
//! the largest corpus; `rare` p99 within 1.5x of the smallest corpus's (the
//! same matches in both), and `selective`'s ratio reported beside it (its
//! page grows with the corpus); `common` p99 within the server's search
//! time limit.

use crate::common::{
    Env, Percentiles, Protocol, Rng, SEEDED_WORDS_SQL, ServerOpts, User, connect_db, join, pgbench,
    record_requests, seed_users, seeded_words_match,
};
use crate::report::Report;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const SCENARIO: &str = "search";
const PAGE: usize = 50;
const CHATS: i64 = 10;
const VOCABULARY: u32 = 20_000;
/// Words planted for the `rare` case (ranks above the vocabulary, never
/// drawn), and in how many messages each.
const PLANTED: u32 = 32;
const PLANTED_IN: u64 = 10;
/// The server's `limits.search_timeout_ms` (its default), for the target.
const TIMEOUT_MS: f64 = 1000.0;
/// Word `r` spells `r` in base 16, one syllable per digit.
const SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "va", "ze", "bo", "di", "fu", "ga", "he", "ju",
];

fn word(rank: u32) -> String {
    let mut digits = Vec::new();
    let mut r = rank;
    loop {
        digits.push(SYLLABLES[(r & 15) as usize]);
        r >>= 4;
        if r == 0 {
            break;
        }
    }
    digits.reverse();
    digits.concat()
}

/// [`word`] in SQL, of an integer expression `r` below 65,536.
fn word_sql(r: &str) -> String {
    let all = SYLLABLES.concat();
    let digit = |shift: u32| format!("substr('{all}', 2 * (({r} >> {shift}) & 15) + 1, 2)");
    format!(
        "case when {r} >= 4096 then {} else '' end || case when {r} >= 256 then {} else '' end
         || case when {r} >= 16 then {} else '' end || {}",
        digit(12),
        digit(8),
        digit(4),
        digit(0)
    )
}

struct Case {
    name: &'static str,
    queries: Vec<String>,
}

fn cases() -> Vec<Case> {
    let spread = |lo: u32, hi: u32, n: u32| (0..n).map(move |i| lo + i * (hi - lo) / n);
    vec![
        Case {
            name: "rare",
            queries: (1..=PLANTED).map(|i| word(VOCABULARY + i)).collect(),
        },
        Case {
            name: "selective",
            queries: spread(5_000, VOCABULARY, 32).map(word).collect(),
        },
        Case {
            name: "mid",
            queries: spread(200, 400, 32).map(word).collect(),
        },
        Case {
            name: "common",
            queries: (1..=3).map(word).collect(),
        },
        Case {
            name: "phrase",
            queries: [(1, 2), (2, 1), (1, 3), (3, 1)]
                .map(|(a, b)| format!("\"{} {}\"", word(a), word(b)))
                .to_vec(),
        },
    ]
}

/// One corpus, seeded, with its server.
struct Corpus {
    size: u64,
    db_url: String,
    reader: User,
    server: crate::common::Server,
    /// Per case, how many messages each of its queries matches.
    matches: Vec<Vec<usize>>,
}

/// One case on one corpus.
struct Run<'a> {
    corpus: &'a Corpus,
    case: &'a Case,
    matches: &'a [usize],
}

pub async fn run(env: &Env, report: &mut Report) {
    if env.opts.server.is_some() {
        eprintln!("search: skipped with --server (it fills fresh databases of its own)");
        return;
    }
    let sizes = env
        .opts
        .list("messages", &[10_000, 1_000_000], &[300, 1_000]);
    let requests = env.opts.num("requests", 2000, 24) as usize;
    let concurrency = env.opts.num("concurrency", 8, 4) as usize;
    let secs = env.opts.num("duration", 5, 1);
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- search --messages {} --requests {requests} --concurrency {concurrency} --duration {secs} --repeats {}",
            join(&sizes),
            env.opts.repeats
        ),
    );
    let mut corpora = Vec::new();
    for &size in &sizes {
        corpora.push(seed(env, report, size).await);
    }
    let mut cases = cases();
    if env.smoke() {
        // The two the targets judge: the smoke run checks that the
        // scenario works, in seconds.
        cases.retain(|c| c.name == "rare" || c.name == "common");
    }
    for corpus in &mut corpora {
        for case in &cases {
            let matches = count_matches(report, corpus, case).await;
            corpus.matches.push(matches);
        }
    }
    for _ in 0..env.opts.repeats {
        for corpus in &corpora {
            for (case, matches) in cases.iter().zip(&corpus.matches) {
                let run = Run {
                    corpus,
                    case,
                    matches,
                };
                measure(env, report, &run, (requests, concurrency, secs)).await;
            }
        }
    }
    judge(report, &corpora);
}

async fn seed(env: &Env, report: &mut Report, size: u64) -> Corpus {
    let started = Instant::now();
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let reader = seed_users(env, &db, "search", 1).await.remove(0);
    let first_chat: i64 = db
        .query_one(
            "with c as (
                 insert into chats (name, is_group, creator_id)
                 select 'search ' || g, true, $1 from generate_series(1, $2::bigint) g
                 returning id
             ), m as (
                 insert into chat_members (chat_id, user_id, is_admin) select id, $1, true from c
             )
             select min(id) from c",
            &[&reader.id, &CHATS],
        )
        .await
        .expect("seed chats")
        .get(0);
    // The index is built once after the insert, not maintained row by row.
    let index: String = db
        .query_one("select pg_get_indexdef('messages_search'::regclass)", &[])
        .await
        .expect("index definition")
        .get(0);
    let sql = format!(
        "select setseed(0.42);
         drop index messages_search;
         insert into messages (chat_id, sender_id, content, search)
         select {first_chat} + g % {CHATS}, {reader}, t.content, {SEEDED_WORDS_SQL}
         from generate_series(1, {size}) g,
              lateral (select string_agg({word}, ' ')
                              || case when g % {stride} < {PLANTED}
                                      then ' ' || {planted} else '' end as content
                       from (select floor(exp(random() * ln({VOCABULARY})))::int as r
                             from generate_series(1, 4 + g % 13)) x) t;
         {index};",
        reader = reader.id,
        word = word_sql("r"),
        // Planted word i in messages g = i - 1 (mod stride): PLANTED_IN each.
        stride = (size / PLANTED_IN).max(PLANTED as u64),
        planted = word_sql(&format!(
            "({VOCABULARY} + 1 + g % {})",
            (size / PLANTED_IN).max(PLANTED as u64)
        )),
    );
    db.batch_execute(&sql).await.expect("seed the corpus");
    db.batch_execute("vacuum analyze messages")
        .await
        .expect("analyze");
    report.check(
        SCENARIO,
        seeded_words_match(&db, first_chat).await,
        format!("{size} msgs: seeded messages carry the words the server writes"),
    );
    eprintln!(
        "   seeded {size} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let server = env.server(&db_url, ServerOpts::default()).await;
    Corpus {
        size,
        db_url,
        reader,
        server,
        matches: Vec::new(),
    }
}

fn case_name(corpus: &Corpus) -> String {
    format!("{} msgs", corpus.size)
}

/// How many messages each of the case's queries matches (their median is
/// a figure).
async fn count_matches(report: &mut Report, corpus: &Corpus, case: &Case) -> Vec<usize> {
    let db = connect_db(&corpus.db_url).await;
    let mut counts = Vec::new();
    for q in &case.queries {
        let tsquery = chatapp::messages::words::tsquery_text(q).expect("a query with words");
        let n: i64 = db
            .query_one(
                "select count(*) from messages where search @@ $1::text::tsquery",
                &[&tsquery],
            )
            .await
            .expect("count matches")
            .get(0);
        counts.push(n as usize);
    }
    report.add(
        SCENARIO,
        &case_name(corpus),
        "chatapp",
        &format!("{} messages matching a query", case.name),
        "msgs",
        Percentiles::new(counts.iter().map(|&n| n as f64).collect()).at(0.5),
    );
    counts
}

async fn measure(
    env: &Env,
    report: &mut Report,
    run: &Run<'_>,
    (requests, concurrency, secs): (usize, usize, u64),
) {
    let (corpus, case) = (run.corpus, run.case);
    let label = case_name(corpus);
    let outcome = load(run, requests, concurrency).await;
    report.check(
        SCENARIO,
        outcome.bad == 0,
        format!(
            "{label} {}: every answer a page of min(50, matches) or 503 query_timeout ({} were not)",
            case.name, outcome.bad
        ),
    );
    report.add(
        SCENARIO,
        &label,
        "chatapp",
        &format!("{} timed out (503)", case.name),
        "count",
        outcome.timeouts as f64,
    );
    record_requests(
        report,
        SCENARIO,
        &label,
        "chatapp",
        (case.name, outcome.per_sec),
        outcome.latencies,
    );
    let script = write_script(env, corpus, case);
    let (tps, latencies) = pgbench(
        &corpus.db_url,
        &script,
        Protocol::Extended,
        concurrency,
        secs,
    );
    record_requests(
        report,
        SCENARIO,
        &label,
        "pgbench",
        (case.name, tps),
        latencies,
    );
}

struct Outcome {
    per_sec: f64,
    latencies: Vec<f64>,
    /// Answers that were neither a page nor a 503 `query_timeout`.
    bad: usize,
    timeouts: usize,
}

/// `requests` searches by `concurrency` clients, each a query of the case
/// picked at random.
async fn load(run: &Run<'_>, requests: usize, concurrency: usize) -> Outcome {
    let (corpus, case) = (run.corpus, run.case);
    let remaining = Arc::new(AtomicU64::new(requests as u64));
    let queries: Arc<Vec<(String, usize)>> = Arc::new(
        case.queries
            .iter()
            .cloned()
            .zip(run.matches.iter().map(|&n| n.min(PAGE)))
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let remaining = remaining.clone();
        let queries = queries.clone();
        let url = format!("{}/api/v1/messages/search", corpus.server.url);
        let auth = format!("Bearer {}", corpus.reader.token);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("http client");
            let mut rng = Rng::new(worker as u64 + 1);
            let (mut latencies, mut bad, mut timeouts) = (Vec::new(), 0, 0);
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let (q, expected) = &queries[rng.below(queries.len() as u64) as usize];
                let t = Instant::now();
                let answer = http
                    .get(&url)
                    .query(&[("q", q.as_str()), ("limit", &PAGE.to_string())])
                    .header("authorization", &auth)
                    .send()
                    .await;
                let (status, body) = match answer {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.json::<serde_json::Value>().await.ok(),
                    ),
                    Err(_) => (0, None),
                };
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                let page = body.as_ref().and_then(|b| b.as_array()).map(Vec::len);
                match (status, page) {
                    (200, Some(n)) if n == *expected => {}
                    (503, _) if body.as_ref().is_some_and(|b| b["code"] == "query_timeout") => {
                        timeouts += 1
                    }
                    _ => bad += 1,
                }
            }
            (latencies, bad, timeouts)
        }));
    }
    let mut outcome = Outcome {
        per_sec: 0.0,
        latencies: Vec::new(),
        bad: 0,
        timeouts: 0,
    };
    for t in tasks {
        let (l, b, to) = t.await.expect("search client");
        outcome.latencies.extend(l);
        outcome.bad += b;
        outcome.timeouts += to;
    }
    outcome.per_sec = outcome.latencies.len() as f64 / started.elapsed().as_secs_f64();
    outcome
}

/// The handler's statement as a pgbench script: the case's queries in an
/// array literal, one picked per transaction.
fn write_script(env: &Env, corpus: &Corpus, case: &Case) -> std::path::PathBuf {
    let literals: Vec<String> = case
        .queries
        .iter()
        .map(|q| {
            let tsquery = chatapp::messages::words::tsquery_text(q).expect("a query with words");
            format!("'{}'", tsquery.replace('\'', "''"))
        })
        .collect();
    let sql = chatapp::messages::search::SEARCH_SQL
        .replace(
            "$1::tsquery",
            &format!("(array[{}]::text[])[:i::int]::tsquery", literals.join(", ")),
        )
        .replace("$2", &corpus.reader.id.to_string())
        .replace("$3::bigint", "null::bigint")
        .replace("$3", "null")
        .replace("$4::bigint", "null::bigint")
        .replace("$4", "null")
        .replace("$5", &PAGE.to_string());
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let script = format!("\\set i random(1, {})\n{one_line};\n", literals.len());
    let path = env
        .log_dir
        .join(format!("search-{}-{}.pgbench.sql", corpus.size, case.name));
    std::fs::write(&path, script).expect("write pgbench script");
    path
}

fn judge(report: &mut Report, corpora: &[Corpus]) {
    let p99 = |report: &Report, corpus: &Corpus, case: &str| {
        report.median(
            SCENARIO,
            &case_name(corpus),
            "chatapp",
            &format!("{case} p99"),
        )
    };
    let (Some(small), Some(large)) = (corpora.first(), corpora.last()) else {
        return;
    };
    for case in ["rare", "selective"] {
        let Some(ms) = p99(report, large, case) else {
            continue;
        };
        report.target(
            SCENARIO,
            &format!("{case} p99 ms, {} msgs", large.size),
            ms,
            "<=",
            50.0,
        );
        let Some(base) = p99(report, small, case) else {
            continue;
        };
        let ratio = ms / base;
        let what = format!("{case} p99: {} / {} msgs", large.size, small.size);
        if case == "rare" {
            report.target(SCENARIO, &what, ratio, "<=", 1.5);
        } else {
            // Not a target: the large corpus answers a page of 50 where the
            // small one answers about 1 (see the module's doc).
            report.add(SCENARIO, "ratios", "chatapp", &what, "x", ratio);
        }
    }
    if let Some(ms) = p99(report, large, "common") {
        report.target(
            SCENARIO,
            &format!("common p99 ms within the time limit, {} msgs", large.size),
            ms,
            "<=",
            TIMEOUT_MS,
        );
    }
}
