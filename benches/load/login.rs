//! `login`: 50 concurrent logins at the configured bcrypt cost while another
//! client polls /health. bcrypt runs off the async runtime, so /health must
//! stay fast however busy the cores are with hashing. Ceiling: raw bcrypt
//! verifications per second on every core of this machine, no server.

use crate::common::{Env, PASSWORD, Percentiles, ServerOpts, User, connect_db, seed_users};
use crate::report::Report;
use std::time::{Duration, Instant};

const SCENARIO: &str = "login";
/// What chatapp's config defaults to (auth.bcrypt_cost).
const DEFAULT_COST: u64 = 12;

pub async fn run(env: &Env, report: &mut Report) {
    let logins = env.opts.num("logins", 50, 8) as usize;
    let cost = env.opts.num("cost", DEFAULT_COST, 4) as u32;
    let secs = env.opts.num("duration", 10, 2);
    report.command(
        SCENARIO,
        format!(
            "cargo bench --bench load -- login --logins {logins} --cost {cost} --duration {secs} --repeats {}",
            env.opts.repeats
        ),
    );
    let db_url = env.database().await;
    let db = connect_db(&db_url).await;
    let users = seed_users(env, &db, "login", logins).await;
    // Re-hash at the measured cost (one hash shared: the cost is what matters).
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(PASSWORD, cost))
        .await
        .expect("hash task")
        .expect("bcrypt");
    db.execute("update users set password_hash = $1", &[&hash])
        .await
        .expect("set hashes");
    let server = env
        .server(
            &db_url,
            ServerOpts {
                bcrypt_cost: cost,
                ..ServerOpts::default()
            },
        )
        .await;
    let case = format!("{logins} clients, cost {cost}");
    let duration = Duration::from_secs(secs);
    for _ in 0..env.opts.repeats {
        // /health alone first: what the probe costs on an idle server.
        let idle = poll_health(server.url.clone(), Duration::from_secs(2)).await;
        record_health(report, &case, "idle server", idle);
        let poller = tokio::spawn(poll_health(server.url.clone(), duration));
        let (done, failures, elapsed) = login_load(&server.url, &users, duration).await;
        let busy = poller.await.expect("poller");
        report.check(
            SCENARIO,
            failures == 0 && done > 0,
            format!("{done} logins answered 200, {failures} did not"),
        );
        record_health(report, &case, "during logins", busy);
        report.add(
            SCENARIO,
            &case,
            "chatapp",
            "logins/s",
            "1/s",
            done as f64 / elapsed,
        );
        report.add(
            SCENARIO,
            &case,
            "bcrypt",
            "verifications/s",
            "1/s",
            raw_bcrypt(&hash, duration.min(Duration::from_secs(3))),
        );
    }
    if let Some(p99) = report.median(SCENARIO, &case, "during logins", "/health p99") {
        report.target(
            SCENARIO,
            &format!("/health p99 ms during {logins} concurrent logins"),
            p99,
            "<=",
            20.0,
        );
    }
}

fn record_health(
    report: &mut Report,
    case: &str,
    system: &str,
    (latencies, failures): (Vec<f64>, usize),
) {
    report.check(
        SCENARIO,
        failures == 0,
        format!("/health ({system}): {failures} probes failed"),
    );
    let p = Percentiles::new(latencies);
    report.add(SCENARIO, case, system, "/health p50", "ms", p.at(0.5));
    report.add(SCENARIO, case, system, "/health p99", "ms", p.at(0.99));
    report.add(SCENARIO, case, system, "/health max", "ms", p.max());
}

/// One probe every 10 ms (a monitoring client, not a load generator).
async fn poll_health(url: String, duration: Duration) -> (Vec<f64>, usize) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut latencies = Vec::new();
    let mut failures = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        let t = Instant::now();
        let ok = http
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        if !ok {
            failures += 1;
        }
    }
    (latencies, failures)
}

/// Every user logs in again as soon as their last login was answered.
async fn login_load(url: &str, users: &[User], duration: Duration) -> (usize, usize, f64) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let url = format!("{url}/api/v1/auth/login");
            let body =
                serde_json::json!({ "username": u.username, "password": PASSWORD }).to_string();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut done, mut failed) = (0, 0);
                while Instant::now() < deadline {
                    let ok = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok { done += 1 } else { failed += 1 }
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for t in tasks {
        let (d, f) = t.await.expect("login task");
        done += d;
        failed += f;
    }
    (done, failed, started.elapsed().as_secs_f64())
}

/// bcrypt verifications per second with one thread per core: what the machine
/// can hash with nothing else running.
fn raw_bcrypt(hash: &str, duration: Duration) -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let started = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while started.elapsed() < duration {
                        assert!(bcrypt::verify(PASSWORD, hash).unwrap_or(false));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    done as f64 / started.elapsed().as_secs_f64()
}
