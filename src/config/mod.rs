//! Configuration: a YAML file, then environment overrides, then validation.
//!
//! Every key has a default, so an empty file (or no file at all) is a valid
//! development configuration. Validation errors name the offending key and the
//! values it accepts, because operators read them in a one-line startup log.
//! Loading lives in [`load`], validation in [`check`].

mod check;
mod load;

pub use check::parse_token_key;

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub cors: CorsConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
    /// The longest a request's statement may run (PostgreSQL's
    /// `statement_timeout` on the pool's connections); 0 is no limit.
    pub statement_timeout_ms: u64,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// 64 hex characters (32 bytes). `None` means "generate one at startup".
    pub token_key: Option<String>,
    pub token_ttl_secs: u64,
    pub bcrypt_cost: u32,
    /// How far behind the issuing node's clock a verifier's may be.
    pub clock_skew_secs: u64,
}

// The token key is a secret: keep it out of `{:?}` output.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("token_key", &self.token_key.as_ref().map(|_| "<redacted>"))
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("clock_skew_secs", &self.clock_skew_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    /// `text` (a line per entry) or `json` (an object per line).
    pub format: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins; `["*"]` allows any origin, an empty list disables CORS.
    pub origins: Vec<String>,
}

/// Any origin, as the seed allowed: the API authenticates with bearer
/// tokens, never cookies, so a page elsewhere cannot act as a user without
/// the user's token.
impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: vec!["*".into()],
        }
    }
}

/// Bounds on HTTP connections (see `server`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a request head may take from its first byte.
    pub header_read_timeout_secs: u64,
    /// How long a kept-alive connection may wait for its next request.
    pub keep_alive_secs: u64,
    /// Connections (WebSockets included) open at once, per node.
    pub max_connections: usize,
    /// On SIGTERM, how long `/readyz` says 503 before the node stops taking
    /// requests, so load balancers route around it first.
    pub drain_delay_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_secs: 10,
            keep_alive_secs: 60,
            max_connections: 20_000,
            drain_delay_secs: 5,
        }
    }
}

/// `GET /metrics` (Prometheus).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the metrics on this address (e.g. `127.0.0.1:9100`) instead
    /// of on the main listener, for deployments that do not expose them.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub body_bytes: u64,
    pub message_chars: usize,
    /// The deepest `offset` a page may start at (deeper: use cursors).
    pub max_offset: usize,
    /// Ids one request may name (e.g. `member_ids`).
    pub ids_per_request: usize,
    /// Members a group may have.
    pub group_members: usize,
    /// WebSockets one user may hold open on a node.
    pub sockets_per_user: usize,
    /// Password hashes queued at most; past it logins get 503 `busy`.
    pub bcrypt_queue: usize,
    /// Take the client's address from the last `X-Forwarded-For` entry
    /// (set it only behind a proxy that appends one).
    pub trust_forwarded_for: bool,
    /// The longest a message search's statement may run (503
    /// `query_timeout` past it).
    pub search_timeout_ms: u64,
    pub rate: RateConfig,
}

/// A token bucket: `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

const fn rate(per_minute: u32, burst: u32) -> Rate {
    Rate { per_minute, burst }
}

/// Rate limits, per node (see `limits`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    pub enabled: bool,
    pub register_per_ip: Rate,
    pub login_per_ip: Rate,
    /// Failed logins of one account before each further try must wait.
    pub failed_logins_before_backoff: u32,
    pub failed_login_max_backoff_secs: u64,
    pub messages: Rate,
    pub chats_created: Rate,
    pub member_adds: Rate,
    pub typing: Rate,
    pub reads: Rate,
    pub searches: Rate,
    /// Other WebSocket frames (join_chat, leave_chat, ping).
    pub frames: Rate,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            enabled: true,
            register_per_ip: rate(20, 20),
            login_per_ip: rate(60, 30),
            failed_logins_before_backoff: 5,
            failed_login_max_backoff_secs: 300,
            messages: rate(600, 60),
            chats_created: rate(30, 10),
            member_adds: rate(60, 20),
            typing: rate(120, 10),
            reads: rate(600, 60),
            searches: rate(120, 20),
            frames: rate(1200, 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    /// Recent events held in memory per node for replay; 0 replays from the log only.
    pub replay_cache_bytes: usize,
    pub replay_max_events: usize,
    pub max_frame_bytes: usize,
    pub max_bad_frames: u32,
    pub typing_interval_ms: u64,
    pub event_retention_secs: u64,
    pub prune_interval_secs: u64,
    pub presence_heartbeat_secs: u64,
    pub presence_timeout_secs: u64,
    /// Chats of at most this many members share per-user presence (live
    /// `presence` frames, the `presence_snapshot`); members of larger ones
    /// ask for it with `GET /api/v1/chats/:id/presence`.
    pub presence_max_members: usize,
    /// How long a node keeps the members of a chat it read for presence
    /// snapshots, following their presence from its notices, before reading
    /// them again (`ws::presence::View`); 0 reads them for every snapshot.
    pub presence_view_ttl_ms: u64,
    pub close_flush_timeout_ms: u64,
    /// A node shutting down tells each client it closes to wait a random
    /// time up to this long before reconnecting, and keeps its users online
    /// that long plus a heartbeat (`ws::presence::drain_grace`).
    pub reconnect_spread_ms: u64,
    /// Sessions that may start at once (each start reads from the pool); the
    /// rest wait in line (see `ws::admission`).
    pub session_starts: usize,
    /// Starts that may wait in line; one arriving past it is refused 503
    /// `busy` with the time to wait.
    pub session_start_queue: usize,
    /// The longest a start waits in line before it is refused the same way.
    pub session_start_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 8080,
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            cors: CorsConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
            ws: WsConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/chatapp".into(),
            pool_size: 16,
            connect_timeout_secs: 5,
            statement_timeout_ms: 5_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_key: None,
            token_ttl_secs: 24 * 60 * 60,
            bcrypt_cost: 12,
            clock_skew_secs: 60,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            body_bytes: 64 * 1024,
            message_chars: 4000,
            max_offset: 10_000,
            ids_per_request: 1000,
            group_members: 10_000,
            sockets_per_user: 32,
            bcrypt_queue: 64,
            trust_forwarded_for: false,
            search_timeout_ms: 1_000,
            rate: RateConfig::default(),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            queue_frames: 1024,
            queue_bytes: 4 * 1024 * 1024,
            replay_cache_bytes: 16 * 1024 * 1024,
            replay_max_events: 10_000,
            max_frame_bytes: 64 * 1024,
            max_bad_frames: 20,
            typing_interval_ms: 2_000,
            event_retention_secs: 7 * 24 * 60 * 60,
            prune_interval_secs: 300,
            presence_heartbeat_secs: 10,
            presence_timeout_secs: 45,
            presence_max_members: 1_000,
            presence_view_ttl_ms: 2_000,
            close_flush_timeout_ms: 5_000,
            reconnect_spread_ms: 5_000,
            session_starts: 8,
            session_start_queue: 10_000,
            session_start_wait_ms: 30_000,
        }
    }
}

/// A configuration problem, phrased for an operator: which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// `key=value` for every setting that differs from its default, for the
    /// startup line; the token key and the database's credentials are
    /// never shown.
    pub fn non_default_settings(&self) -> Vec<String> {
        let mut ours = Vec::new();
        let mut defaults = Vec::new();
        flatten(
            "",
            &serde_json::to_value(self).unwrap_or_default(),
            &mut ours,
        );
        flatten(
            "",
            &serde_json::to_value(Config::default()).unwrap_or_default(),
            &mut defaults,
        );
        ours.into_iter()
            .filter(|setting| !defaults.contains(setting))
            .map(|(key, value)| match key.as_str() {
                "auth.token_key" => format!("{key}=<set>"),
                "database.url" => format!("{key}={}", database_target(&self.database.url)),
                _ => format!("{key}={value}"),
            })
            .collect()
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The database a URL names, without user or password: `host:port/db`.
pub fn database_target(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "<unparsable>".into();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_sample_config_documents_every_default() {
        let sample = Config::from_yaml(include_str!("../../config.sample.yaml")).unwrap();
        sample.validate().unwrap();
        assert_eq!(format!("{sample:?}"), format!("{:?}", Config::default()));

        // A key left out of the sample falls back to its default and would
        // pass the comparison above: every key must be written out. The
        // token key has no default and is shown commented out.
        let written: serde_json::Value =
            serde_yaml::from_str(include_str!("../../config.sample.yaml")).unwrap();
        let mut written_keys = Vec::new();
        flatten("", &written, &mut written_keys);
        let mut default_keys = Vec::new();
        flatten(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut default_keys,
        );
        for (key, _) in default_keys {
            assert!(
                key == "auth.token_key" || written_keys.iter().any(|(k, _)| *k == key),
                "config.sample.yaml does not document {key}"
            );
        }
    }

    #[test]
    fn the_startup_line_shows_changed_settings_but_no_secret() {
        let mut config = Config {
            port: 9000,
            ..Config::default()
        };
        config.auth.token_key = Some("ab".repeat(32));
        config.database.url = "postgres://chat:hunter2@db.internal:6432/chat".into();

        let shown = config.non_default_settings().join(" ");

        assert!(shown.contains("port=9000"), "{shown}");
        assert!(shown.contains("auth.token_key=<set>"), "{shown}");
        assert!(
            shown.contains("database.url=db.internal:6432/chat"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("abab"),
            "{shown}"
        );
        assert!(
            !shown.contains("bcrypt_cost"),
            "defaults are left out: {shown}"
        );
    }

    #[test]
    fn empty_yaml_gives_defaults() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.auth.bcrypt_cost, 12);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_yaml("auth:\n  bcrypt_kost: 4\n").unwrap_err();
        assert!(e.to_string().contains("bcrypt_kost"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = Config::from_yaml("auth:\n  bcrypt_cost: lots\n").unwrap_err();
        assert_eq!(e.key, "auth.bcrypt_cost", "{e}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let cases: &[(&str, &str)] = &[
            ("auth:\n  bcrypt_cost: 3\n", "auth.bcrypt_cost"),
            ("auth:\n  bcrypt_cost: 32\n", "auth.bcrypt_cost"),
            ("database:\n  pool_size: 0\n", "database.pool_size"),
            ("log:\n  level: loud\n", "log.level"),
            ("limits:\n  message_chars: 0\n", "limits.message_chars"),
            ("cors:\n  origins: [\"example.com\"]\n", "cors.origins"),
            ("auth:\n  token_key: abc\n", "auth.token_key"),
            (
                "ws:\n  ping_interval_ms: 1000\n  idle_timeout_ms: 500\n",
                "ws.idle_timeout_ms",
            ),
            ("ws:\n  session_starts: 0\n", "ws.session_starts"),
            (
                "ws:\n  session_start_wait_ms: 0\n",
                "ws.session_start_wait_ms",
            ),
        ];
        for (yaml, key) in cases {
            let e = Config::from_yaml(yaml).unwrap().validate().unwrap_err();
            assert_eq!(&e.key, key, "{yaml}");
        }
    }

    #[test]
    fn token_key_must_be_64_hex_chars() {
        assert!(parse_token_key(&"ab".repeat(32)).is_ok());
        assert!(parse_token_key(&"ab".repeat(31)).is_err());
        assert!(parse_token_key(&"zz".repeat(32)).is_err());
        assert!(parse_token_key(&"é".repeat(32)).is_err());
    }

    #[test]
    fn env_overrides_win_and_bad_values_name_the_variable() {
        let env = |k: &str| match k {
            "PORT" => Some("9999".to_string()),
            "CHATAPP_BCRYPT_COST" => Some("5".to_string()),
            _ => None,
        };
        let c = Config::load_with(Some(Path::new("/dev/null")), env).unwrap();
        assert_eq!(c.port, 9999);
        assert_eq!(c.auth.bcrypt_cost, 5);

        let bad = |k: &str| (k == "PORT").then(|| "eighty".to_string());
        let e = Config::load_with(Some(Path::new("/dev/null")), bad).unwrap_err();
        assert_eq!(e.key, "PORT");
    }

    #[test]
    fn config_path_may_name_a_directory() {
        let dir = std::env::temp_dir().join(format!("chatapp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), "port: 7070\n").unwrap();
        let d = dir.to_string_lossy().to_string();
        let c = Config::load_with(None, |k| (k == "CONFIG_PATH").then(|| d.clone())).unwrap();
        assert_eq!(c.port, 7070);
        std::fs::remove_dir_all(&dir).ok();
    }
}
