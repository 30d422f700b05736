//! Authentication: sealing tokens ([`tokens`]) and proving a request's
//! caller from one. Registration and login are the `users` resource's.

mod tokens;

pub use tokens::{DEFAULT_CLOCK_SKEW_SECS, Grant, IssuedToken, Opened, TokenKey, issue_token};

use crate::config::{AuthConfig, DatabaseConfig};
use crate::db::Pipeline;
use crate::error::ApiError;
use time::OffsetDateTime;
use tokio_postgres::types::Type;

/// Who is calling, as proven by a valid, unrevoked token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub token_version: i32,
    pub expires_at: OffsetDateTime,
}

/// A caller as their token's seal proves them, before their account is
/// read: for a statement that checks the token version itself, in the
/// round trip that does its work (a send, see `membership::lock_members`),
/// where [`Auth::authenticate`] would spend one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sealed {
    pub id: i64,
    pub token_version: i32,
}

impl From<&AuthUser> for Sealed {
    fn from(user: &AuthUser) -> Sealed {
        Sealed {
            id: user.id,
            token_version: user.token_version,
        }
    }
}

/// SQL: whether a token of version `version` is still good for user row
/// `u` (no password change since; the row exists). [`Auth::authenticate`]
/// states the same in Rust.
pub fn token_current_sql(u: &str, version: &str) -> String {
    format!("{u}.token_version = {version}")
}

/// Issues tokens and checks them.
pub struct Auth {
    key: TokenKey,
    /// The statement every authenticated request runs, on a connection of
    /// its own (see [`Pipeline`]): prepared once, pipelined, no pool checkout.
    checks: Pipeline,
    ttl_secs: u64,
    skew_secs: u64,
}

impl Auth {
    pub fn new(
        key: [u8; 32],
        config: &AuthConfig,
        database: &DatabaseConfig,
    ) -> Result<Auth, tokio_postgres::Error> {
        let checks = Pipeline::new(
            database,
            vec![(
                "select username, token_version from users where id = $1",
                &[Type::INT8],
            )],
        )?;
        Ok(Auth {
            key: TokenKey::new(key),
            checks,
            ttl_secs: config.token_ttl_secs,
            skew_secs: config.clock_skew_secs,
        })
    }

    /// Connects and prepares the check now, so the first requests do not
    /// wait for it; a failure here is retried by the first request.
    pub async fn warm_up(&self) {
        if let Err(e) = self.checks.get().await {
            log::warn!("cannot prepare the token check connection yet: {e:?}");
        }
    }

    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// A token for the user at `token_version`, valid for the configured time.
    pub fn issue(
        &self,
        user_id: i64,
        username: &str,
        token_version: i32,
    ) -> Result<IssuedToken, ApiError> {
        let grant = Grant {
            user_id,
            username,
            token_version,
            ttl_secs: self.ttl_secs,
            skew_secs: self.skew_secs,
        };
        self.key.issue(&grant, OffsetDateTime::now_utc())
    }

    /// Checks the token's seal and expiry only (no database): a [`Sealed`]
    /// caller, whose token version is still to be checked.
    pub fn open(&self, token: &str) -> Result<Sealed, ApiError> {
        let opened = self.key.open(token, OffsetDateTime::now_utc())?;
        Ok(Sealed {
            id: opened.user_id,
            token_version: opened.token_version,
        })
    }

    /// Checks the token's seal and expiry, then that the account still exists
    /// and the token predates no password change (one indexed lookup).
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, ApiError> {
        let opened = self.key.open(token, OffsetDateTime::now_utc())?;
        let checks = self.checks.get().await?;
        let row = checks
            .client
            .query_opt(&checks.statements[0], &[&opened.user_id])
            .await?;
        match row {
            Some(row) if row.get::<_, i32>(1) == opened.token_version => Ok(AuthUser {
                id: opened.user_id,
                username: row.get(0),
                token_version: opened.token_version,
                expires_at: opened.expires_at,
            }),
            _ => Err(revoked()),
        }
    }
}

/// The answer to a token of an account that is gone (or predates a password
/// change), also given when the caller's account is deleted while their
/// request runs: as the request would have been answered a moment later.
pub fn revoked() -> ApiError {
    ApiError::Unauthorized("token has been revoked")
}
