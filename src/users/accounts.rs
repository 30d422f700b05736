//! Accounts: registration, login and the caller's own profile.

use super::{USER_COLUMNS, User, fetch_user};
use crate::auth::{Auth, AuthUser};
use crate::db::Pool;
use crate::error::ApiError;
use crate::http::{Context, authed, client_ip, json_or_form_body, respond, with};
use crate::limits::{Action, RateLimits};
use crate::password::Hasher;
use crate::validate::{check_display_name, check_password, check_username};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(Deserialize)]
pub struct RegisterRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    display_name: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginRequest {
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

/// What registering and logging in use.
#[derive(Clone)]
pub struct Accounts {
    pool: Pool,
    auth: Arc<Auth>,
    hasher: Arc<Hasher>,
    rates: Arc<RateLimits>,
}

impl Accounts {
    pub fn new(ctx: &Context, hasher: &Arc<Hasher>) -> Accounts {
        Accounts {
            pool: ctx.pool.clone(),
            auth: ctx.auth.clone(),
            hasher: hasher.clone(),
            rates: ctx.rates.clone(),
        }
    }
}

/// POST /api/v1/auth/register
pub fn register(
    ctx: &Context,
    accounts: &Accounts,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("auth" / "register")
        .and(warp::post())
        .and(client_ip(ctx))
        .and(json_or_form_body(ctx.limits.body_bytes))
        .and(with(accounts.clone()))
        .then(register_user)
        .map(respond)
}

/// POST /api/v1/auth/login
pub fn login(
    ctx: &Context,
    accounts: &Accounts,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("auth" / "login")
        .and(warp::post())
        .and(client_ip(ctx))
        .and(json_or_form_body(ctx.limits.body_bytes))
        .and(with(accounts.clone()))
        .then(login_user)
        .map(respond)
}

/// GET /api/v1/auth/me
pub fn me(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("auth" / "me")
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(my_profile)
        .map(respond)
}

async fn my_profile(user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let me = fetch_user(&*client, user.id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(warp::reply::json(&me))
}

async fn register_user(
    ip: IpAddr,
    req: RegisterRequest,
    accounts: Accounts,
) -> Result<impl Reply, ApiError> {
    let Accounts {
        pool,
        auth,
        hasher,
        rates,
    } = accounts;
    rates.check_ip(Action::Register, ip)?;
    let mut errors = Vec::new();
    check_username(&req.username, &mut errors);
    check_password("password", &req.password, &mut errors);
    let display_name = check_display_name(req.display_name.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let hash = hasher.hash(req.password).await?;
    let client = pool.get().await?;
    let user = insert_user(&*client, &req.username, &hash, display_name.as_deref()).await?;
    let reply = auth_response(&auth, user, 0)?;
    Ok(warp::reply::with_status(
        warp::reply::json(&reply),
        StatusCode::CREATED,
    ))
}

async fn login_user(
    ip: IpAddr,
    req: LoginRequest,
    accounts: Accounts,
) -> Result<impl Reply, ApiError> {
    let Accounts {
        pool,
        auth,
        hasher,
        rates,
    } = accounts;
    rates.check_ip(Action::Login, ip)?;
    rates.login_allowed(&req.username)?;
    let client = pool.get().await?;
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
    let verified = match &found {
        Some(row) => {
            hasher
                .verify(req.password, row.get("password_hash"))
                .await?
        }
        // The same bcrypt work as a real check: response time must not tell
        // whether the user exists.
        None => {
            hasher.verify_nobody(req.password).await?;
            false
        }
    };
    let Some(row) = found.filter(|_| verified) else {
        rates.login_failed(&req.username);
        return Err(ApiError::InvalidCredentials);
    };
    rates.login_succeeded(&req.username);
    let reply = auth_response(&auth, User::from_row(&row), row.get("token_version"))?;
    Ok(warp::reply::json(&reply))
}

fn auth_response(auth: &Auth, user: User, token_version: i32) -> Result<AuthResponse, ApiError> {
    let issued = auth.issue(user.id, &user.username, token_version)?;
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
