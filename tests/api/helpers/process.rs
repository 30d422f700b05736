//! The real `chatapp` binary as a child process: a clean environment, a
//! scratch working directory, and `serve` started and waited for (the CLI
//! tests, and nodes that must be able to die without saying goodbye).

use super::unique_name;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chatapp");
/// Every environment variable the binary reads, cleared so the host cannot leak in.
const ENV_VARS: &[&str] = &[
    "CONFIG_PATH",
    "PORT",
    "DATABASE_URL",
    "CHATAPP_HOST",
    "CHATAPP_DB_POOL_SIZE",
    "CHATAPP_TOKEN_KEY",
    "CHATAPP_BCRYPT_COST",
    "CHATAPP_LOG_LEVEL",
];

/// A scratch directory (the binary's working directory, so no stray
/// `./config.yaml` is picked up), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(unique_name(&format!("chatapp-cli-{}-", std::process::id())));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean environment, run in `dir`.
pub fn chatapp(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(&dir.0);
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running `chatapp serve`: its address, the log lines up to "listening on",
/// and the rest of its log as it comes.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub startup_log: Vec<String>,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a server behind, even when a test fails midway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `chatapp serve` and waits for its "listening on" log line.
pub fn start_server(dir: &TempDir, env: &[(&str, &str)]) -> Server {
    let mut child = chatapp(dir, &["serve"], env).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let addr = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split([',', ' ']).next())
                    .map(str::to_string);
                seen.push(line);
                if let Some(addr) = addr {
                    return Server {
                        child,
                        addr,
                        startup_log: seen,
                        log: rx,
                    };
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {seen:#?}");
            }
        }
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits until the child exits; its status.
pub async fn exited(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
