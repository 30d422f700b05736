//! A throwaway PostgreSQL for the tests: `DATABASE_URL` when set, otherwise a
//! private cluster started once per test binary and removed when it exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

struct Server {
    /// URL of the server's maintenance database (`postgres`).
    admin_url: String,
    template: String,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();
static CREATE_LOCK: Mutex<()> = Mutex::const_new(());
static DB_SEQ: AtomicU64 = AtomicU64::new(1);

/// Creates a fresh, migrated database and returns its URL.
pub async fn fresh_database() -> String {
    let server = SERVER.get_or_init(init).await;
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed),
        nanos() % 1_000_000
    );
    let _serial = CREATE_LOCK.lock().await;
    let admin = connect(&server.admin_url).await;
    admin
        .batch_execute(&format!(
            "create database {name} template {}",
            server.template
        ))
        .await
        .expect("create test database");
    with_database(&server.admin_url, &name)
}

/// An empty (unmigrated) database, for migration tests.
pub async fn empty_database() -> String {
    let server = SERVER.get_or_init(init).await;
    let name = format!(
        "e_{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&server.admin_url).await;
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create empty database");
    with_database(&server.admin_url, &name)
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL: {e}"));
    tokio::spawn(conn);
    client
}

/// LISTENs on `channel` of the database at `url`: the session (listening
/// while it is kept) and the payloads of its notifications, in order.
pub async fn listen(
    url: &str,
    channel: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message
                && tx.send(n.payload().to_string()).is_err()
            {
                return;
            }
        }
    });
    client
        .batch_execute(&format!("listen {channel}"))
        .await
        .expect("listen");
    (client, rx)
}

/// Terminates the LISTEN connection of every node on the database at `url`
/// (each reconnects on its own); returns how many were terminated.
/// Waits (up to `tries` × 25 ms) until some statement of the database at
/// `url` waits for a lock: a transaction the test holds is then in the way.
pub async fn until_a_statement_waits_for_a_lock(url: &str, tries: u32) {
    let watcher = connect(url).await;
    for _ in 0..tries {
        let waiting: i64 = watcher
            .query_one(
                "select count(*) from pg_stat_activity
                 where wait_event_type = 'Lock' and datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn kill_listeners(url: &str) -> i64 {
    connect(url)
        .await
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where application_name = 'chatapp-listener' and datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Heap rows PostgreSQL has read from `table` (sequential + index fetches).
pub async fn rows_read(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
         from pg_stat_user_tables where relname = $1",
        &[&table],
    )
    .await
    .unwrap()
    .get(0)
}

/// Rows of `table` read since `before` (a [`rows_read`] figure), once at
/// least `at_least` show up: statistics reach the view asynchronously (a
/// backend that flushed less than a second ago waits up to 10 s).
pub async fn rows_read_since(
    db: &tokio_postgres::Client,
    table: &str,
    before: i64,
    at_least: i64,
) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let read = rows_read(db, table).await - before;
        if read >= at_least || std::time::Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replaces the database name in a postgres:// URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn init() -> Server {
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => with_database(&url, "postgres"),
        _ => tokio::task::spawn_blocking(start_private_cluster)
            .await
            .expect("cluster start task"),
    };
    let template = format!("tpl_{}_{}", std::process::id(), nanos() % 1_000_000);
    let admin = connect(&admin_url).await;
    admin
        .batch_execute(&format!("create database {template}"))
        .await
        .expect("create template database");
    let mut config = chatapp::config::Config::default();
    config.database.url = with_database(&admin_url, &template);
    chatapp::run_migrations(&config)
        .await
        .expect("migrate template");
    Server {
        admin_url,
        template,
    }
}

pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort();
    if let Some(dir) = candidates.pop() {
        return dir;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server binaries not found: run scripts/test.sh (it installs them) or set DATABASE_URL"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (it refuses root).
fn pg_command(bin: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_private_cluster() -> String {
    let cluster = PrivateCluster::create();
    cluster.url.clone()
}

/// A PostgreSQL cluster of its own, for tests that stop and restart the
/// database (the shared one must stay up). Removed when the test process exits.
pub struct PrivateCluster {
    /// URL of the cluster's maintenance database (`postgres`).
    pub url: String,
    bindir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
    root: bool,
}

impl PrivateCluster {
    /// Initializes and starts a new cluster on a free port.
    pub fn create() -> PrivateCluster {
        create_cluster()
    }

    /// Stops PostgreSQL (fast mode: clients are disconnected) and waits.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]);
    }

    /// Starts PostgreSQL again on the same port and waits until it accepts connections.
    pub fn start(&self) {
        let mut cmd = pg_command(&self.bindir.join("pg_ctl"), self.root);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-o", &self.options, "-l"])
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]);
        run_pg_ctl(cmd, &self.log, "start");
    }

    /// A new, migrated database in this cluster; returns its URL.
    pub async fn migrated_database(&self) -> String {
        let name = format!(
            "o_{}_{}",
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        connect(&self.url)
            .await
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database in private cluster");
        let url = with_database(&self.url, &name);
        let mut config = chatapp::config::Config::default();
        config.database.url = url.clone();
        chatapp::run_migrations(&config)
            .await
            .expect("migrate private cluster database");
        url
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut cmd = pg_command(&self.bindir.join("pg_ctl"), self.root);
        cmd.arg("-D").arg(&self.data).args(args);
        run_pg_ctl(cmd, &self.log, args.last().copied().unwrap_or("pg_ctl"));
    }
}

fn run_pg_ctl(mut cmd: Command, log: &Path, what: &str) {
    let out = cmd.stdout(Stdio::null()).output().expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn create_cluster() -> PrivateCluster {
    let bindir = pg_bindir();
    let root = is_root();
    let dir = std::env::temp_dir().join(format!(
        "chatapp-test-pg-{}-{}",
        std::process::id(),
        nanos() % 1_000_000
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if root {
        let ok = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown of the test cluster directory failed");
    }
    let data = dir.join("data");
    let out = pg_command(&bindir.join("initdb"), root)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    // Durability is irrelevant for throwaway data; speed is not.
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
        dir.display()
    );
    let cluster = PrivateCluster {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        log: dir.join("log"),
        bindir,
        data,
        options,
        root,
    };
    cluster.start();
    spawn_reaper(&cluster.bindir, &cluster.data, &dir, root);
    std::thread::sleep(Duration::from_millis(50));
    cluster
}

/// Stops the cluster and deletes it once this test process has exited.
#[allow(clippy::zombie_processes)] // the reaper must outlive this process
fn spawn_reaper(bindir: &Path, data: &Path, dir: &Path, root: bool) {
    let pg_ctl = bindir.join("pg_ctl");
    let run_as = if root { "runuser -u postgres -- " } else { "" };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {run_as}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cluster reaper");
}

/// Waits until the node's LISTEN connection, after a reconnect, has done
/// what it does before reading notices again: its last statement is then
/// the read of the presence changes it may have missed, and it is idle.
pub async fn await_listener_back(url: &str) {
    let db = connect(url).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let back: bool = db
            .query_one(
                "select exists (select 1 from pg_stat_activity
                                where application_name = 'chatapp-listener'
                                  and datname = current_database() and state = 'idle'
                                  and query like '%s.began_at >= since.t%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if back {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
