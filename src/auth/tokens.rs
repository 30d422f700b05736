//! Sealing and opening tokens: PASETO v4.local carrying the user id,
//! username, token version and expiry.
//!
//! Opening a token (BLAKE2b, XChaCha20, the claims' JSON, the expiry's
//! RFC 3339 text) costs more than the rest of the server's work on a small
//! request, and clients send the same few tokens over and over. So the key
//! remembers the tokens it has opened, by their exact text: a repeat costs a
//! hash of the text. Only tokens that opened are remembered (garbage cannot
//! fill the memory), every use still checks the expiry, and revocation is
//! never remembered: `authenticate` asks the database about every request.

use crate::error::ApiError;
use rusty_paseto::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Tokens remembered at most; when full, the memory starts over (a full
/// reset keeps each use O(1) and the bound hard; the cost is one more
/// opening per active token, once).
const OPENED_CAPACITY: usize = 4096;

/// The symmetric key tokens are sealed with, and the tokens it opened.
pub struct TokenKey {
    key: PasetoSymmetricKey<V4, Local>,
    opened: Mutex<HashMap<Box<str>, Opened>>,
}

/// What an opened token proves (until `expires_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub user_id: i64,
    pub token_version: i32,
    pub expires_at: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    user_id: i64,
    username: String,
    ver: i32,
    exp: String,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: OffsetDateTime,
}

impl TokenKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        TokenKey {
            key: PasetoSymmetricKey::<V4, Local>::from(Key::from(bytes)),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the token's seal and expiry as of `now`.
    pub fn open(&self, token: &str, now: OffsetDateTime) -> Result<Opened, ApiError> {
        let remembered = self.remembered().get(token).cloned();
        let opened = match remembered {
            Some(opened) => opened,
            None => {
                let opened = self.open_sealed(token)?;
                self.remember(token, &opened);
                opened
            }
        };
        if opened.expires_at <= now {
            return Err(ApiError::Unauthorized("token has expired"));
        }
        Ok(opened)
    }

    /// Decrypts and parses the token (which also checks its expiry against
    /// the clock).
    fn open_sealed(&self, token: &str) -> Result<Opened, ApiError> {
        let claims = PasetoParser::<V4, Local>::default()
            .parse_into::<Claims>(token, &self.key)
            .map_err(|e| match rusty_paseto::Error::from(e) {
                rusty_paseto::Error::Expired => ApiError::Unauthorized("token has expired"),
                _ => ApiError::Unauthorized("invalid token"),
            })?;
        let expires_at = OffsetDateTime::parse(&claims.exp, &Rfc3339)
            .map_err(|_| ApiError::Unauthorized("invalid token"))?;
        Ok(Opened {
            user_id: claims.user_id,
            token_version: claims.ver,
            expires_at,
        })
    }

    fn remember(&self, token: &str, opened: &Opened) {
        let mut remembered = self.remembered();
        if remembered.len() >= OPENED_CAPACITY {
            remembered.clear();
        }
        remembered.insert(token.into(), opened.clone());
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Opened>> {
        // The map is only ever in a consistent state (one insert or clear at a
        // time), so a panic elsewhere while it was held leaves it usable.
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How far behind the issuing node's clock another node's (or another
/// PASETO implementation's) may be and still accept a token at once, by
/// default.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;

/// What a token grants, and for how long.
pub struct Grant<'a> {
    pub user_id: i64,
    pub username: &'a str,
    pub token_version: i32,
    pub ttl_secs: u64,
    /// Seconds `nbf` is set before `now`: see [`DEFAULT_CLOCK_SKEW_SECS`].
    pub skew_secs: u64,
}

impl TokenKey {
    /// Seals `grant` as of `now`. Times are whole seconds (`iat` = now,
    /// `nbf` = now minus the skew, `exp` = now plus the lifetime): a
    /// verifier comparing whole seconds, or whose clock is a little behind,
    /// must not reject a token that was just issued.
    pub fn issue(&self, grant: &Grant, now: OffsetDateTime) -> Result<IssuedToken, ApiError> {
        let now = now.replace_nanosecond(0).map_err(ApiError::internal)?;
        let expires_at = now + time::Duration::seconds(grant.ttl_secs as i64);
        let text = |t: OffsetDateTime| t.format(&Rfc3339).map_err(ApiError::internal);
        let iat = text(now)?;
        let nbf = text(now - time::Duration::seconds(grant.skew_secs as i64))?;
        let exp = text(expires_at)?;
        let mut builder = PasetoBuilder::<V4, Local>::default();
        builder
            .set_claim(IssuedAtClaim::try_from(iat.as_str()).map_err(claim)?)
            .set_claim(NotBeforeClaim::try_from(nbf.as_str()).map_err(claim)?)
            .set_claim(ExpirationClaim::try_from(exp.as_str()).map_err(claim)?)
            .set_claim(CustomClaim::try_from(("user_id", grant.user_id)).map_err(claim)?)
            .set_claim(CustomClaim::try_from(("username", grant.username)).map_err(claim)?)
            .set_claim(CustomClaim::try_from(("ver", grant.token_version)).map_err(claim)?);
        let token = builder.build(&self.key).map_err(ApiError::internal)?;
        Ok(IssuedToken { token, expires_at })
    }
}

/// A claim that would not build: a bug, not a client's doing.
fn claim<E: Into<rusty_paseto::Error>>(e: E) -> ApiError {
    ApiError::internal(e.into())
}

/// A token issued now with the default clock skew.
pub fn issue_token(
    key: &TokenKey,
    user_id: i64,
    username: &str,
    token_version: i32,
    ttl_secs: u64,
) -> Result<IssuedToken, ApiError> {
    let grant = Grant {
        user_id,
        username,
        token_version,
        ttl_secs,
        skew_secs: DEFAULT_CLOCK_SKEW_SECS,
    };
    key.issue(&grant, OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn opened_len(key: &TokenKey) -> usize {
        key.remembered().len()
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let key = TokenKey::new([7; 32]);
        let t = issue_token(&key, 42, "alice", 3, 3600).unwrap();
        let now = OffsetDateTime::now_utc();
        let o = key.open(&t.token, now).unwrap();
        assert_eq!((o.user_id, o.token_version), (42, 3));
        assert_eq!(o.expires_at, t.expires_at);
        let other = TokenKey::new([8; 32]);
        assert!(other.open(&t.token, now).is_err());
        assert!(key.open("v4.local.garbage", now).is_err());
    }

    #[test]
    fn a_token_opens_at_once_where_the_clock_is_behind_the_issuers() {
        // Arrange: issued by a node whose clock is 30 s ahead of this one's.
        let key = TokenKey::new([7; 32]);
        let ahead = OffsetDateTime::now_utc() + Duration::seconds(30);
        let grant = Grant {
            user_id: 42,
            username: "alice",
            token_version: 0,
            ttl_secs: 3600,
            skew_secs: DEFAULT_CLOCK_SKEW_SECS,
        };
        let issued = key.issue(&grant, ahead).unwrap();

        // Act: opened here, a fresh key so nothing is remembered.
        let opened = TokenKey::new([7; 32]).open(&issued.token, OffsetDateTime::now_utc());

        // Assert
        assert_eq!(opened.unwrap().user_id, 42);
    }

    #[test]
    fn token_times_are_whole_seconds() {
        let key = TokenKey::new([7; 32]);
        let issued = issue_token(&key, 1, "alice", 0, 60).unwrap();
        assert_eq!(issued.expires_at.nanosecond(), 0);
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let key = TokenKey::new([7; 32]);
        let t = issue_token(&key, 42, "alice", 0, 60).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(key.open(&t.token, now).is_ok());
        assert_eq!(opened_len(&key), 1, "the opened token is remembered");

        let later = t.expires_at + Duration::seconds(1);
        let err = key.open(&t.token, later).unwrap_err();
        assert!(
            matches!(err, ApiError::Unauthorized("token has expired")),
            "{err:?}"
        );
        assert!(matches!(
            key.open(&t.token, t.expires_at),
            Err(ApiError::Unauthorized("token has expired"))
        ));
    }

    #[test]
    fn a_tampered_copy_of_a_remembered_token_is_refused() {
        let key = TokenKey::new([7; 32]);
        let t = issue_token(&key, 42, "alice", 0, 60).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(key.open(&t.token, now).is_ok());
        let mut tampered = t.token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(key.open(&tampered, now).is_err());
        assert!(key.open(&format!("{} ", t.token), now).is_err());
        assert_eq!(opened_len(&key), 1, "refused tokens are not remembered");
    }

    #[test]
    fn remembered_tokens_stay_bounded() {
        let key = TokenKey::new([7; 32]);
        let now = OffsetDateTime::now_utc();
        let tokens: Vec<String> = (0..OPENED_CAPACITY as i64 + 10)
            .map(|id| issue_token(&key, id, "u", 0, 60).unwrap().token)
            .collect();
        for (id, token) in tokens.iter().enumerate() {
            assert_eq!(key.open(token, now).unwrap().user_id, id as i64);
            assert!(opened_len(&key) <= OPENED_CAPACITY);
        }
        // After the reset, the earliest tokens still open (from their seal).
        assert_eq!(key.open(&tokens[0], now).unwrap().user_id, 0);
    }
}
