//! A connection's frame queue: the dispatch pushes, the writer pops.
//!
//! A bounded `VecDeque` behind a lock rather than `tokio::sync::mpsc`: a
//! big room's dispatch pushes into thousands of queues in a row on one
//! thread while their writers pop on others, and an mpsc channel's linked
//! blocks of slots, its semaphore and its per-slot ready bits make each push
//! and pop touch several cache lines another core wrote last. Here a push
//! or a pop is one short uncontended lock and the deque's own memory, and
//! an idle connection's queue holds no allocation at all.
//!
//! Semantics are the channel's: bounded in frames; the writer gets the
//! frames queued before the sender's drop, then `None`; a push after the
//! writer is gone reports `Closed`. The queue is bounded in bytes too,
//! counted beside the frames: a frame stays counted after it is taken
//! until the writer [`QueueRx::release`]s it, so what a writer holds on to
//! (a burst being written, frames held back for a snapshot) stays within
//! the bound.

use super::Frame;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

/// Frames a drained queue may keep room for; a burst beyond it is given
/// back once written, so a busy moment does not stay in every connection.
const KEPT_CAPACITY: usize = 64;

struct Shared {
    state: Mutex<State>,
    /// The writer, when it waits on an empty queue.
    waker: AtomicWaker,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// The bytes of the frames queued or taken and not yet released.
    bytes: usize,
    /// The sending side was dropped: once `frames` is empty, the end.
    sender_gone: bool,
    /// The receiving side was dropped: pushes are refused.
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a deque in a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

/// Why nothing was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum PopError {
    Empty,
    Closed,
}

/// The pushing side, owned by the connection's outbox.
pub struct QueueTx {
    shared: Arc<Shared>,
    max_frames: usize,
    max_bytes: usize,
}

/// The popping side, owned by the connection's writer.
pub struct QueueRx {
    shared: Arc<Shared>,
}

/// A queue holding at most `max_frames` frames and `max_bytes` bytes.
pub fn queue(max_frames: usize, max_bytes: usize) -> (QueueTx, QueueRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        waker: AtomicWaker::new(),
    });
    let rx = QueueRx {
        shared: shared.clone(),
    };
    let tx = QueueTx {
        shared,
        max_frames,
        max_bytes,
    };
    (tx, rx)
}

impl QueueTx {
    /// Queues `frame` without waiting.
    pub fn try_push(&self, frame: Frame) -> Result<(), PushError> {
        let was_empty = {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(PushError::Closed);
            }
            if state.frames.len() >= self.max_frames || state.bytes + frame.len() > self.max_bytes {
                return Err(PushError::Full);
            }
            state.bytes += frame.len();
            state.frames.push_back(frame);
            state.frames.len() == 1
        };
        // A writer only waits after finding the queue empty, so only the
        // push that ends the emptiness needs to wake it.
        if was_empty {
            self.shared.waker.wake();
        }
        Ok(())
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.waker.wake();
    }
}

impl QueueRx {
    /// Counts `bytes` of frames taken earlier out of the bound.
    pub fn release(&self, bytes: usize) {
        let mut state = self.shared.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Takes the oldest frame without waiting.
    pub fn try_pop(&mut self) -> Result<Frame, PopError> {
        let mut state = self.shared.lock();
        match state.frames.pop_front() {
            Some(frame) => {
                if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
                    state.frames = VecDeque::new();
                }
                Ok(frame)
            }
            None if state.sender_gone => Err(PopError::Closed),
            None => Err(PopError::Empty),
        }
    }

    /// Waits for the oldest frame; `None` once the sending side is gone and
    /// everything queued before was taken. Cancel-safe: a frame is only
    /// taken by the poll that returns it. Like tokio's own channels it
    /// spends the task's cooperative budget, so a writer whose queue never
    /// runs dry still lets the other tasks on its worker run.
    pub async fn pop(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| {
            let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let taken = match self.try_pop() {
                Err(PopError::Empty) => {
                    // Registered before looking again, so a push in between
                    // wakes it.
                    self.shared.waker.register(cx.waker());
                    self.try_pop()
                }
                taken => taken,
            };
            match taken {
                Ok(frame) => {
                    budget.made_progress();
                    Poll::Ready(Some(frame))
                }
                Err(PopError::Closed) => {
                    budget.made_progress();
                    Poll::Ready(None)
                }
                Err(PopError::Empty) => Poll::Pending,
            }
        })
        .await
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};

    fn frame(s: &'static str) -> Frame {
        Frame::from_static(s)
    }

    #[test]
    fn frames_come_out_in_order_and_a_full_queue_refuses_more() {
        let (tx, mut rx) = queue(2, 1 << 20);
        assert_eq!(tx.try_push(frame("a")), Ok(()));
        assert_eq!(tx.try_push(frame("b")), Ok(()));
        assert_eq!(tx.try_push(frame("c")), Err(PushError::Full));
        assert_eq!(rx.try_pop(), Ok(frame("a")));
        assert_eq!(tx.try_push(frame("c")), Ok(()));
        assert_eq!(rx.try_pop(), Ok(frame("b")));
        assert_eq!(rx.try_pop(), Ok(frame("c")));
        assert_eq!(rx.try_pop(), Err(PopError::Empty));
    }

    #[test]
    fn bytes_stay_counted_until_released() {
        let (tx, mut rx) = queue(8, 2);
        assert_eq!(tx.try_push(frame("a")), Ok(()));
        assert_eq!(tx.try_push(frame("bc")), Err(PushError::Full));
        assert_eq!(rx.try_pop(), Ok(frame("a")));
        assert_eq!(
            tx.try_push(frame("bc")),
            Err(PushError::Full),
            "a frame taken is counted until released"
        );
        rx.release(1);
        assert_eq!(tx.try_push(frame("bc")), Ok(()));
    }

    #[test]
    fn the_end_comes_after_the_frames_queued_before_it() {
        let (tx, mut rx) = queue(4, 1 << 20);
        tx.try_push(frame("a")).unwrap();
        drop(tx);
        assert_eq!(rx.try_pop(), Ok(frame("a")));
        assert_eq!(rx.try_pop(), Err(PopError::Closed));
    }

    #[test]
    fn a_push_after_the_writer_is_gone_is_refused() {
        let (tx, rx) = queue(4, 1 << 20);
        drop(rx);
        assert_eq!(tx.try_push(frame("a")), Err(PushError::Closed));
    }

    /// Counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_writer_is_woken_by_a_push_and_by_the_end() {
        let (tx, mut rx) = queue(4, 1 << 20);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut pop = std::pin::pin!(rx.pop());
            assert!(pop.as_mut().poll(&mut cx).is_pending());
            tx.try_push(frame("a")).unwrap();
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken by the push");
            assert_eq!(pop.as_mut().poll(&mut cx), Poll::Ready(Some(frame("a"))));
        }
        let mut pop = std::pin::pin!(rx.pop());
        assert!(pop.as_mut().poll(&mut cx).is_pending());
        drop(tx);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "woken by the end");
        assert_eq!(pop.as_mut().poll(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_writer_on_another_thread_gets_every_frame_in_order_and_then_the_end() {
        // Pushes race the writer's pops and waits on two workers; a lost
        // wake would leave the writer waiting with frames queued (the
        // timeout below), a reordering would fail the comparison.
        const FRAMES: usize = 100_000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) = queue(8, 1 << 20);
        let writer = runtime.spawn(async move {
            let mut taken = Vec::with_capacity(FRAMES);
            while let Some(frame) = rx.pop().await {
                rx.release(frame.len());
                taken.push(frame);
            }
            taken
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let pusher = std::thread::spawn(move || {
            for i in 0..FRAMES {
                let frame = Frame::from(i.to_string());
                while let Err(e) = tx.try_push(frame.clone()) {
                    assert_eq!(e, PushError::Full);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the writer was left waiting on a full queue"
                    );
                    std::thread::yield_now();
                }
            }
        });
        pusher.join().expect("every frame pushed");
        let taken = runtime
            .block_on(async { tokio::time::timeout_at(deadline.into(), writer).await })
            .expect("the writer was left waiting for the end")
            .unwrap();
        let expected: Vec<Frame> = (0..FRAMES).map(|i| Frame::from(i.to_string())).collect();
        assert!(taken == expected, "frames lost or out of order");
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_beyond_what_it_keeps() {
        let (tx, mut rx) = queue(1024, 1 << 20);
        for _ in 0..KEPT_CAPACITY * 2 {
            tx.try_push(frame("a")).unwrap();
        }
        while rx.try_pop().is_ok() {}
        assert_eq!(rx.shared.lock().frames.capacity(), 0);
    }
}
