//! Registration, login and authentication; tokens in `tokens`, bcrypt in
//! `password`.

mod tokens;

pub use tokens::{IssuedToken, Opened, TokenKey, issue_token};

use crate::config::DatabaseConfig;
use crate::db::Pipeline;
use crate::error::{ApiError, FieldError};
use crate::http::{State, json_or_form_body, respond, with_state};
use crate::password::{PASSWORD_MAX_BYTES, hash_password, verify_password};
use crate::users::{self, USER_COLUMNS, User};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// Who is calling, as proven by a valid, unrevoked token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub token_version: i32,
    pub expires_at: OffsetDateTime,
}

/// The statement every authenticated request runs, on a connection of its own
/// (see [`db::Pipeline`]): prepared once, pipelined, no pool checkout. The
/// `send` benchmark measured it at a third of all database CPU when it ran as
/// an unprepared statement on the pool.
pub fn token_check_pipeline(cfg: &DatabaseConfig) -> Result<Pipeline, tokio_postgres::Error> {
    Pipeline::new(
        cfg,
        vec![(
            "select username, token_version from users where id = $1",
            &[Type::INT8],
        )],
    )
}

/// Checks the token's seal and expiry, then that the account still exists and
/// the token predates no password change (one indexed lookup).
pub async fn authenticate(state: &State, token: &str) -> Result<AuthUser, ApiError> {
    let opened = state.token_key.open(token, OffsetDateTime::now_utc())?;
    let checks = state.token_checks.get().await?;
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
        _ => Err(ApiError::Unauthorized("token has been revoked")),
    }
}

// ---- validation shared with users ----

pub const PASSWORD_MIN_BYTES: usize = 8;

pub fn check_password(field: &str, password: &str, errors: &mut Vec<FieldError>) {
    let n = password.len();
    if !(PASSWORD_MIN_BYTES..=PASSWORD_MAX_BYTES).contains(&n) {
        errors.push(FieldError::new(
            field,
            format!("must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes long"),
        ));
    }
}

fn check_username(username: &str, errors: &mut Vec<FieldError>) {
    let n = username.chars().count();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !(3..=50).contains(&n) || !username.chars().all(allowed) {
        errors.push(FieldError::new(
            "username",
            "must be 3 to 50 characters of letters, digits, '_', '.' or '-'",
        ));
    }
}

// ---- routes ----

#[derive(Deserialize)]
struct RegisterRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
struct LoginRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Serialize)]
pub struct AuthResponse {
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub user: User,
}

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    register(state.clone())
        .or(login(state.clone()))
        .unify()
        .or(me(state))
        .unify()
}

/// POST /api/v1/auth/register
fn register(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.config.limits.body_bytes;
    warp::path!("auth" / "register")
        .and(warp::post())
        .and(with_state(state))
        .and(json_or_form_body(limit))
        .then(|state, body| async move { respond(register_user(state, body).await) })
}

/// POST /api/v1/auth/login
fn login(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.config.limits.body_bytes;
    warp::path!("auth" / "login")
        .and(warp::post())
        .and(with_state(state))
        .and(json_or_form_body(limit))
        .then(|state, body| async move { respond(login_user(state, body).await) })
}

/// GET /api/v1/auth/me
fn me(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("auth" / "me")
        .and(warp::get())
        .and(crate::http::auth(state.clone()))
        .and(with_state(state))
        .then(|user: AuthUser, state: State| async move {
            respond(
                users::get_user(&state, user.id)
                    .await
                    .map(|u| warp::reply::json(&u)),
            )
        })
}

async fn register_user(state: State, req: RegisterRequest) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    check_username(&req.username, &mut errors);
    check_password("password", &req.password, &mut errors);
    let display_name = users::check_display_name(req.display_name.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let hash = hash_password(req.password, state.config.auth.bcrypt_cost).await?;
    let client = state.pool.get().await?;
    let user = insert_user(&*client, &req.username, &hash, display_name.as_deref()).await?;
    let reply = auth_response(&state, user, 0)?;
    Ok(warp::reply::with_status(
        warp::reply::json(&reply),
        StatusCode::CREATED,
    ))
}

async fn login_user(state: State, req: LoginRequest) -> Result<impl Reply, ApiError> {
    let client = state.pool.get().await?;
    let found = client
        .query_opt(
            &format!(
                "select {USER_COLUMNS}, password_hash, token_version from users
                 where lower(username) = lower($1)"
            ),
            &[&req.username],
        )
        .await?;
    drop(client);
    let Some(row) = found else {
        // Same bcrypt work as a real check, so response time does not reveal whether the user exists.
        verify_password(req.password, state.dummy_hash.clone()).await?;
        return Err(ApiError::InvalidCredentials);
    };
    if !verify_password(req.password, row.get("password_hash")).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let reply = auth_response(&state, User::from_row(&row), row.get("token_version"))?;
    Ok(warp::reply::json(&reply))
}

pub fn auth_response(
    state: &State,
    user: User,
    token_version: i32,
) -> Result<AuthResponse, ApiError> {
    let issued = issue_token(
        &state.token_key,
        user.id,
        &user.username,
        token_version,
        state.config.auth.token_ttl_secs,
    )?;
    Ok(AuthResponse {
        token: issued.token,
        expires_at: issued.expires_at,
        user,
    })
}

async fn insert_user(
    client: &impl GenericClient,
    username: &str,
    password_hash: &str,
    display_name: Option<&str>,
) -> Result<User, ApiError> {
    let row = client
        .query_one(
            &format!(
                "insert into users (username, password_hash, display_name) values ($1, $2, $3)
                 returning {USER_COLUMNS}"
            ),
            &[&username, &password_hash, &display_name],
        )
        .await
        .map_err(|e| match crate::error::unique_violation(&e) {
            Some("users_username_key") => ApiError::UsernameTaken,
            _ => e.into(),
        })?;
    Ok(User::from_row(&row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rules() {
        for ok in ["abc", "a.b-c_d", &"x".repeat(50)] {
            let mut e = vec![];
            check_username(ok, &mut e);
            assert!(e.is_empty(), "{ok}");
        }
        for bad in [
            "ab",
            &"x".repeat(51),
            "has space",
            "emoji😀",
            "semi;colon",
            "",
        ] {
            let mut e = vec![];
            check_username(bad, &mut e);
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_72_bytes() {
        let check = |p: &str| {
            let mut e = vec![];
            check_password("password", p, &mut e);
            e.is_empty()
        };
        assert!(check("12345678"));
        assert!(check(&"a".repeat(72)));
        assert!(!check("1234567"));
        assert!(!check(&"a".repeat(73)));
        // 24 three-byte characters = 72 bytes; one more is 75 bytes.
        assert!(check(&"€".repeat(24)));
        assert!(!check(&"€".repeat(25)));
    }
}
