//! What every scenario needs: options, databases, `chatapp serve` processes,
//! seeded users and chats, loopback WebSocket clients, percentiles.

use crate::pg;
use crate::report::Report;
use chatapp::auth::{TokenKey, issue_token};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub const USAGE: &str =
    "usage: cargo bench --bench load -- <scenario>... [--smoke] [--repeats N] [--out FILE]
       [--server URL (with DATABASE_URL of its database and CHATAPP_TOKEN_KEY)] [scenario options]
scenarios: send fanout arrival idle history login recovery replay-cost search failover all
options (comma lists run each size; `--<scenario>.<option>` sets one for that scenario alone):
  send      --clients 1,16,64 --chats 4 --duration 10 --pool N (server pool; default its own)
            --limits both (rate limits off and on, alternated; or off, on)
  fanout    --members 100,1000,10000 --rate 50 --senders 2 --duration 10 --stamps off
  arrival   --users 10000 --presence-max-members 1000
  idle      --connections 10000,50000 --per-node 18000 --ping-rate 5000
  history   --messages 10000,1000000 --requests 2000 --concurrency 8
  login     --logins 50 --cost 12 (default: the server's configured cost)
  recovery  --clients 1000 --missed 10000 --chats 10
  replay-cost --events 10000,1000000 --messages 100 --replays 20
  search    --messages 10000,1000000 --requests 2000 --concurrency 8 --duration 5
  failover  --modes kill,term --clients 30000 --chat-sizes 10,100,1000 --rate 20 --warm-ms 5000
            --tail-ms 2000 --per-worker 15000 --leavers 20 --spread-ms 5000 --stamps off
            [--presence-heartbeat-secs 10 --presence-timeout-secs 45 (default: the server's)]";

/// Parsed command line. Anything `--name value` not known here is a scenario
/// option, read with [`Opts::list`] / [`Opts::num`].
#[derive(Debug, Clone)]
pub struct Opts {
    pub scenarios: Vec<String>,
    /// Small sizes that finish in seconds (CI, `cargo test`).
    pub smoke: bool,
    pub repeats: usize,
    pub out: Option<PathBuf>,
    /// A running server to drive instead of starting one.
    pub server: Option<String>,
    options: HashMap<String, String>,
    pub command_line: String,
}

impl Opts {
    pub fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` appends --bench; `cargo test` runs this binary without it.
        let bench_mode = args.iter().any(|a| a == "--bench");
        let mut opts = Opts {
            scenarios: Vec::new(),
            smoke: !bench_mode,
            repeats: 3,
            out: None,
            server: None,
            options: HashMap::new(),
            command_line: std::iter::once("cargo bench --bench load --".to_string())
                .chain(args.iter().filter(|a| *a != "--bench").cloned())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut it = args.into_iter().filter(|a| a != "--bench");
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--smoke" => opts.smoke = true,
                _ if arg.starts_with("--") => {
                    let Some(value) = it.next() else {
                        usage_error(&format!("{arg} needs a value"));
                    };
                    let name = arg.trim_start_matches("--");
                    match name {
                        "repeats" => {
                            opts.repeats = value
                                .parse()
                                .ok()
                                .filter(|n| *n >= 1)
                                .unwrap_or_else(|| usage_error("--repeats must be >= 1"))
                        }
                        "out" => opts.out = Some(PathBuf::from(value)),
                        "server" => opts.server = Some(value.trim_end_matches('/').to_string()),
                        _ => {
                            opts.options.insert(name.to_string(), value);
                        }
                    }
                }
                "all" => opts.scenarios.extend(crate::SCENARIOS.map(String::from)),
                _ if crate::SCENARIOS.contains(&arg.as_str())
                    || arg == crate::idle::WORKER
                    || arg == crate::failover_worker::WORKER =>
                {
                    opts.scenarios.push(arg)
                }
                _ if !bench_mode => {
                    // `cargo test <filter>` passes its filter here too: the
                    // caller wants particular tests, not this benchmark.
                    println!("load: skipped (test filter {arg:?})");
                    std::process::exit(0);
                }
                _ => usage_error(&format!("unknown scenario {arg:?}")),
            }
        }
        if opts.scenarios.is_empty() {
            if bench_mode {
                usage_error("name a scenario, or `all`");
            }
            opts.scenarios.extend(crate::SCENARIOS.map(String::from));
        }
        if opts.smoke && !opts.options.contains_key("repeats") {
            opts.repeats = opts.repeats.min(if bench_mode { 3 } else { 1 });
        }
        opts
    }

    /// The options as `scenario` reads them: `--scenario.name value` stands for
    /// `--name value` in that scenario alone, so one run can give each
    /// scenario its own sizes (`--send.clients 64 --failover.clients 30000`).
    pub fn scoped(&self, scenario: &str) -> Opts {
        let mut opts = self.clone();
        let prefix = format!("{scenario}.");
        for (key, value) in &self.options {
            if let Some(name) = key.strip_prefix(&prefix) {
                opts.options.insert(name.to_string(), value.clone());
            }
        }
        opts
    }

    /// A comma list option: `--name 1,16,64`; `full` or `smoke` by default.
    pub fn list(&self, name: &str, full: &[u64], smoke: &[u64]) -> Vec<u64> {
        match self.options.get(name) {
            Some(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .replace('_', "")
                        .parse()
                        .unwrap_or_else(|_| usage_error(&format!("--{name}: bad number {s:?}")))
                })
                .collect(),
            None if self.smoke => smoke.to_vec(),
            None => full.to_vec(),
        }
    }

    pub fn num(&self, name: &str, full: u64, smoke: u64) -> u64 {
        self.list(name, &[full], &[smoke])[0]
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }
}

fn usage_error(msg: &str) -> ! {
    eprintln!("load: {msg}\n{USAGE}");
    std::process::exit(2);
}

/// Shared by every scenario of one run.
pub struct Env {
    pub opts: Opts,
    pub token_key_hex: String,
    pub token_key: TokenKey,
    pub log_dir: PathBuf,
    /// Makes usernames unique when a run reuses a database.
    pub nonce: String,
    pub password_hash: String,
}

pub const PASSWORD: &str = "bench-password-1";

impl Env {
    pub async fn new(opts: Opts) -> Env {
        let token_key_hex = match (&opts.server, std::env::var("CHATAPP_TOKEN_KEY")) {
            (Some(_), Ok(key)) => key,
            (Some(_), Err(_)) => usage_error(
                "--server needs CHATAPP_TOKEN_KEY (the server's key) and DATABASE_URL (its database)",
            ),
            (None, _) => chatapp::support::random_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        let key = chatapp::config::parse_token_key(&token_key_hex)
            .unwrap_or_else(|e| usage_error(&format!("CHATAPP_TOKEN_KEY: {e:?}")));
        let log_dir = target_dir().join("bench").join("logs");
        std::fs::create_dir_all(&log_dir).expect("create target/bench/logs");
        let password_hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
        Env {
            opts,
            token_key_hex,
            token_key: TokenKey::new(key),
            log_dir,
            nonce: format!("{:x}", now_nanos() % 0xffff_ffff),
            password_hash,
        }
    }

    /// A fresh migrated database (the server's own with `--server`).
    pub async fn database(&self) -> String {
        if self.opts.server.is_some() {
            return std::env::var("DATABASE_URL").expect("DATABASE_URL with --server");
        }
        pg::fresh_database().await
    }

    /// `chatapp serve` on `database_url` (or the `--server` given).
    pub async fn server(&self, database_url: &str, opts: ServerOpts) -> Server {
        if let Some(url) = &self.opts.server {
            return Server {
                url: url.clone(),
                child: None,
            };
        }
        Server::start(self, database_url, opts).await
    }

    pub fn token(&self, user_id: i64, username: &str) -> String {
        issue_token(&self.token_key, user_id, username, 0, 24 * 3600)
            .expect("mint token")
            .token
    }

    pub fn smoke(&self) -> bool {
        self.opts.smoke
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub bcrypt_cost: u32,
    pub pool_size: Option<u32>,
    pub env: Vec<(String, String)>,
    /// The server's YAML configuration (its limits: see [`BENCH_CONFIG`]).
    pub config: String,
}

/// The benchmarks set their own limits: a load generator is one client
/// address and a few users doing what thousands of people would, so the
/// rate limits are off and the connection caps far above what a scenario
/// opens. A scenario measuring the limits sets them itself.
pub const BENCH_CONFIG: &str = "\
http:
  max_connections: 1000000
limits:
  sockets_per_user: 100000
  rate:
    enabled: false
";

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            bcrypt_cost: 4,
            pool_size: None,
            env: Vec::new(),
            config: BENCH_CONFIG.to_string(),
        }
    }
}

/// A `chatapp serve` child process (killed on drop), or a running server.
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Option<Child>,
}

static SERVER_SEQ: AtomicU64 = AtomicU64::new(0);

impl Server {
    async fn start(env: &Env, database_url: &str, opts: ServerOpts) -> Server {
        let port = free_port();
        let log = env.log_dir.join(format!(
            "server-{}-{}.log",
            std::process::id(),
            SERVER_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).expect("server log file");
        let config = log.with_extension("yaml");
        std::fs::write(&config, &opts.config).expect("server config file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatapp"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(&env.log_dir)
            .env_remove("CONFIG_PATH")
            .env("DATABASE_URL", database_url)
            .env("PORT", port.to_string())
            .env("CHATAPP_HOST", "127.0.0.1")
            .env("CHATAPP_TOKEN_KEY", &env.token_key_hex)
            .env("CHATAPP_BCRYPT_COST", opts.bcrypt_cost.to_string())
            .env("CHATAPP_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        if let Some(n) = opts.pool_size {
            cmd.env("CHATAPP_DB_POOL_SIZE", n.to_string());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn chatapp serve");
        let server = Server {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", server.url)).send().await
                && r.status().is_success()
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "chatapp serve did not become healthy; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("server address ip:port")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the server process, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time (user + system) the server process has used, seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        proc_cpu_secs(self.pid()?)
    }

    /// Sends `signal` (`libc::SIGKILL`, `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; it reads no memory.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (at most `limit`) until the server processes `pids` together have
/// used at most `busy` of one core in two consecutive 200 ms; a second when
/// there is no process to watch (`--server`).
pub async fn settle_cpu(pids: &[u32], busy: f64, limit: Duration) {
    if pids.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    }
    const SLICE: Duration = Duration::from_millis(200);
    let cpu_now = || -> Option<f64> { pids.iter().map(|&p| proc_cpu_secs(p)).sum() };
    let started = Instant::now();
    let mut quiet = 0;
    let mut cpu = cpu_now();
    while quiet < 2 && started.elapsed() < limit {
        tokio::time::sleep(SLICE).await;
        let c = cpu_now();
        quiet = match (cpu, c) {
            (Some(a), Some(b)) if b - a <= busy * SLICE.as_secs_f64() => quiet + 1,
            _ => 0,
        };
        cpu = c;
    }
}

/// CPU time (user + system) process `pid` has used, seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    proc_cpu_fields(pid, 11..13)
}

/// The sum of /proc/<pid>/stat's time fields in `range`, counted from the
/// field after the parenthesised command name: 11 utime, 12 stime, 13 cutime,
/// 14 cstime (the children it has waited for). Seconds.
fn proc_cpu_fields(pid: u32, range: std::ops::Range<usize>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for i in range {
        ticks += fields.get(i)?.parse::<f64>().ok()?;
    }
    Some(ticks / 100.0)
}

/// The machine's CPU seconds since boot from /proc/stat: (busy, all), over
/// every core; busy is all but idle and iowait.
pub fn machine_cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (f64::NAN, f64::NAN);
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    ((all - idle) / 100.0, all / 100.0)
}

/// CPU seconds PostgreSQL has used: every live server process, plus the
/// backends that have exited (the postmaster's reaped children), so a
/// difference of two samples counts connections that closed in between.
pub fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut secs = 0.0;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres")
        {
            secs += proc_cpu_fields(pid, 11..15).unwrap_or(0.0);
        }
    }
    secs
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// Loopback source addresses 127.0.0.2.. so many sockets to one server port
/// do not run out of ephemeral ports (about 28,000 per source address).
pub fn source_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8)
}

pub async fn connect_db(url: &str) -> tokio_postgres::Client {
    pg::connect(url).await
}

/// Inserts `n` users straight into the database (bcrypt at cost 4 once, shared)
/// and mints their tokens with the server's key: REST registration at the
/// configured cost would take minutes for thousands of users.
pub async fn seed_users(
    env: &Env,
    db: &tokio_postgres::Client,
    prefix: &str,
    n: usize,
) -> Vec<User> {
    let rows = db
        .query(
            "insert into users (username, password_hash)
             select $1 || '_' || g, $2 from generate_series(1, $3::int) g
             returning id, username",
            &[
                &format!("{prefix}_{}", env.nonce),
                &env.password_hash,
                &(n as i32),
            ],
        )
        .await
        .expect("seed users");
    let mut users: Vec<User> = rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let username: String = r.get(1);
            User {
                token: env.token(id, &username),
                id,
                username,
            }
        })
        .collect();
    users.sort_by_key(|u| u.id);
    users
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// The search words of a message seeded straight into the database, as
/// SQL over its `content`: PostgreSQL's own parser, which for the seeds'
/// text (lowercase ASCII words, digits, commas) gives what the server writes
/// (`chatapp::messages::words::tsvector_text`; [`seeded_words_match`] checks
/// it). Seeded rows must carry words: a server fills any row without them
/// when it starts, which would run beside the measurement.
pub const SEEDED_WORDS_SQL: &str = "to_tsvector('simple', t.content)";

/// Whether the first 200 messages of `chat` carry the words the server
/// would have written for them.
pub async fn seeded_words_match(db: &tokio_postgres::Client, chat: i64) -> bool {
    let rows = db
        .query(
            "select id, content from messages where chat_id = $1 order by id limit 200",
            &[&chat],
        )
        .await
        .expect("read seeded messages");
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let words: Vec<String> = rows
        .iter()
        .map(|r| chatapp::messages::words::tsvector_text(r.get(1)))
        .collect();
    let differ: i64 = db
        .query_one(
            "select count(*) from messages m join unnest($1::int8[], $2::text[]) as x (id, words)
             on x.id = m.id where m.search is distinct from x.words::tsvector",
            &[&ids, &words],
        )
        .await
        .expect("compare seeded words")
        .get(0);
    !rows.is_empty() && differ == 0
}

/// A group chat owned by `members[0]` with all of `members`, inserted directly.
pub async fn seed_chat(db: &tokio_postgres::Client, name: &str, members: &[i64]) -> i64 {
    let row = db
        .query_one(
            "with c as (
                 insert into chats (name, is_group, creator_id) values ($1, true, ($2::bigint[])[1]) returning id
             ), m as (
                 insert into chat_members (chat_id, user_id, is_admin)
                 select c.id, u, u = ($2::bigint[])[1] from c, unnest($2::bigint[]) u
             )
             select id from c",
            &[&name, &members],
        )
        .await
        .expect("seed chat");
    row.get(0)
}

pub type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client from `source` with small buffers (so the client side of
/// tens of thousands of sockets fits in memory too), over the stream `wrap`
/// makes of the TCP connection.
pub async fn ws_connect<S, W>(
    server: SocketAddr,
    source: Ipv4Addr,
    path: &str,
    wrap: W,
) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: FnOnce(TcpStream) -> std::io::Result<S>,
{
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let stream = wrap(stream).map_err(|e| format!("socket: {e}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{server}{path}");
    client_async_with_config(url, stream, Some(config))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            // A refusal that says when to come back (503 busy): in the
            // message, as a close reason would say it.
            WsError::Http(resp) => match resp.headers().get("retry-after") {
                Some(secs) => format!(
                    "handshake: HTTP {}; retry_after_ms={}",
                    resp.status(),
                    secs.to_str().unwrap_or("1").parse::<u64>().unwrap_or(1) * 1000
                ),
                None => format!("handshake: HTTP {}", resp.status()),
            },
            e => format!("handshake: {e}"),
        })
}

/// Connects as `user` and waits for `ready`; returns the socket and `last_event_id`.
pub async fn ws_login(
    server: SocketAddr,
    source: Ipv4Addr,
    user: &User,
    since: Option<i64>,
) -> Result<(Ws, serde_json::Value), String> {
    ws_login_over(server, source, user, since, Ok).await
}

/// [`ws_login`] over the stream `wrap` makes of the TCP connection.
pub async fn ws_login_over<S, W>(
    server: SocketAddr,
    source: Ipv4Addr,
    user: &User,
    since: Option<i64>,
    wrap: W,
) -> Result<(WebSocketStream<S>, serde_json::Value), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: FnOnce(TcpStream) -> std::io::Result<S>,
{
    let path = match since {
        Some(s) => format!("/ws?token={}&since={s}", user.token),
        None => format!("/ws?token={}", user.token),
    };
    let mut ws = ws_connect(server, source, &path, wrap).await?;
    loop {
        let frame = next_json(&mut ws, Duration::from_secs(60)).await?;
        if frame["type"] == "ready" {
            return Ok((ws, frame["payload"].clone()));
        }
    }
}

/// The next text frame as JSON (answering pings on the way).
pub async fn next_json<S>(
    ws: &mut WebSocketStream<S>,
    timeout: Duration,
) -> Result<serde_json::Value, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "timed out waiting for a frame".to_string())?
            .ok_or("socket closed")?
            .map_err(|e| e.to_string())?;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|e| e.to_string());
            }
            Message::Ping(p) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            Message::Close(c) => return Err(format!("closed: {c:?}")),
            _ => {}
        }
    }
}

/// How pgbench sends its statements, to match how chatapp sends the same SQL.
#[derive(Clone, Copy)]
pub enum Protocol {
    /// Prepared once per connection and reused (generic plans after five runs).
    Prepared,
    /// Parsed and planned with its values on every execution.
    Extended,
}

/// Runs pgbench for `secs`; returns (transactions/s, latencies in ms).
pub fn pgbench(
    db_url: &str,
    script: &Path,
    protocol: Protocol,
    clients: usize,
    secs: u64,
) -> (f64, Vec<f64>) {
    let dir = script.parent().expect("script dir").join(format!(
        "{}-c{clients}",
        script.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pgbench log dir");
    let out = Command::new(pg::pg_bindir().join("pgbench"))
        .current_dir(&dir)
        // The session settings chatapp's pool uses (db::session_defaults).
        .env("PGOPTIONS", "-c jit=off")
        .args(["-n", "-l", "--log-prefix", "tx", "-M"])
        .arg(match protocol {
            Protocol::Prepared => "prepared",
            Protocol::Extended => "extended",
        })
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg(db_url)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    // Per-transaction log: client_id transaction_no latency_us script_no epoch epoch_us
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("pgbench logs").flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<f64>().ok())
                .map(|us| us / 1e3),
        );
    }
    (tps, latencies)
}

pub fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// A small deterministic generator (xorshift), so runs pick the same cursors.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Percentiles of a sample, nearest-rank.
pub struct Percentiles(Vec<f64>);

impl Percentiles {
    pub fn new(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        Percentiles(samples)
    }

    pub fn at(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(f64::NAN)
    }

    /// How many samples there are.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Of deliveries (the message's key, send-to-receive), each message's
    /// first and last, as percentiles over the messages: the first is its
    /// path up to the fan-out, which all its deliveries wait for.
    pub fn first_and_last<K: std::hash::Hash + Eq>(
        deliveries: impl IntoIterator<Item = (K, f64)>,
    ) -> (Percentiles, Percentiles) {
        let mut by_message: HashMap<K, (f64, f64)> = HashMap::new();
        for (key, ms) in deliveries {
            let (first, last) = by_message.entry(key).or_insert((ms, ms));
            *first = first.min(ms);
            *last = last.max(ms);
        }
        let (first, last) = by_message.into_values().unzip();
        (Percentiles::new(first), Percentiles::new(last))
    }
}

/// Waits until no frame arrives (`frames_seen` stops moving) and the server
/// process uses almost no CPU (at most 2 clock ticks) in two consecutive
/// 200 ms; returns how long that took.
pub async fn settle(frames_seen: &AtomicU64, pid: Option<u32>, max: Duration) -> f64 {
    let started = Instant::now();
    let step = Duration::from_millis(200);
    let mut quiet = 0;
    let mut frames = frames_seen.load(Ordering::Relaxed);
    let mut cpu = pid.and_then(proc_cpu_secs);
    while quiet < 2 && started.elapsed() < max {
        tokio::time::sleep(step).await;
        let f = frames_seen.load(Ordering::Relaxed);
        let c = pid.and_then(proc_cpu_secs);
        let busy = match (cpu, c) {
            (Some(a), Some(b)) => b - a > 0.025,
            _ => false,
        };
        quiet = if f == frames && !busy { quiet + 1 } else { 0 };
        frames = f;
        cpu = c;
    }
    if started.elapsed() >= max {
        eprintln!("load: the server did not go quiet within {max:?}");
    }
    started.elapsed().saturating_sub(step * 2).as_secs_f64()
}

/// A request-rate case's figures under `kind`: requests/s, p50 and p99 of
/// `latencies` (ms).
pub fn record_requests(
    report: &mut Report,
    scenario: &str,
    case: &str,
    system: &str,
    (kind, per_sec): (&str, f64),
    latencies: Vec<f64>,
) {
    let p = Percentiles::new(latencies);
    let figures = [
        ("requests/s", "1/s", per_sec),
        ("p50", "ms", p.at(0.50)),
        ("p99", "ms", p.at(0.99)),
    ];
    for (what, unit, value) in figures {
        report.add(
            scenario,
            case,
            system,
            &format!("{kind} {what}"),
            unit,
            value,
        );
    }
}
