//! Client processes: one process cannot hold enough sockets (hard open-file
//! limit 20,000 here), so scenarios with many clients re-execute this binary
//! as their worker and drive it over stdin/stdout, one JSON line per report.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A client process (this binary re-executed as a scenario's worker), killed on drop.
pub struct Worker {
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Worker {
    /// Starts this binary as `name` (e.g. `idle-worker`) with `--key value` arguments.
    pub fn spawn(name: &str, args: &[(&str, String)]) -> Result<Worker, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(name);
        for (key, value) in args {
            cmd.arg(format!("--{key}")).arg(value);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        // Plain thread: this crate's tokio has no process/io-util features.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines,
        })
    }

    pub fn send(&mut self, command: &str) -> Result<(), String> {
        writeln!(self.stdin, "{command}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("worker {}: {e}", self.child.id()))
    }

    /// The next report named `event` (bounded by `timeout`).
    pub async fn expect(&mut self, event: &str, timeout: Duration) -> Result<Value, String> {
        let id = self.child.id();
        let deadline = Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| format!("worker {id}: no `{event}` within {timeout:?}"))?
                .ok_or_else(|| format!("worker {id} exited before `{event}`"))?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("worker {id}: bad report {line:?}: {e}"))?;
            if v["event"] == event {
                return Ok(v);
            }
            if v["event"] == "error" {
                return Err(format!("worker {id}: {}", v["error"]));
            }
        }
    }

    /// Waits up to `timeout` for the worker to exit, then kills it.
    pub async fn wait(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a worker process's `work` (worker side) on one thread, reports its
/// error to the parent, and exits without waiting for socket tasks: the
/// exit closes every socket.
pub fn main(work: impl std::future::Future<Output = Result<(), String>>) -> ! {
    crate::common::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(work) {
        emit(serde_json::json!({"event": "error", "error": e}));
    }
    std::process::exit(0);
}

/// Sends one report line to the parent (worker side).
pub fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The numbers of a JSON array.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}
