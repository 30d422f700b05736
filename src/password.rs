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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// bcrypt reads only the first 72 bytes; longer passwords are refused.
pub const PASSWORD_MAX_BYTES: usize = 72;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue, started on first use and shared by every
/// [`Hasher`] of the process (each bounds its own jobs).
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

/// Hashes and checks passwords at the configured cost, with at most
/// `queue` of them waiting or running at once: past that a login is told
/// the server is busy instead of waiting behind an unbounded queue, and a
/// queued check whose requester has gone (the client hung up) is skipped.
pub struct Hasher {
    cost: u32,
    /// A hash of nothing in particular, so logins for unknown users cost the
    /// same as real ones.
    dummy_hash: String,
    queue: usize,
    load: Arc<Load>,
}

/// How many jobs are waiting or running, how many were skipped, and how
/// many ran.
#[derive(Default)]
struct Load {
    queued: AtomicUsize,
    skipped: AtomicU64,
    done: AtomicU64,
}

impl Hasher {
    pub async fn new(cost: u32, queue: usize) -> Result<Hasher, ApiError> {
        let mut hasher = Hasher {
            cost,
            dummy_hash: String::new(),
            queue,
            load: Arc::default(),
        };
        hasher.dummy_hash = hasher.hash("dummy password".into()).await?;
        Ok(hasher)
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost))
            .await?
            .map_err(ApiError::internal)
    }

    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        // bcrypt reads only the first 72 bytes, so a longer password would
        // match by truncation; no stored password is longer. Still hash, for
        // equal timing.
        let too_long = password.len() > PASSWORD_MAX_BYTES;
        self.run(move || bcrypt::verify(password, &hash).unwrap_or(false) && !too_long)
            .await
    }

    /// The work of a real check, for a user that does not exist: response
    /// time must not tell whether a username is taken.
    pub async fn verify_nobody(&self, password: String) -> Result<bool, ApiError> {
        self.verify(password, self.dummy_hash.clone()).await
    }

    /// Jobs waiting or running now.
    pub fn queued(&self) -> usize {
        self.load.queued.load(Ordering::Relaxed)
    }

    /// Jobs skipped so far because their requester had gone.
    pub fn skipped(&self) -> u64 {
        self.load.skipped.load(Ordering::Relaxed)
    }

    /// Hashes and checks run so far.
    pub fn done(&self) -> u64 {
        self.load.done.load(Ordering::Relaxed)
    }

    /// Runs `f` on a hashing thread, if the queue has room.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let load = self.load.clone();
        let taken = load
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(ApiError::Busy {
                retry_after: Duration::from_secs(1),
            });
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                load.skipped.fetch_add(1, Ordering::Relaxed);
                load.queued.fetch_sub(1, Ordering::AcqRel);
            } else {
                let done = f();
                // Counted before the answer goes, so the caller never sees
                // its own finished job still in the queue or not yet run.
                load.done.fetch_add(1, Ordering::Relaxed);
                load.queued.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.send(done);
            }
        });
        HASHERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| ApiError::internal("the bcrypt threads are gone"))?;
        rx.await
            .map_err(|_| ApiError::internal("a bcrypt job panicked"))
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
        let hasher = Hasher::new(8, 16).await.unwrap();
        let after_setup = ticks.load(Ordering::Relaxed);
        assert!(hasher.verify("password".into(), hash).await.unwrap());
        let after_verify = ticks.load(Ordering::Relaxed) - after_setup;
        let hashed = hasher.hash("password".into()).await.unwrap();
        let during_hash = ticks.load(Ordering::Relaxed) - after_verify - after_setup;
        ticker.abort();
        assert!(hashed.starts_with("$2"));
        assert!(after_verify > 1, "the runtime was blocked while verifying");
        assert!(during_hash > 1, "the runtime was blocked while hashing");
    }

    /// A login for an unknown user is checked against the dummy hash, which
    /// must cost what a stored hash costs: made at the configured cost.
    #[tokio::test]
    async fn the_dummy_hash_is_made_at_the_configured_cost() {
        for cost in [4, 6] {
            let hasher = Hasher::new(cost, 16).await.unwrap();
            let prefix = format!("$2b${cost:02}$");
            assert!(
                hasher.dummy_hash.starts_with(&prefix),
                "{}",
                hasher.dummy_hash
            );
            assert!(!hasher.verify_nobody("dummy".into()).await.unwrap());
        }
    }

    /// The hashing threads run at the lowest priority, so a burst of logins
    /// cannot crowd the runtime's workers off the cores.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_nice_19() {
        let hasher = Hasher::new(4, 16).await.unwrap();
        let nice = hasher
            .run(|| {
                // SAFETY: reads this thread's priority; errno is not consulted as 19 is not -1.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
            })
            .await
            .unwrap();
        assert_eq!(nice, 19);
    }

    #[tokio::test]
    async fn past_its_queue_a_hasher_is_busy_and_it_skips_checks_nobody_awaits() {
        // Arrange: every hashing thread held by a job of this hasher, whose
        // queue has room for one more.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hasher = Arc::new(Hasher::new(4, threads + 1).await.unwrap());
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let held: Vec<_> = (0..threads)
            .map(|_| {
                let (hasher, release) = (hasher.clone(), release_rx.clone());
                tokio::spawn(async move {
                    hasher
                        .run(move || {
                            let _ = release.lock().unwrap().recv();
                        })
                        .await
                })
            })
            .collect();
        while hasher.queued() < threads {
            tokio::task::yield_now().await;
        }
        let hash = bcrypt::hash("password", 4).unwrap();

        // Act: one check queued and abandoned by its caller, one past the queue.
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            hasher.verify("password".into(), hash.clone()),
        )
        .await;
        let refused = hasher.verify("password".into(), hash).await;
        for _ in 0..threads {
            release_tx.send(()).unwrap();
        }
        for job in held {
            job.await.unwrap().unwrap();
        }
        while hasher.queued() > 0 {
            tokio::task::yield_now().await;
        }

        // Assert
        assert!(
            abandoned.is_err(),
            "the queued check did not wait: {abandoned:?}"
        );
        assert!(matches!(refused, Err(ApiError::Busy { .. })), "{refused:?}");
        assert_eq!(hasher.skipped(), 1, "the abandoned check ran");
    }

    #[tokio::test]
    async fn passwords_past_72_bytes_never_verify() {
        let password = "p".repeat(72);
        let hash = bcrypt::hash(&password, 4).unwrap();
        let hasher = Hasher::new(4, 16).await.unwrap();
        assert!(hasher.verify(password.clone(), hash.clone()).await.unwrap());
        assert!(
            !hasher
                .verify(format!("{password}extra"), hash)
                .await
                .unwrap()
        );
    }
}
