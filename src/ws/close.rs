//! Why a connection closes: its WebSocket close code, its reason text, and
//! whether the frames queued for it are flushed first.

use std::hash::{BuildHasher, RandomState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    pub drain: bool,
    /// Whether the reason tells the client when to come back (see [`CloseReason::text`]).
    pub retry_after: bool,
}

pub const SLOW_CONSUMER: CloseReason = CloseReason {
    code: 4008,
    reason: "slow consumer",
    drain: false,
    retry_after: false,
};
pub const TOKEN_EXPIRED: CloseReason = CloseReason {
    code: 4001,
    reason: "token expired or revoked",
    drain: false,
    retry_after: false,
};
pub const ACCOUNT_DELETED: CloseReason = CloseReason {
    code: 4003,
    reason: "account deleted",
    drain: false,
    retry_after: false,
};
pub const SHUTTING_DOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
    drain: true,
    retry_after: true,
};
pub const IDLE: CloseReason = CloseReason {
    code: 4000,
    reason: "idle timeout",
    drain: false,
    retry_after: false,
};
pub const TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "frame too large",
    drain: false,
    retry_after: false,
};
pub const UNAVAILABLE: CloseReason = CloseReason {
    code: 1011,
    reason: "database unavailable",
    drain: false,
    retry_after: false,
};
pub const GARBAGE: CloseReason = CloseReason {
    code: 1008,
    reason: "too many invalid frames",
    drain: false,
    retry_after: false,
};

impl CloseReason {
    /// The close frame's reason text. A node going away sends every client
    /// it closes all at once elsewhere: each is told its own wait,
    /// `; retry_after_ms=N` with N drawn uniformly from 0..=`spread_ms`, so
    /// they reach the other nodes spread over that window instead of in
    /// the same millisecond.
    pub fn text(&self, spread_ms: u64) -> String {
        if !self.retry_after {
            return self.reason.to_string();
        }
        format!(
            "{}; retry_after_ms={}",
            self.reason,
            uniform_up_to(spread_ms)
        )
    }
}

/// A number in 0..=`max`, different for every call: each `RandomState` is
/// keyed afresh (from per-thread keys the OS seeded), which is all the
/// jitter needs, without a file read per closed socket.
fn uniform_up_to(max: u64) -> u64 {
    let random = RandomState::new().hash_one(0u8);
    random % (max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after_ms(text: &str) -> u64 {
        text.strip_prefix("server shutting down; retry_after_ms=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a going-away reason: {text:?}"))
    }

    #[test]
    fn going_away_spreads_its_clients_over_the_window() {
        let waits: Vec<u64> = (0..200)
            .map(|_| retry_after_ms(&SHUTTING_DOWN.text(5_000)))
            .collect();
        assert!(waits.iter().all(|&w| w <= 5_000), "{waits:?}");
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{waits:?}");
        assert_eq!(retry_after_ms(&SHUTTING_DOWN.text(0)), 0);
    }

    #[test]
    fn other_reasons_are_their_text_alone() {
        assert_eq!(SLOW_CONSUMER.text(5_000), "slow consumer");
    }
}
