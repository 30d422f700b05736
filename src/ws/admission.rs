//! Admission of WebSocket session starts.
//!
//! A session's start reads from PostgreSQL (the token check, its chats and
//! the log's head; its presence snapshot waits in a line of its own,
//! `presence::snapshot`), each read waiting for a pooled connection. When a
//! node dies its clients all arrive at a surviving node at once; left to
//! the pool, thousands of starts wait on it together, the
//! pool's wait times out for most of them, and each refused client backs
//! off blindly, which is what made recovery take minutes. Here starts wait
//! in line instead: at most `ws.session_starts` run at once, the rest wait
//! their turn in arrival order (tokio's semaphore is fair), and a start is
//! refused only when the line is already `ws.session_start_queue` long or
//! it has waited `ws.session_start_wait_ms`; the refusal (503 `busy`) says
//! how long to wait, from the line ahead and how long a start takes.

use crate::error::ApiError;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shortest and longest wait a refusal asks for.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The line of session starts of one node.
pub struct Admission {
    permits: Arc<Semaphore>,
    concurrency: usize,
    queue: usize,
    wait: Duration,
    /// Starts waiting for a turn (also served on `/metrics`).
    waiting: Gauge,
    /// Moving average of how long a start holds its turn, in µs.
    held_us: Arc<AtomicU64>,
}

/// A session start's turn; the next in line goes when it is dropped.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    since: Instant,
    held_us: Arc<AtomicU64>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let took = self.since.elapsed().as_micros().min(u64::MAX as u128) as u64;
        // Weight 1/8: follows a change of load within a few dozen starts.
        let _ = self
            .held_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    took
                } else {
                    avg - avg / 8 + took / 8
                })
            });
    }
}

impl Admission {
    pub fn new(concurrency: usize, queue: usize, wait: Duration, waiting: Gauge) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            queue,
            wait,
            waiting,
            held_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits for a turn to start a session: `Busy` when the line is full or
    /// the wait ran out, with the time the line ahead should take.
    pub async fn admit(&self) -> Result<Turn, ApiError> {
        let ahead = self.waiting.inc().max(0) as usize;
        let _leave = Leave(&self.waiting);
        if ahead >= self.queue {
            return Err(self.busy(ahead));
        }
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Turn {
                _permit: permit,
                since: Instant::now(),
                held_us: self.held_us.clone(),
            }),
            // The semaphore is never closed; a wait that ran out is refused.
            _ => Err(self.busy(self.waiting())),
        }
    }

    /// How many starts are waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.get().max(0) as usize
    }

    fn busy(&self, ahead: usize) -> ApiError {
        let held = Duration::from_micros(self.held_us.load(Ordering::Relaxed));
        let line = held.saturating_mul(ahead as u32) / self.concurrency.max(1) as u32;
        ApiError::Busy {
            retry_after: line.clamp(RETRY_MIN, RETRY_MAX),
        }
    }
}

/// Counts a start out of the line however its wait ends.
struct Leave<'a>(&'a Gauge);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_past_the_concurrency_wait_their_turn_in_order() {
        let admission = Arc::new(Admission::new(
            1,
            10,
            Duration::from_secs(5),
            Gauge::default(),
        ));
        let first = admission.admit().await.expect("a free turn");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (waiter, tx) = (admission.clone(), tx.clone());
            tokio::spawn(async move {
                let turn = waiter.admit().await.expect("waits, then runs");
                tx.send(n).unwrap();
                drop(turn);
            });
            // Each waiter is in line before the next one arrives.
            while admission.waiting() < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(rx.try_recv().is_err(), "nobody runs while the turn is held");
        drop(first);
        let order: Vec<usize> = [rx.recv().await, rx.recv().await, rx.recv().await]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_start_arriving_at_a_full_line_is_refused_with_a_time_to_wait() {
        let admission = Arc::new(Admission::new(
            1,
            1,
            Duration::from_secs(5),
            Gauge::default(),
        ));
        let _held = admission.admit().await.expect("a free turn");
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit().await.map(drop) })
        };
        while admission.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let refused = admission.admit().await.map(drop);
        let retry = match refused {
            Err(e @ ApiError::Busy { .. }) => e.retry_after().expect("busy says when"),
            other => panic!("expected busy, got {other:?}"),
        };
        assert!((RETRY_MIN..=RETRY_MAX).contains(&retry), "{retry:?}");
        waiter.abort();
    }

    #[tokio::test]
    async fn a_start_that_waited_too_long_is_refused_and_leaves_the_line() {
        let admission = Admission::new(1, 10, Duration::from_millis(20), Gauge::default());
        let _held = admission.admit().await.expect("a free turn");
        let refused = admission.admit().await.map(drop);
        assert!(matches!(refused, Err(ApiError::Busy { .. })), "{refused:?}");
        assert_eq!(admission.waiting(), 0);
    }
}
