//! Rate limits, per node: how often one client address may register or log
//! in, how often one user may send, create chats, add members, type, mark
//! read or send other frames, and how a run of failed logins for one
//! account slows further attempts. Token buckets from `governor` (a burst,
//! then a steady rate); over a limit the caller is told when to retry.
//!
//! Every map here is bounded: idle keys are dropped by [`RateLimits::tidy`]
//! (run every few seconds), and past a hard cap new keys are refused rather
//! than remembered, so a client cycling through addresses or usernames
//! cannot make the node's memory grow.

use crate::config::{Rate, RateConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys a limiter remembers at most (those seen recently).
const MAX_KEYS: usize = 100_000;

/// What a client is doing, for the limit that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Per client address.
    Register,
    Login,
    /// Per user.
    SendMessage,
    CreateChat,
    AddMembers,
    Typing,
    MarkRead,
    Search,
    /// Any other WebSocket frame (join, leave, ping).
    Frame,
}

impl Action {
    /// Its name in the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Action::Register => "register",
            Action::Login => "login",
            Action::SendMessage => "send_message",
            Action::CreateChat => "create_chat",
            Action::AddMembers => "add_members",
            Action::Typing => "typing",
            Action::MarkRead => "mark_read",
            Action::Search => "search",
            Action::Frame => "frame",
        }
    }
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: &Rate) -> Keyed<K> {
        Keyed {
            limiter: RateLimiter::keyed(quota(rate)),
        }
    }

    /// `Err(wait)` when `key` is over its limit (or the map is full).
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() >= MAX_KEYS {
            self.limiter.retain_recent();
            if self.limiter.len() >= MAX_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn tidy(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn quota(rate: &Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst.max(1)).expect("at least 1");
    let period = Duration::from_secs(60) / rate.per_minute.max(1);
    Quota::with_period(period)
        .expect("a positive period")
        .allow_burst(burst)
}

/// Failed logins of one account.
struct Failures {
    count: u32,
    last: Instant,
}

/// A node's rate limits.
pub struct RateLimits {
    enabled: bool,
    register: Keyed<IpAddr>,
    login: Keyed<IpAddr>,
    /// Per user and token version: a token revoked since (a password
    /// change) is refused by the send itself, not before, and must not use
    /// up the sends of the account's current tokens.
    send_message: Keyed<(i64, i32)>,
    create_chat: Keyed<i64>,
    add_members: Keyed<i64>,
    typing: Keyed<i64>,
    mark_read: Keyed<i64>,
    search: Keyed<i64>,
    frame: Keyed<i64>,
    failed_logins: Mutex<HashMap<String, Failures>>,
    free_failures: u32,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
}

impl RateLimits {
    pub fn new(config: &RateConfig, metrics: Arc<Metrics>) -> RateLimits {
        RateLimits {
            enabled: config.enabled,
            register: Keyed::new(&config.register_per_ip),
            login: Keyed::new(&config.login_per_ip),
            send_message: Keyed::new(&config.messages),
            create_chat: Keyed::new(&config.chats_created),
            add_members: Keyed::new(&config.member_adds),
            typing: Keyed::new(&config.typing),
            mark_read: Keyed::new(&config.reads),
            search: Keyed::new(&config.searches),
            frame: Keyed::new(&config.frames),
            failed_logins: Mutex::new(HashMap::new()),
            free_failures: config.failed_logins_before_backoff,
            max_backoff: Duration::from_secs(config.failed_login_max_backoff_secs),
            metrics,
        }
    }

    /// A per-address action: `Err` (429) when `ip` is over its limit.
    pub fn check_ip(&self, action: Action, ip: IpAddr) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let limiter = match action {
            Action::Register => &self.register,
            Action::Login => &self.login,
            _ => return Ok(()),
        };
        limiter
            .check(&bucket(ip))
            .map_err(|wait| self.limited(action, wait))
    }

    /// A send by user `user_id` with a token of version `token_version`:
    /// `Err` (429) when they are over the limit.
    pub fn check_send(&self, user_id: i64, token_version: i32) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        self.send_message
            .check(&(user_id, token_version))
            .map_err(|wait| self.limited(Action::SendMessage, wait))
    }

    /// A per-user action: `Err` (429) when `user_id` is over its limit.
    /// Not sends ([`RateLimits::check_send`]) nor the per-address actions
    /// ([`RateLimits::check_ip`]).
    pub fn check_user(&self, action: Action, user_id: i64) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let limiter = match action {
            Action::CreateChat => &self.create_chat,
            Action::AddMembers => &self.add_members,
            Action::Typing => &self.typing,
            Action::MarkRead => &self.mark_read,
            Action::Search => &self.search,
            Action::Frame => &self.frame,
            Action::SendMessage | Action::Register | Action::Login => return Ok(()),
        };
        limiter
            .check(&user_id)
            .map_err(|wait| self.limited(action, wait))
    }

    /// Whether `username` may try a password now: after a run of failures,
    /// each further try waits twice as long as the one before (up to the
    /// configured maximum), whoever sends it.
    pub fn login_allowed(&self, username: &str) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let failures = self.failures();
        let Some(f) = failures.get(&username.to_lowercase()) else {
            return Ok(());
        };
        let wait = self.backoff(f.count);
        let since = f.last.elapsed();
        if since < wait {
            return Err(self.limited(Action::Login, wait - since));
        }
        Ok(())
    }

    pub fn login_failed(&self, username: &str) {
        if !self.enabled {
            return;
        }
        let mut failures = self.failures();
        if failures.len() >= MAX_KEYS {
            let max = self.max_backoff;
            failures.retain(|_, f| f.last.elapsed() < max);
        }
        let key = username.to_lowercase();
        if failures.len() >= MAX_KEYS && !failures.contains_key(&key) {
            return;
        }
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = Instant::now();
    }

    pub fn login_succeeded(&self, username: &str) {
        if self.enabled {
            self.failures().remove(&username.to_lowercase());
        }
    }

    /// The wait after `count` failures: none for the first few, then 1 s,
    /// 2 s, 4 s... up to the maximum.
    fn backoff(&self, count: u32) -> Duration {
        let over = count.saturating_sub(self.free_failures);
        if over == 0 {
            return Duration::ZERO;
        }
        let secs = 1u64.checked_shl(over - 1).unwrap_or(u64::MAX);
        Duration::from_secs(secs).min(self.max_backoff)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failed_logins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets keys that are back to a full bucket, and failures old
    /// enough to have no effect left.
    pub fn tidy(&self) {
        self.register.tidy();
        self.login.tidy();
        self.send_message.tidy();
        self.create_chat.tidy();
        self.add_members.tidy();
        self.typing.tidy();
        self.mark_read.tidy();
        self.search.tidy();
        self.frame.tidy();
        let max = self.max_backoff;
        self.failures().retain(|_, f| f.last.elapsed() < max);
    }
}

/// The key an address is limited by: IPv6 by its /64, which one client
/// usually holds whole.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

impl RateLimits {
    fn limited(&self, action: Action, retry_after: Duration) -> ApiError {
        self.metrics.limited(action.name());
        ApiError::RateLimited { retry_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;

    fn limits(edit: impl FnOnce(&mut RateConfig)) -> RateLimits {
        let mut config = LimitsConfig::default().rate;
        edit(&mut config);
        RateLimits::new(&config, Arc::default())
    }

    #[test]
    fn a_burst_passes_then_the_next_one_waits() {
        let limits = limits(|c| {
            c.messages = Rate {
                per_minute: 60,
                burst: 3,
            }
        });
        for _ in 0..3 {
            assert!(limits.check_send(7, 0).is_ok());
        }
        match limits.check_send(7, 0) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.check_send(8, 0).is_ok(), "per user");
        assert!(
            limits.check_send(7, 1).is_ok(),
            "per token version: a revoked token's sends leave the new tokens' alone"
        );
    }

    #[test]
    fn failed_logins_back_off_twice_as_long_each_time_up_to_the_maximum() {
        let limits = limits(|c| {
            c.failed_logins_before_backoff = 2;
            c.failed_login_max_backoff_secs = 5;
        });
        let waits: Vec<Duration> = (0..6).map(|n| limits.backoff(n)).collect();
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [0, 0, 0, 1, 2, 4]);
        assert_eq!(limits.backoff(40), Duration::from_secs(5));

        limits.login_failed("Alice");
        limits.login_failed("alice");
        assert!(limits.login_allowed("ALICE").is_ok(), "two are free");
        limits.login_failed("alice");
        assert!(limits.login_allowed("alice").is_err());
        limits.login_succeeded("alice");
        assert!(limits.login_allowed("alice").is_ok());
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(bucket(v4), v4);
    }
}
