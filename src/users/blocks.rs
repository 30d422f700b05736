//! Blocking: a user may block another. The blocked user cannot put their
//! blocker into a new direct message or add them to a group (403 `blocked`),
//! and neither is shown the other's presence; the blocker does not receive
//! the blocked user's typing. Chats they already share keep working: both
//! still see each other's messages there (see the README).

use super::{USER_COLUMNS, User};
use crate::auth::{self, AuthUser};
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::events::{Live, notify_live};
use crate::http::{Context, Query, authed, id_param, query, respond, validated, with};
use crate::membership::lock_users;
use std::sync::LazyLock;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    list(ctx).or(block(ctx)).unify().or(unblock(ctx)).unify()
}

/// GET /api/v1/users/blocked?limit&offset
fn list(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("users" / "blocked")
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_blocked)
        .map(respond)
}

/// PUT /api/v1/users/:id/block
fn block(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("users")
        .and(id_param())
        .and(warp::path!("block"))
        .and(warp::put())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(block_user)
        .map(respond)
}

/// DELETE /api/v1/users/:id/block
fn unblock(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("users")
        .and(id_param())
        .and(warp::path!("block"))
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(unblock_user)
        .map(respond)
}

async fn block_user(id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    set_block(id, user, pool, true).await
}

async fn unblock_user(id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    set_block(id, user, pool, false).await
}

/// Blocks (or unblocks) user `id` for the caller; either is idempotent.
async fn set_block(
    id: i64,
    user: AuthUser,
    pool: Pool,
    blocked: bool,
) -> Result<impl Reply, ApiError> {
    if id == user.id {
        return Err(ApiError::validation("id", "you cannot block yourself"));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let found = lock_users(&tx, &[user.id, id]).await?;
    if !found.contains(&user.id) {
        return Err(auth::revoked());
    }
    if !found.contains(&id) {
        return Err(ApiError::UserNotFound);
    }
    let sql = if blocked {
        "insert into blocks (blocker_id, blocked_id) values ($1, $2) on conflict do nothing"
    } else {
        "delete from blocks where blocker_id = $1 and blocked_id = $2"
    };
    let changed = tx.execute(sql, &[&user.id, &id]).await?;
    if changed > 0 {
        let signal = Live::Blocked {
            blocker_id: user.id,
            blocked_id: id,
            blocked,
        };
        notify_live(&tx, &signal).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The users the caller blocked, most recently blocked first.
async fn list_blocked(user: AuthUser, q: Query, pool: Pool) -> Result<impl Reply, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {} from blocks b join users u on u.id = b.blocked_id
             where b.blocker_id = $1
             order by b.created_at desc, b.blocked_id
             limit $2 offset $3",
            USER_COLUMNS
                .split(", ")
                .map(|c| format!("u.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let mut errors: Vec<FieldError> = Vec::new();
    let page = q.page(&mut errors);
    validated(errors)?;
    let client = pool.get().await?;
    let rows = client
        .query(SQL.as_str(), &[&user.id, &page.limit, &page.offset])
        .await?;
    let users: Vec<User> = rows.iter().map(User::from_row).collect();
    Ok(warp::reply::json(&users))
}
