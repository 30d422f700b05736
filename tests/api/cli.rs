//! The real `chatapp` binary: flags, config errors, the migrator and signals.

use crate::helpers::process::*;
use crate::helpers::*;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs to completion, failing the test if it takes longer than 60 s.
fn run(cmd: &mut Command) -> Output {
    let child = cmd.spawn().expect("spawn chatapp");
    wait_for(child, Duration::from_secs(60))
}

fn wait_for(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chatapp did not exit within {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "chatapp panicked: {err}"
    );
    assert!(
        out.status.code().is_some(),
        "killed by a signal: {:?}",
        out.status
    );
}

/// The migration files shipped in `sql/`, in order.
fn migration_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

async fn applied_versions(url: &str) -> Vec<(i32, String)> {
    let db = pg::connect(url).await;
    db.query(
        "select version, name from schema_migrations order by version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

// ---- flags ----

#[test]
fn version_prints_the_package_version() {
    let dir = TempDir::new();
    let out = run(&mut chatapp(&dir, &["--version"], &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("chatapp {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_commands() {
    let dir = TempDir::new();
    let out = run(&mut chatapp(&dir, &["--help"], &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in ["Usage: chatapp", "serve", "migrate", "--version"] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
}

#[test]
fn subcommand_help_describes_their_flags() {
    let dir = TempDir::new();
    for (args, needles) in [
        (
            &["serve", "--help"][..],
            &["Usage: chatapp serve", "--config"][..],
        ),
        (
            &["migrate", "--help"],
            &["Usage: chatapp migrate", "--config", "--status"],
        ),
    ] {
        let out = run(&mut chatapp(&dir, args, &[]));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        for needle in needles {
            assert!(
                text.contains(needle),
                "{args:?}: `{needle}` missing: {text}"
            );
        }
    }
}

#[test]
fn bad_flags_print_usage_and_fail() {
    let dir = TempDir::new();
    for (args, usage) in [
        (&["--bogus"][..], "Usage: chatapp"),
        (&["serve", "--bogus"], "Usage: chatapp serve"),
        (&["migrate", "--status", "extra"], "Usage: chatapp migrate"),
        (&["bogus"], "Usage: chatapp"),
        (&["serve", "--config"], "Usage: chatapp serve"),
    ] {
        let out = run(&mut chatapp(&dir, args, &[]));
        assert_no_panic(&out);
        assert!(!out.status.success(), "{args:?} must fail");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains(usage), "{args:?}: no `{usage}` in: {text}");
    }
}

#[test]
fn no_command_fails_with_a_hint() {
    let dir = TempDir::new();
    let out = run(&mut chatapp(&dir, &[], &[]));
    assert_no_panic(&out);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--help"), "{}", stderr(&out));
}

// ---- config ----

/// (YAML file, environment, texts the error line must contain)
type ConfigCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn invalid_config_values_are_one_line_errors_naming_the_key() {
    let dir = TempDir::new();
    let cases: &[ConfigCase] = &[
        (
            "auth:\n  token_key: abc\n",
            &[],
            &["auth.token_key", "64 hex"],
        ),
        ("", &[("CHATAPP_TOKEN_KEY", "zz")], &["token_key", "64 hex"]),
        (
            "auth:\n  bcrypt_cost: 3\n",
            &[],
            &["auth.bcrypt_cost", "4 to 31"],
        ),
        ("", &[("CHATAPP_BCRYPT_COST", "3")], &["bcrypt_cost", "4"]),
        (
            "",
            &[("CHATAPP_BCRYPT_COST", "high")],
            &["CHATAPP_BCRYPT_COST"],
        ),
        ("colour: blue\n", &[], &["colour"]),
        ("auth:\n  colour: blue\n", &[], &["colour"]),
        (
            "log:\n  level: loud\n",
            &[],
            &["log.level", "loud", "debug"],
        ),
        ("port: 99999\n", &[], &["port"]),
        ("", &[("PORT", "eighty")], &["PORT"]),
        ("database:\n  pool_size: 0\n", &[], &["database.pool_size"]),
        ("limits:\n  body_bytes: -5\n", &[], &["body_bytes"]),
        ("cors:\n  origins: [ftp://x]\n", &[], &["cors.origins"]),
        ("port: [1, 2]\n", &[], &["port"]),
        (
            "ws:\n  reconnect_spread_ms: 700000\n",
            &[],
            &["ws.reconnect_spread_ms", "0 to 600000"],
        ),
    ];
    for (yaml, env, needles) in cases {
        let config = dir.write("config.yaml", yaml);
        let config = config.to_str().unwrap();
        let out = run(&mut chatapp(&dir, &["serve", "--config", config], env));
        let err = stderr(&out);
        let case = format!("{yaml:?} {env:?}");
        assert_no_panic(&out);
        assert!(!out.status.success(), "{case}: accepted; stderr: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{case}: not one line: {err}");
        for needle in *needles {
            assert!(
                lines[0].contains(needle),
                "{case}: `{needle}` missing: {err}"
            );
        }
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let dir = TempDir::new();
    let out = run(&mut chatapp(
        &dir,
        &["serve", "--config", "/nonexistent/chatapp.yaml"],
        &[],
    ));
    assert_no_panic(&out);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/chatapp.yaml"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn config_comes_from_the_flag_or_a_config_path_directory() {
    let flag_db = pg::empty_database().await;
    let dir_db = pg::empty_database().await;
    let dir = TempDir::new();
    let file = dir.write("custom.yaml", &format!("database:\n  url: {flag_db}\n"));
    let out = run(&mut chatapp(
        &dir,
        &["migrate", "--config", file.to_str().unwrap()],
        &[],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        applied_versions(&flag_db).await.len(),
        migration_files().len()
    );

    let conf_dir = TempDir::new();
    conf_dir.write("config.yaml", &format!("database:\n  url: {dir_db}\n"));
    let out = run(&mut chatapp(
        &dir,
        &["migrate"],
        &[("CONFIG_PATH", conf_dir.0.to_str().unwrap())],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        applied_versions(&dir_db).await.len(),
        migration_files().len()
    );
}

// ---- migrate ----

#[tokio::test]
async fn migrate_applies_everything_once_and_a_second_run_applies_nothing() {
    let url = pg::empty_database().await;
    let dir = TempDir::new();
    let files = migration_files();
    let env = [("DATABASE_URL", url.as_str())];

    let out = run(&mut chatapp(&dir, &["migrate", "--status"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&out);
    for file in &files {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("pending") && l.contains(file.as_str())),
            "{file} not pending: {status}"
        );
    }

    let out = run(&mut chatapp(&dir, &["migrate"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("applied {} migration(s)", files.len())),
        "{}",
        stdout(&out)
    );
    let applied = applied_versions(&url).await;
    let names: Vec<&str> = applied.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, files);

    let out = run(&mut chatapp(&dir, &["migrate"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("applied 0 migration(s)"),
        "second run: {}",
        stdout(&out)
    );
    assert_eq!(applied_versions(&url).await, applied);

    let out = run(&mut chatapp(&dir, &["migrate", "--status"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&out);
    for file in &files {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("applied") && l.contains(file.as_str())),
            "{file} not applied: {status}"
        );
    }
    assert!(!status.contains("pending"), "{status}");
}

#[tokio::test]
async fn a_changed_applied_migration_stops_startup_naming_the_file() {
    let url = pg::empty_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
    ];
    let out = run(&mut chatapp(&dir, &["migrate"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    let first = &migration_files()[0];
    pg::connect(&url)
        .await
        .execute(
            "update schema_migrations set checksum = 'tampered' where version = 1",
            &[],
        )
        .await
        .unwrap();

    for args in [&["serve"][..], &["migrate"], &["migrate", "--status"]] {
        let out = run(&mut chatapp(&dir, args, &env));
        assert_no_panic(&out);
        assert!(!out.status.success(), "{args:?} must refuse to start");
        assert!(
            stderr(&out).contains(first.as_str()),
            "{args:?}: error does not name {first}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn an_unknown_applied_migration_stops_startup_naming_it() {
    let url = pg::empty_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
    ];
    let out = run(&mut chatapp(&dir, &["migrate"], &env));
    assert!(out.status.success(), "{}", stderr(&out));
    pg::connect(&url)
        .await
        .execute(
            "insert into schema_migrations (version, name, checksum)
             values (9999, '9999_from_the_future.sql', 'abc')",
            &[],
        )
        .await
        .unwrap();

    for args in [&["serve"][..], &["migrate"], &["migrate", "--status"]] {
        let out = run(&mut chatapp(&dir, args, &env));
        assert_no_panic(&out);
        assert!(!out.status.success(), "{args:?} must refuse to start");
        assert!(
            stderr(&out).contains("9999_from_the_future.sql"),
            "{args:?}: error does not name the migration: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn two_migrate_processes_at_once_both_succeed_and_apply_each_migration_once() {
    let files = migration_files();
    for _ in 0..3 {
        let url = pg::empty_database().await;
        let dir = TempDir::new();
        let env = [("DATABASE_URL", url.as_str())];
        let a = chatapp(&dir, &["migrate"], &env).spawn().unwrap();
        let b = chatapp(&dir, &["migrate"], &env).spawn().unwrap();
        let (a, b) = (
            wait_for(a, Duration::from_secs(60)),
            wait_for(b, Duration::from_secs(60)),
        );
        assert!(a.status.success(), "first: {}", stderr(&a));
        assert!(b.status.success(), "second: {}", stderr(&b));
        let applied_now: usize = [&a, &b]
            .iter()
            .map(|o| {
                let text = stdout(o);
                text.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("unexpected output: {text}"))
            })
            .sum();
        assert_eq!(
            applied_now,
            files.len(),
            "each migration applied once in total"
        );
        let applied = applied_versions(&url).await;
        assert_eq!(applied.len(), files.len(), "{applied:?}");
    }
}

// ---- serve and signals ----

#[tokio::test]
async fn serve_on_port_0_answers_and_exits_0_on_sigterm_and_sigint() {
    let url = pg::fresh_database().await;
    for sig in ["-TERM", "-INT"] {
        let dir = TempDir::new();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("PORT", "0"),
            ("CHATAPP_HOST", "127.0.0.1"),
            ("CHATAPP_BCRYPT_COST", "4"),
        ];
        let mut server = start_server(&dir, &env);
        let addr = server.addr.clone();
        assert!(
            server
                .startup_log
                .iter()
                .any(|l| l.contains("WARN") && l.contains("token_key")),
            "no WARN about the random token key: {:#?}",
            server.startup_log
        );

        let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        assert_eq!(health.status(), 200);

        signal(&server.child, sig);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!("server ignored {sig}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{sig}: exit status {status:?}");
        assert!(
            reqwest::get(format!("http://{addr}/health")).await.is_err(),
            "the port is closed after shutdown"
        );
    }
}

#[tokio::test]
async fn serve_logs_one_line_per_request_without_query_or_secrets() {
    let url = pg::fresh_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_BCRYPT_COST", "4"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
    ];
    let server = start_server(&dir, &env);
    assert!(
        !server.startup_log.iter().any(|l| l.contains("WARN")),
        "a configured key needs no warning: {:#?}",
        server.startup_log
    );
    let http = reqwest::Client::new();
    let password = "hunter2-very-secret";
    let resp = http
        .post(format!("http://{}/api/v1/auth/register", server.addr))
        .json(&serde_json::json!({ "username": "logged", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let token = resp.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = http
        .get(format!(
            "http://{}/api/v1/users?q=secretquery&limit=5",
            server.addr
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("/api/v1/users ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no request log line: {lines:#?}"),
        }
    }
    drop(server);

    let register = lines
        .iter()
        .find(|l| l.contains("POST /api/v1/auth/register 201"))
        .unwrap_or_else(|| panic!("no log line for register: {lines:#?}"));
    assert!(register.contains("ms"), "latency missing: {register}");
    assert!(
        lines.iter().any(|l| l.contains("GET /api/v1/users 200")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(!line.contains(password), "password logged: {line}");
        assert!(!line.contains(&token), "token logged: {line}");
        assert!(!line.contains("secretquery"), "query string logged: {line}");
    }
}

#[tokio::test]
async fn the_token_in_the_query_string_is_never_logged() {
    // Arrange: the real binary, logging at the default level.
    let url = pg::fresh_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_BCRYPT_COST", "4"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
    ];
    let server = start_server(&dir, &env);
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let registered: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"username": unique_name("logged"), "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().unwrap().to_string();
    let bogus = "bogus-token-that-must-not-be-logged";

    // Act: one accepted and one refused connection with tokens in the query.
    let mut ws = WsClient::connect(server.addr.parse().unwrap(), &token, Some(0)).await;
    ws.next_of_type("ready").await;
    let refused = http
        .get(format!("{base}/ws?token={bogus}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    drop(ws);

    // Assert: both requests were logged, without their query strings.
    let mut lines = server.startup_log.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for line in &lines {
            assert!(!line.contains(&token), "token logged: {line}");
            assert!(!line.contains(bogus), "token logged: {line}");
            assert!(!line.contains("token="), "query logged: {line}");
        }
        let ws_lines: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("chatapp::request") && l.contains("/ws"))
            .collect();
        if ws_lines.iter().any(|l| l.contains(" 101 "))
            && ws_lines.iter().any(|l| l.contains(" 401 "))
        {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("requests not logged: {lines:#?}"),
        }
    }
}

/// libfaketime, which makes a process's clock read differently (installed
/// by scripts/test.sh).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test]
async fn a_token_works_at_once_on_a_node_whose_clock_is_30_seconds_behind() {
    // Arrange: this test's node issues the token; a real second node runs
    // with its clock 30 s behind, on the same database and key.
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: install Debian's `faketime` (scripts/test.sh does)"
    );
    let app = spawn_app().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", app.database_url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_BCRYPT_COST", "4"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
        ("LD_PRELOAD", FAKETIME_LIB),
        ("FAKETIME", "-30s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let behind = start_server(&dir, &env);
    let user = app.register("skewed").await;

    // Act: the token, just issued, used on the node that is behind.
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/v1/auth/me", behind.addr))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();

    // Assert
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn on_sigterm_readyz_turns_503_for_the_drain_delay_before_the_server_stops() {
    // Arrange: a two-second drain delay.
    let url = pg::fresh_database().await;
    let dir = TempDir::new();
    let config = dir.write("config.yaml", "http:\n  drain_delay_secs: 2\n");
    let config = config.display().to_string();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CONFIG_PATH", config.as_str()),
    ];
    let mut server = start_server(&dir, &env);
    let base = format!("http://{}", server.addr);
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    // Act
    signal(&server.child, "-TERM");

    // Assert: not ready (draining) yet still serving, then gone.
    let mut draining = None;
    for _ in 0..40 {
        let answer = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if answer.status() == 503 {
            draining = Some(answer.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(draining.expect("503 while draining")["status"], "draining");
    let live = reqwest::get(format!("{base}/livez")).await.unwrap();
    assert_eq!(live.status(), 200, "still serving while draining");
    let status = exited(&mut server, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn json_logs_carry_request_fields_and_never_a_token_or_password() {
    // Arrange: the real binary logging JSON.
    let url = pg::fresh_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_BCRYPT_COST", "4"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
        ("CHATAPP_LOG_FORMAT", "json"),
    ];
    let server = start_server(&dir, &env);
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let password = "first-secret-passphrase";
    let new_password = "second-secret-passphrase";

    // Act: everything that carries a secret.
    let name = unique_name("secretive");
    let registered: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().unwrap().to_string();
    let id = registered["user"]["id"].as_i64().unwrap();
    for attempt in [password, "a-wrong-secret-guess"] {
        http.post(format!("{base}/api/v1/auth/login"))
            .header("x-request-id", "login-trace")
            .json(&serde_json::json!({"username": name, "password": attempt}))
            .send()
            .await
            .unwrap();
    }
    let mut ws = WsClient::connect(server.addr.parse().unwrap(), &token, Some(0)).await;
    ws.next_of_type("ready").await;
    drop(ws);
    http.put(format!("{base}/api/v1/users/{id}"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"password": new_password, "current_password": password}))
        .send()
        .await
        .unwrap();

    // Assert: every line is a JSON object; request lines carry their fields.
    let mut lines = server.startup_log.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l| l.contains("\"method\":\"PUT\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no log line for the password change: {lines:#?}"),
        }
    }
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["ts", "level", "target", "message"] {
            assert!(entry.get(field).is_some(), "no {field}: {line}");
        }
        for secret in [
            password,
            new_password,
            "a-wrong-secret-guess",
            token.as_str(),
        ] {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
    }
    let login = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["request_id"] == "login-trace")
        .unwrap_or_else(|| panic!("no line for the traced login: {lines:#?}"));
    assert_eq!(login["method"], "POST");
    assert_eq!(login["path"], "/api/v1/auth/login");
    assert_eq!(login["status"], 200);
    assert!(login["duration_ms"].is_number(), "{login}");
}

#[tokio::test]
async fn the_startup_line_names_version_address_node_database_and_changed_settings() {
    let url = pg::fresh_database().await;
    let dir = TempDir::new();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PORT", "0"),
        ("CHATAPP_HOST", "127.0.0.1"),
        ("CHATAPP_BCRYPT_COST", "4"),
        ("CHATAPP_TOKEN_KEY", TEST_TOKEN_KEY),
    ];
    let server = start_server(&dir, &env);

    let line = server
        .startup_log
        .iter()
        .find(|l| l.contains("listening on"))
        .unwrap();

    assert!(
        line.contains(&format!("chatapp {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(&server.addr), "{line}");
    assert!(line.contains(", node "), "{line}");
    let target = url.rsplit('@').next().unwrap();
    assert!(line.contains(&format!("database {target}")), "{line}");
    assert!(line.contains("auth.bcrypt_cost=4"), "{line}");
    assert!(line.contains("auth.token_key=<set>"), "{line}");
    assert!(!line.contains(TEST_TOKEN_KEY), "{line}");
}
