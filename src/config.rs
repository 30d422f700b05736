//! Configuration: a YAML file, then environment overrides, then validation.
//!
//! Every key has a default, so an empty file (or no file at all) is a valid
//! development configuration. Validation errors name the offending key and the
//! values it accepts, because operators read them in a one-line startup log.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub cors: CorsConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: u32,
    pub connect_timeout_secs: u64,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// 64 hex characters (32 bytes). `None` means "generate one at startup".
    pub token_key: Option<String>,
    pub token_ttl_secs: u64,
    pub bcrypt_cost: u32,
}

// The token key is a secret: keep it out of `{:?}` output.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("token_key", &self.token_key.as_ref().map(|_| "<redacted>"))
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins; `["*"]` allows any origin, an empty list disables CORS.
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub body_bytes: u64,
    pub message_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    /// Recent events held in memory per node for replay; 0 replays from the log only.
    pub replay_cache_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_bad_frames: u32,
    pub typing_interval_ms: u64,
    pub event_retention_secs: u64,
    pub prune_interval_secs: u64,
    pub presence_heartbeat_secs: u64,
    pub presence_timeout_secs: u64,
    pub close_flush_timeout_ms: u64,
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
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_key: None,
            token_ttl_secs: 24 * 60 * 60,
            bcrypt_cost: 12,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            body_bytes: 64 * 1024,
            message_chars: 4000,
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
            max_frame_bytes: 64 * 1024,
            max_bad_frames: 20,
            typing_interval_ms: 2_000,
            event_retention_secs: 7 * 24 * 60 * 60,
            prune_interval_secs: 300,
            presence_heartbeat_secs: 10,
            presence_timeout_secs: 45,
            close_flush_timeout_ms: 5_000,
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
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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

pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

impl Config {
    /// Loads the configuration the way `chatapp serve` does: the explicit path,
    /// else `CONFIG_PATH` (a file, or a directory holding `config.yaml`), else
    /// `./config.yaml` when present, else defaults; then env overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment passed in, so tests need not
    /// mutate the process environment.
    pub fn load_with(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match resolve_path(explicit, &env)? {
            Some(path) => Self::from_file(&path)?,
            None => Config::default(),
        };
        config.apply_env(&env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml reports "key.path: problem at line L column C"; keep it on one line.
            let msg = e.to_string().replace('\n', " ");
            let (key, rest) = match msg.split_once(": ") {
                Some((k, r)) if !k.contains(' ') => (k.to_string(), r.to_string()),
                _ => ("<file>".to_string(), msg.clone()),
            };
            ConfigError::new(key, rest)
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        // An empty variable (e.g. `CHATAPP_TOKEN_KEY=` in a compose file) counts as unset.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = env("PORT") {
            self.port = parse_env("PORT", &v, "a port number 1-65535")?;
        }
        if let Some(v) = env("CHATAPP_HOST") {
            self.host = v;
        }
        if let Some(v) = env("DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = env("CHATAPP_DB_POOL_SIZE") {
            self.database.pool_size = parse_env("CHATAPP_DB_POOL_SIZE", &v, "an integer 1-1000")?;
        }
        if let Some(v) = env("CHATAPP_TOKEN_KEY") {
            self.auth.token_key = Some(v);
        }
        if let Some(v) = env("CHATAPP_BCRYPT_COST") {
            self.auth.bcrypt_cost = parse_env("CHATAPP_BCRYPT_COST", &v, "an integer 4-31")?;
        }
        if let Some(v) = env("CHATAPP_LOG_LEVEL") {
            self.log.level = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(ConfigError::new(
                "host",
                "must be an IP address such as 0.0.0.0",
            ));
        }
        if self.database.url.trim().is_empty() {
            return Err(ConfigError::new(
                "database.url",
                "must be a postgres:// URL or key=value connection string",
            ));
        }
        if self.database.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::new(
                "database.url",
                "is not a valid PostgreSQL connection string (postgres://user@host:port/db)",
            ));
        }
        check_range(
            "database.pool_size",
            self.database.pool_size as u64,
            1,
            1000,
        )?;
        check_range(
            "database.connect_timeout_secs",
            self.database.connect_timeout_secs,
            1,
            600,
        )?;
        if let Some(key) = &self.auth.token_key {
            parse_token_key(key)?;
        }
        check_range(
            "auth.token_ttl_secs",
            self.auth.token_ttl_secs,
            1,
            366 * 24 * 3600,
        )?;
        check_range("auth.bcrypt_cost", self.auth.bcrypt_cost as u64, 4, 31)?;
        if !LOG_LEVELS.contains(&self.log.level.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::new(
                "log.level",
                format!(
                    "`{}` is not one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        for origin in &self.cors.origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::new(
                    "cors.origins",
                    format!("`{origin}` must be \"*\" or an origin like https://chat.example.com"),
                ));
            }
        }
        check_range(
            "limits.body_bytes",
            self.limits.body_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        check_range(
            "limits.message_chars",
            self.limits.message_chars as u64,
            1,
            100_000,
        )?;
        let ws = &self.ws;
        check_range("ws.ping_interval_ms", ws.ping_interval_ms, 50, 3_600_000)?;
        check_range(
            "ws.idle_timeout_ms",
            ws.idle_timeout_ms,
            100,
            24 * 3_600_000,
        )?;
        if ws.idle_timeout_ms <= ws.ping_interval_ms {
            return Err(ConfigError::new(
                "ws.idle_timeout_ms",
                "must be greater than ws.ping_interval_ms",
            ));
        }
        check_range("ws.queue_frames", ws.queue_frames as u64, 1, 1_000_000)?;
        check_range("ws.queue_bytes", ws.queue_bytes as u64, 1024, 1 << 30)?;
        check_range(
            "ws.replay_cache_bytes",
            ws.replay_cache_bytes as u64,
            0,
            1 << 34,
        )?;
        check_range(
            "ws.max_frame_bytes",
            ws.max_frame_bytes as u64,
            1024,
            16 << 20,
        )?;
        check_range("ws.max_bad_frames", ws.max_bad_frames as u64, 1, 1_000_000)?;
        check_range("ws.typing_interval_ms", ws.typing_interval_ms, 0, 3_600_000)?;
        check_range(
            "ws.event_retention_secs",
            ws.event_retention_secs,
            1,
            365 * 24 * 3600,
        )?;
        check_range(
            "ws.prune_interval_secs",
            ws.prune_interval_secs,
            1,
            24 * 3600,
        )?;
        check_range(
            "ws.presence_heartbeat_secs",
            ws.presence_heartbeat_secs,
            1,
            3600,
        )?;
        check_range(
            "ws.presence_timeout_secs",
            ws.presence_timeout_secs,
            2,
            3600,
        )?;
        if ws.presence_timeout_secs <= ws.presence_heartbeat_secs {
            return Err(ConfigError::new(
                "ws.presence_timeout_secs",
                "must be greater than ws.presence_heartbeat_secs",
            ));
        }
        check_range(
            "ws.close_flush_timeout_ms",
            ws.close_flush_timeout_ms,
            0,
            600_000,
        )?;
        Ok(())
    }

    /// The listen address; the host is validated here so `build()` cannot panic on it.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let ip: std::net::IpAddr = self.host.parse().map_err(|_| {
            ConfigError::new(
                "host",
                format!("`{}` is not an IP address such as 0.0.0.0", self.host),
            )
        })?;
        Ok(std::net::SocketAddr::new(ip, self.port))
    }
}

fn resolve_path(
    explicit: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        return Ok(Some(path.to_path_buf()));
    }
    if let Some(raw) = env("CONFIG_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(raw);
        if path.is_dir() {
            let file = path.join("config.yaml");
            if !file.is_file() {
                return Err(ConfigError::new(
                    "CONFIG_PATH",
                    format!("directory {} holds no config.yaml", path.display()),
                ));
            }
            return Ok(Some(file));
        }
        if !path.is_file() {
            return Err(ConfigError::new(
                "CONFIG_PATH",
                format!("{} is neither a file nor a directory", path.display()),
            ));
        }
        return Ok(Some(path));
    }
    let local = PathBuf::from("config.yaml");
    Ok(local.is_file().then_some(local))
}

fn parse_env<T: std::str::FromStr>(
    name: &str,
    value: &str,
    accepted: &str,
) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(name, format!("`{value}` is not {accepted}")))
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            key,
            format!("{value} is out of range; accepted values are {min} to {max}"),
        ));
    }
    Ok(())
}

/// Decodes a token key: exactly 64 hex characters.
pub fn parse_token_key(raw: &str) -> Result<[u8; 32], ConfigError> {
    let raw = raw.trim();
    let bad = || {
        ConfigError::new(
            "auth.token_key",
            "must be exactly 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`",
        )
    };
    if raw.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, chunk) in raw.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).map_err(|_| bad())?;
        key[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

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
