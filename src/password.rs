//! bcrypt, off the async runtime and below it in priority.
//!
//! A bcrypt check at cost 12 is ~250 ms of pure CPU. Run on tokio's blocking
//! pool, a burst of logins starts one thread per login, and on a small machine
//! those threads outnumber the runtime's workers: the OS then gives every other
//! request a sliver of the cores, and a burst of logins slows every other
//! request the server answers. Here hashing runs on one
//! thread per core at the lowest scheduling priority (nice 19), so it uses
//! whatever CPU the runtime and PostgreSQL leave idle — the logins/s of a
//! fully busy machine — and yields at once when a request needs a core.

use crate::error::ApiError;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::oneshot;

/// bcrypt reads only the first 72 bytes; longer passwords are refused.
pub const PASSWORD_MAX_BYTES: usize = 72;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue, started on first use.
static HASHERS: LazyLock<Mutex<Sender<Job>>> = LazyLock::new(|| {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for i in 0..threads {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("bcrypt-{i}"))
            .spawn(move || hasher(&rx))
            .expect("spawn a bcrypt thread");
    }
    Mutex::new(tx)
});

fn hasher(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// Nice 19 for the calling thread (on Linux, nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; who = 0 is this thread.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
            log::warn!("cannot lower the bcrypt threads' priority; logins may slow other requests");
        }
    }
}

/// Runs `f` on a hashing thread.
async fn on_hasher<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    HASHERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| ApiError::internal("the bcrypt threads are gone"))?;
    rx.await
        .map_err(|_| ApiError::internal("a bcrypt job panicked"))
}

pub async fn hash_password(password: String, cost: u32) -> Result<String, ApiError> {
    on_hasher(move || bcrypt::hash(password, cost))
        .await?
        .map_err(ApiError::internal)
}

pub async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    // bcrypt reads only the first 72 bytes, so a longer password would match by
    // truncation; no stored password is longer. Still hash, for equal timing.
    let too_long = password.len() > PASSWORD_MAX_BYTES;
    on_hasher(move || bcrypt::verify(password, &hash).unwrap_or(false) && !too_long).await
}

/// Hashes and checks passwords at the configured cost.
pub struct Hasher {
    cost: u32,
    /// A hash of nothing in particular, so logins for unknown users cost the
    /// same as real ones.
    dummy_hash: String,
}

impl Hasher {
    pub async fn new(cost: u32) -> Result<Hasher, ApiError> {
        let dummy_hash = hash_password("dummy password".into(), cost).await?;
        Ok(Hasher { cost, dummy_hash })
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        hash_password(password, self.cost).await
    }

    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        verify_password(password, hash).await
    }

    /// The work of a real check, for a user that does not exist: response
    /// time must not tell whether a username is taken.
    pub async fn verify_nobody(&self, password: String) -> Result<bool, ApiError> {
        verify_password(password, self.dummy_hash.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt must not run on the async runtime: on a single-threaded runtime
    /// another task keeps making progress while a password is checked. Run
    /// inline, the check would finish inside one poll and the ticker would
    /// never get a turn.
    #[tokio::test(flavor = "current_thread")]
    async fn password_checks_leave_the_runtime_free() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hash = bcrypt::hash("password", 8).unwrap();
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        assert!(verify_password("password".into(), hash).await.unwrap());
        let after_verify = ticks.load(Ordering::Relaxed);
        let hashed = hash_password("password".into(), 8).await.unwrap();
        let during_hash = ticks.load(Ordering::Relaxed) - after_verify;
        ticker.abort();
        assert!(hashed.starts_with("$2"));
        assert!(after_verify > 1, "the runtime was blocked while verifying");
        assert!(during_hash > 1, "the runtime was blocked while hashing");
    }

    /// The hashing threads run at the lowest priority, so a burst of logins
    /// cannot crowd the runtime's workers off the cores.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_nice_19() {
        let nice = on_hasher(|| {
            // SAFETY: reads this thread's priority; errno is not consulted as 19 is not -1.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .await
        .unwrap();
        assert_eq!(nice, 19);
    }

    #[tokio::test]
    async fn passwords_past_72_bytes_never_verify() {
        let password = "p".repeat(72);
        let hash = bcrypt::hash(&password, 4).unwrap();
        assert!(
            verify_password(password.clone(), hash.clone())
                .await
                .unwrap()
        );
        assert!(
            !verify_password(format!("{password}extra"), hash)
                .await
                .unwrap()
        );
    }
}
