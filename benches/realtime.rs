//! End-to-end benchmarks: a release server on a private PostgreSQL (fsync off),
//! driven over loopback by real HTTP and WebSocket clients. Run with
//! `cargo bench --bench realtime`; prints medians and ratios measured side by
//! side in one run. Numbers are recorded in BENCHMARKS.md.

// The integration suite's harness; this benchmark uses a part of it.
#[path = "../tests/api/helpers/mod.rs"]
#[allow(unused_imports, dead_code)]
mod helpers;

use futures_util::future::join_all;
use helpers::*;
use serde_json::json;
use std::time::{Duration, Instant};

const SENDS: usize = 1000;
const FANOUT_SUBSCRIBERS: usize = 50;
const FANOUT_MESSAGES: usize = 200;
const WRITERS: usize = 8;
const PER_WRITER: usize = 250;

fn summarize(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name:<34} n={:<5} median={:>8.3}ms p90={:>8.3}ms p99={:>8.3}ms",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    pct(0.5)
}

async fn rest_send_latency(app: &TestApp, label: &str, sends: usize) -> Duration {
    let user = app.register("bench").await;
    let chat = app.create_group(&user, "bench", &[]).await;
    let mut samples = Vec::with_capacity(sends);
    for i in 0..sends {
        let started = Instant::now();
        let (status, _) = app
            .post(
                "/api/v1/messages",
                &user.token,
                json!({ "chat_id": chat, "content": format!("m{i}") }),
            )
            .await;
        samples.push(started.elapsed());
        assert_eq!(status, 201);
    }
    summarize(label, samples)
}

async fn ws_send_latency(app: &TestApp) -> Duration {
    let user = app.register("bench").await;
    let chat = app.create_group(&user, "bench", &[]).await;
    let mut ws = app.connect_ws(&user, None).await;
    ws.next_of_type("ready").await;
    // Leave the chat's live feed so only acks come back.
    ws.send_json(json!({ "type": "leave_chat", "payload": { "chat_id": chat } }))
        .await;
    ws.next_of_type("ack").await;
    let mut samples = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let started = Instant::now();
        ws.send_json(json!({ "type": "message", "payload": { "chat_id": chat, "content": format!("m{i}") } }))
            .await;
        ws.next_of_type("ack").await;
        samples.push(started.elapsed());
    }
    summarize("WebSocket message -> ack", samples)
}

async fn fanout_latency(app: &TestApp) -> Duration {
    let sender = app.register("bench").await;
    let mut members = Vec::new();
    for _ in 0..FANOUT_SUBSCRIBERS {
        members.push(app.register("sub").await);
    }
    let refs: Vec<&TestUser> = members.iter().collect();
    let chat = app.create_group(&sender, "fanout", &refs).await;
    let mut sockets = Vec::new();
    for m in &members {
        let mut ws = app.connect_ws(m, None).await;
        ws.next_of_type("ready").await;
        sockets.push(ws);
    }
    let mut samples = Vec::with_capacity(FANOUT_MESSAGES);
    for i in 0..FANOUT_MESSAGES {
        let started = Instant::now();
        app.send_message(&sender, chat, &format!("f{i}")).await;
        join_all(sockets.iter_mut().map(|ws| ws.next_of_type("message"))).await;
        samples.push(started.elapsed());
    }
    summarize(
        &format!("send -> all {FANOUT_SUBSCRIBERS} subscribers got it"),
        samples,
    )
}

/// Messages per second with `WRITERS` concurrent REST writers, into one chat or one chat each.
async fn write_throughput(app: &TestApp, shared_chat: bool) -> f64 {
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(app.register("w").await);
    }
    let owner = &writers[0];
    let refs: Vec<&TestUser> = writers.iter().skip(1).collect();
    let shared = app.create_group(owner, "shared", &refs).await;
    let mut chats = Vec::new();
    for w in &writers {
        chats.push(if shared_chat {
            shared
        } else {
            app.create_group(w, "own", &[]).await
        });
    }
    let started = Instant::now();
    join_all(writers.iter().zip(&chats).map(|(w, &chat)| async move {
        for i in 0..PER_WRITER {
            app.send_message(w, chat, &format!("t{i}")).await;
        }
    }))
    .await;
    let rate = (WRITERS * PER_WRITER) as f64 / started.elapsed().as_secs_f64();
    let label = if shared_chat {
        "one shared chat"
    } else {
        "one chat each"
    };
    println!("{WRITERS} concurrent REST writers, {label:<16} {rate:>8.0} messages/s");
    rate
}

fn main() {
    // `cargo test --all-targets` also runs bench targets; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("realtime: skipped (run `cargo bench --bench realtime`)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = spawn_app_with(|c| {
            c.database.pool_size = 16;
            c.ws.queue_frames = 4096;
        })
        .await;
        println!("chatapp end-to-end benchmarks (loopback, PostgreSQL with fsync off)");
        let rest = rest_send_latency(&app, "REST POST /messages", SENDS).await;
        let ws = ws_send_latency(&app).await;
        println!(
            "  ratio REST/WebSocket send median: {:.2}",
            rest.as_secs_f64() / ws.as_secs_f64()
        );
        fanout_latency(&app).await;
        let shared = write_throughput(&app, true).await;
        let separate = write_throughput(&app, false).await;
        println!(
            "  ratio one-chat-each/shared throughput: {:.2}",
            separate / shared
        );

        // The same server with PostgreSQL's JIT left on (its default), as before
        // `db::session_defaults` turned it off.
        let url = helpers::pg::fresh_database().await;
        let jit = spawn_node(&format!("{url}?options=-c%20jit%3Don"), |_| {}).await;
        let with_jit = rest_send_latency(&jit, "REST POST /messages, jit=on", 300).await;
        let without = rest_send_latency(&app, "REST POST /messages, jit=off", 300).await;
        println!(
            "  ratio jit=on/jit=off send median: {:.2}",
            with_jit.as_secs_f64() / without.as_secs_f64()
        );
    });
}
