//! Why a connection closes: its WebSocket close code, its reason text, and
//! whether the frames queued for it are flushed first.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    pub drain: bool,
}

pub const SLOW_CONSUMER: CloseReason = CloseReason {
    code: 4008,
    reason: "slow consumer",
    drain: false,
};
pub const TOKEN_EXPIRED: CloseReason = CloseReason {
    code: 4001,
    reason: "token expired or revoked",
    drain: false,
};
pub const ACCOUNT_DELETED: CloseReason = CloseReason {
    code: 4003,
    reason: "account deleted",
    drain: false,
};
pub const SHUTTING_DOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "server shutting down",
    drain: true,
};
pub const IDLE: CloseReason = CloseReason {
    code: 4000,
    reason: "idle timeout",
    drain: false,
};
pub const TOO_BIG: CloseReason = CloseReason {
    code: 1009,
    reason: "frame too large",
    drain: false,
};
pub const UNAVAILABLE: CloseReason = CloseReason {
    code: 1011,
    reason: "database unavailable",
    drain: false,
};
pub const GARBAGE: CloseReason = CloseReason {
    code: 1008,
    reason: "too many invalid frames",
    drain: false,
};
