//! Validation: every key's accepted values, named in the error.

use super::{Config, ConfigError, LOG_LEVELS};

impl Config {
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
        check_range("auth.clock_skew_secs", self.auth.clock_skew_secs, 0, 3600)?;
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
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(ConfigError::new(
                "log.format",
                format!("`{}` is not one of text, json", self.log.format),
            ));
        }
        if let Some(listen) = &self.metrics.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new(
                "metrics.listen",
                format!("`{listen}` is not an address such as 127.0.0.1:9100"),
            ));
        }
        check_range("http.drain_delay_secs", self.http.drain_delay_secs, 0, 3600)?;
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
        let limits = &self.limits;
        check_range("limits.max_offset", limits.max_offset as u64, 0, 1_000_000)?;
        check_range(
            "limits.ids_per_request",
            limits.ids_per_request as u64,
            1,
            100_000,
        )?;
        check_range(
            "limits.group_members",
            limits.group_members as u64,
            2,
            1_000_000,
        )?;
        check_range(
            "limits.sockets_per_user",
            limits.sockets_per_user as u64,
            1,
            100_000,
        )?;
        let http = &self.http;
        check_range(
            "http.header_read_timeout_secs",
            http.header_read_timeout_secs,
            1,
            3600,
        )?;
        check_range("http.keep_alive_secs", http.keep_alive_secs, 1, 24 * 3600)?;
        check_range(
            "http.max_connections",
            http.max_connections as u64,
            1,
            10_000_000,
        )?;
        check_range(
            "limits.bcrypt_queue",
            limits.bcrypt_queue as u64,
            1,
            100_000,
        )?;
        check_range(
            "limits.search_timeout_ms",
            limits.search_timeout_ms,
            1,
            3_600_000,
        )?;
        let r = &limits.rate;
        for (key, rate) in [
            ("register_per_ip", r.register_per_ip),
            ("login_per_ip", r.login_per_ip),
            ("messages", r.messages),
            ("chats_created", r.chats_created),
            ("member_adds", r.member_adds),
            ("typing", r.typing),
            ("reads", r.reads),
            ("searches", r.searches),
            ("frames", r.frames),
        ] {
            let key = format!("limits.rate.{key}");
            check_range(
                &format!("{key}.per_minute"),
                rate.per_minute as u64,
                1,
                10_000_000,
            )?;
            check_range(&format!("{key}.burst"), rate.burst as u64, 1, 1_000_000)?;
        }
        check_range(
            "limits.rate.failed_logins_before_backoff",
            r.failed_logins_before_backoff as u64,
            0,
            1000,
        )?;
        check_range(
            "limits.rate.failed_login_max_backoff_secs",
            r.failed_login_max_backoff_secs,
            1,
            24 * 3600,
        )?;
        check_range(
            "database.statement_timeout_ms",
            self.database.statement_timeout_ms,
            0,
            3_600_000,
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
        // A chat object (members listed included) is far below 64 KiB; a
        // queue must hold the largest frame the server builds.
        check_range("ws.queue_bytes", ws.queue_bytes as u64, 64 * 1024, 1 << 30)?;
        check_range(
            "ws.replay_cache_bytes",
            ws.replay_cache_bytes as u64,
            0,
            1 << 34,
        )?;
        check_range(
            "ws.replay_max_events",
            ws.replay_max_events as u64,
            0,
            10_000_000,
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
            "ws.presence_max_members",
            ws.presence_max_members as u64,
            0,
            10_000_000,
        )?;
        check_range(
            "ws.close_flush_timeout_ms",
            ws.close_flush_timeout_ms,
            0,
            600_000,
        )?;
        check_range("ws.reconnect_spread_ms", ws.reconnect_spread_ms, 0, 600_000)?;
        check_range(
            "ws.presence_view_ttl_ms",
            ws.presence_view_ttl_ms,
            0,
            60_000,
        )?;
        check_range("ws.session_starts", ws.session_starts as u64, 1, 1_000)?;
        check_range(
            "ws.session_start_queue",
            ws.session_start_queue as u64,
            0,
            1_000_000,
        )?;
        check_range(
            "ws.session_start_wait_ms",
            ws.session_start_wait_ms,
            1,
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
