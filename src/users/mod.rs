//! Users: accounts ([`accounts`]: register, login, me), listing and search,
//! profiles, password change, account deletion.

mod accounts;
mod blocks;

pub use accounts::AuthResponse;

use crate::auth::{self, AuthUser};
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::events;
use crate::http::{
    Context, Query, authed, id_param, json_body, optional_json_body, query, respond, validated,
    with,
};
use crate::password::Hasher;
use crate::validate::{check_display_name, check_password};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Row};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The columns `User::from_row` reads, for `select`/`returning` lists.
pub const USER_COLUMNS: &str = "id, username, display_name, created_at, last_seen";

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
}

impl User {
    pub fn from_row(row: &Row) -> User {
        User {
            id: row.get("id"),
            username: row.get("username"),
            display_name: row.get("display_name"),
            created_at: row.get("created_at"),
            last_seen: row.get("last_seen"),
        }
    }
}

pub fn routes(
    ctx: &Context,
    hasher: &Arc<Hasher>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let accounts = accounts::Accounts::new(ctx, hasher);
    accounts::register(ctx, &accounts)
        .or(accounts::login(ctx, &accounts))
        .unify()
        .or(accounts::me(ctx))
        .unify()
        .or(list(ctx))
        .unify()
        .or(last_seen(ctx))
        .unify()
        .or(blocks::routes(ctx))
        .unify()
        .or(get(ctx))
        .unify()
        .or(update(ctx, hasher))
        .unify()
        .or(delete(ctx, hasher))
        .unify()
}

/// GET /api/v1/users?limit&offset&q
fn list(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("users")
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_users)
        .map(respond)
}

/// POST /api/v1/users/last-seen
fn last_seen(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("users" / "last-seen")
        .and(warp::post())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(touch_last_seen)
        .map(respond)
}

/// GET /api/v1/users/:id
fn get(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("users")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(get_user)
        .map(respond)
}

/// PUT /api/v1/users/:id
fn update(
    ctx: &Context,
    hasher: &Arc<Hasher>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("users")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::put())
        .and(authed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .and(with(hasher.clone()))
        .then(update_user)
        .map(respond)
}

/// DELETE /api/v1/users/:id
fn delete(
    ctx: &Context,
    hasher: &Arc<Hasher>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("users")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::delete())
        .and(authed(ctx))
        .and(optional_json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .and(with(hasher.clone()))
        .then(delete_user)
        .map(respond)
}

async fn get_user(id: i64, _caller: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let user = fetch_user(&*client, id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(warp::reply::json(&user))
}

pub async fn fetch_user(client: &impl GenericClient, id: i64) -> Result<Option<User>, ApiError> {
    let row = client
        .query_opt(
            &format!("select {USER_COLUMNS} from users where id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(User::from_row))
}

async fn list_users(_caller: AuthUser, q: Query, pool: Pool) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let page = q.page(&mut errors);
    let search = q.get("q").map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 100) {
        errors.push(FieldError::new("q", "must be at most 100 characters"));
    }
    validated(errors)?;
    // A prefix pattern with LIKE's own wildcards escaped.
    let pattern = search.map(|s| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("{}%", escaped.to_lowercase())
    });
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "select {USER_COLUMNS} from users
                 where $1::text is null
                    or lower(username) like $1 escape '\\'
                    or lower(display_name) like $1 escape '\\'
                 order by id
                 limit $2 offset $3"
            ),
            &[&pattern, &page.limit, &page.offset],
        )
        .await?;
    let users: Vec<User> = rows.iter().map(User::from_row).collect();
    Ok(warp::reply::json(&users))
}

async fn touch_last_seen(caller: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("update users set last_seen = now() where id = $1 returning {USER_COLUMNS}"),
            &[&caller.id],
        )
        .await?;
    let user = row
        .as_ref()
        .map(User::from_row)
        .ok_or(ApiError::UserNotFound)?;
    Ok(warp::reply::json(&user))
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct UpdateUserRequest {
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    password: Option<String>,
    current_password: Option<String>,
}

async fn update_user(
    id: i64,
    caller: AuthUser,
    req: UpdateUserRequest,
    pool: Pool,
    hasher: Arc<Hasher>,
) -> Result<impl Reply, ApiError> {
    if id != caller.id {
        return Err(ApiError::NotYourAccount);
    }
    let mut errors = Vec::new();
    let display_name = req
        .display_name
        .map(|d| check_display_name(d.as_deref(), &mut errors));
    if let Some(p) = &req.password {
        check_password("password", p, &mut errors);
        if req.current_password.is_none() {
            errors.push(FieldError::new(
                "current_password",
                "is required to change the password",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let new_hash = match (req.password, req.current_password) {
        (Some(password), Some(current)) => {
            let client = pool.get().await?;
            let hash: String = client
                .query_opt("select password_hash from users where id = $1", &[&id])
                .await?
                .ok_or_else(auth::revoked)?
                .get(0);
            drop(client);
            if !hasher.verify(current, hash).await? {
                return Err(ApiError::validation("current_password", "is incorrect"));
            }
            Some(hasher.hash(password).await?)
        }
        _ => None,
    };

    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // No row: the account was deleted since the token was checked (perhaps
    // waited for here), and is answered as it would be a moment later.
    let row = tx
        .query_opt(
            &format!(
                "update users set
                    display_name = case when $2 then $3 else display_name end,
                    password_hash = coalesce($4, password_hash),
                    token_version = token_version + case when $4 is null then 0 else 1 end
                 where id = $1
                 returning {USER_COLUMNS}, token_version"
            ),
            &[
                &id,
                &display_name.is_some(),
                &display_name.flatten(),
                &new_hash,
            ],
        )
        .await?
        .ok_or_else(auth::revoked)?;
    if new_hash.is_some() {
        // Open sockets holding the old tokens are closed, like the tokens themselves.
        events::notify_live(
            &tx,
            &events::Live::TokensRevoked {
                user_id: id,
                token_version: row.get("token_version"),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(warp::reply::json(&User::from_row(&row)))
}

#[derive(Default, Deserialize)]
struct DeleteUserRequest {
    current_password: Option<String>,
}

/// Deleting an account takes its password, not just a token: a stolen
/// token must not be enough to erase someone.
async fn delete_user(
    id: i64,
    caller: AuthUser,
    req: DeleteUserRequest,
    pool: Pool,
    hasher: Arc<Hasher>,
) -> Result<impl Reply, ApiError> {
    if id != caller.id {
        return Err(ApiError::NotYourAccount);
    }
    let password = req.current_password.ok_or(ApiError::InvalidCredentials)?;
    let hash: String = {
        let client = pool.get().await?;
        client
            .query_opt("select password_hash from users where id = $1", &[&id])
            .await?
            .ok_or(ApiError::UserNotFound)?
            .get(0)
    };
    if !hasher.verify(password, hash).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Lock the account row first so two concurrent deletes cannot interleave.
    let exists = tx
        .query_opt("select 1 from users where id = $1 for update", &[&id])
        .await?;
    if exists.is_none() {
        return Err(ApiError::UserNotFound);
    }
    let mut pending = Vec::new();
    // Every chat of the user is locked, in id order (as every membership
    // change locks its chat), so a concurrent leave or demote in one of
    // them runs before or after this, never halfway: each chat keeps an
    // admin, and the last member out deletes it.
    let chat_ids: Vec<i64> = tx
        .query(
            "select c.id from chats c join chat_members m on m.chat_id = c.id and m.user_id = $1
             order by c.id for update of c",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for chat_id in chat_ids {
        // Each membership ends exactly as if the user had left the chat.
        pending.extend(crate::chats::members::leave_chat(&tx, chat_id, id, id).await?);
    }
    tx.execute("delete from users where id = $1", &[&id])
        .await?;
    events::emit(&tx, &pending).await?;
    events::notify_live(&tx, &events::Live::UserDeleted { user_id: id }).await?;
    tx.commit().await?;
    Ok(warp::http::StatusCode::NO_CONTENT)
}
