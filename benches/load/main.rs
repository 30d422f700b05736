//! The load benchmark: chatapp side by side with the ceilings it cannot beat,
//! in one run on one machine.
//!
//! ```text
//! cargo bench --bench load -- <scenario>... [--smoke] [--repeats N] [--out FILE]
//!     scenarios: send fanout arrival idle history login recovery replay-cost search failover all
//! ```
//!
//! It starts what it needs: a private PostgreSQL (or the one `DATABASE_URL`
//! names), `chatapp serve` from the same build (release under `cargo bench`),
//! and loopback clients. `cargo test` runs this binary without `--bench`; it
//! then runs every scenario in its smoke size so the suite never rots.
//! Results: a table on stdout and JSON under `target/bench/`.

mod arrival;
mod broadcast;
mod common;
mod failover;
mod failover_worker;
mod fanout;
mod history;
mod idle;
mod login;
#[allow(dead_code)]
#[path = "../../tests/api/helpers/pg.rs"]
mod pg;
mod recovery;
mod replay_cost;
mod report;
mod search;
mod send;
mod stamp;
mod worker;

use common::{Env, Opts};
use report::Report;

pub const SCENARIOS: [&str; 10] = [
    "send",
    "fanout",
    "arrival",
    "idle",
    "history",
    "login",
    "recovery",
    "replay-cost",
    "search",
    "failover",
];

fn main() {
    let opts = Opts::parse();
    // Client processes of `idle` and `failover` (one process cannot hold enough sockets).
    if opts.scenarios.first().map(String::as_str) == Some(idle::WORKER) {
        idle::worker_main(&opts);
        return;
    }
    if opts.scenarios.first().map(String::as_str) == Some(failover_worker::WORKER) {
        failover_worker::worker_main(&opts);
        return;
    }
    common::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(run(opts));
    let failed = report.failures();
    if !failed.is_empty() {
        eprintln!(
            "load: correctness checks failed:\n  {}",
            failed.join("\n  ")
        );
        std::process::exit(1);
    }
}

async fn run(opts: Opts) -> Report {
    let mut env = Env::new(opts.clone()).await;
    let mut report = Report::new(&env);
    for scenario in opts.scenarios.clone() {
        env.opts = opts.scoped(&scenario);
        eprintln!(
            "== {scenario}{}",
            if env.opts.smoke { " (smoke)" } else { "" }
        );
        let started = std::time::Instant::now();
        match scenario.as_str() {
            "send" => send::run(&env, &mut report).await,
            "fanout" => fanout::run(&env, &mut report).await,
            "arrival" => arrival::run(&env, &mut report).await,
            "idle" => idle::run(&env, &mut report).await,
            "history" => history::run(&env, &mut report).await,
            "login" => login::run(&env, &mut report).await,
            "recovery" => recovery::run(&env, &mut report).await,
            "replay-cost" => replay_cost::run(&env, &mut report).await,
            "search" => search::run(&env, &mut report).await,
            "failover" => failover::run(&env, &mut report).await,
            other => unreachable!("unknown scenario {other}"),
        }
        eprintln!("== {scenario} took {:.1}s", started.elapsed().as_secs_f64());
    }
    report.print();
    report.write_json(&env);
    report
}
