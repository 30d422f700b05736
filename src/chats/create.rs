//! Creating a chat: a group with its first members, or the one direct
//! message between two users (returned, not duplicated, when it exists).

use super::{check_name, fetch_chat_detail, members};
use crate::auth::{self, AuthUser};
use crate::config::LimitsConfig;
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::events::{self, EventKind, NewEvent};
use crate::http::{Context, authed_for, json_body, respond, validated, with};
use crate::limits::Action;
use crate::membership::{ensure_not_blocked_by, lock_users};
use serde::Deserialize;
use std::sync::Arc;
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// POST /api/v1/chats
pub fn route(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("chats")
        .and(warp::post())
        .and(authed_for(ctx, Action::CreateChat))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .and(with(ctx.limits.clone()))
        .then(create_chat)
        .map(respond)
}

/// Dedups member ids and drops the caller's own; errors on bad or too many ids.
pub fn check_member_ids(
    ids: &[i64],
    caller: i64,
    limits: &LimitsConfig,
    errors: &mut Vec<FieldError>,
) -> Vec<i64> {
    if ids.len() > limits.ids_per_request {
        errors.push(FieldError::new(
            "member_ids",
            format!("at most {} ids", limits.ids_per_request),
        ));
        return Vec::new();
    }
    if let Some(bad) = ids.iter().find(|&&id| id <= 0) {
        errors.push(FieldError::new(
            "member_ids",
            format!("{bad} is not a valid user id"),
        ));
    }
    let mut out: Vec<i64> = ids.iter().copied().filter(|&id| id != caller).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Fails with a 400 listing those of `ids` (sorted) not among `found`
/// (sorted, see [`lock_users`]): ids that name no user.
pub fn ensure_users_exist(ids: &[i64], found: &[i64]) -> Result<(), ApiError> {
    let unknown: Vec<String> = ids
        .iter()
        .filter(|id| found.binary_search(id).is_err())
        .map(i64::to_string)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(
        "member_ids",
        format!("unknown user ids: {}", unknown.join(", ")),
    ))
}

/// Inserts a chat; returns its id and whether it is new. A direct message
/// that exists already is returned instead, its row locked as membership
/// changes lock it (`do update ... where false` locks the row the insert
/// conflicts with and changes nothing): a deletion of it under way finishes
/// first, and the DM is then created anew; none can start before whoever
/// had left it is added back.
async fn insert_chat(
    client: &impl GenericClient,
    name: Option<&str>,
    is_group: bool,
    creator_id: i64,
    dm_key: Option<&str>,
) -> Result<(i64, bool), ApiError> {
    let created = client
        .query_opt(
            "insert into chats (name, is_group, creator_id, dm_key) values ($1, $2, $3, $4)
             on conflict (dm_key) do update set dm_key = excluded.dm_key where false
             returning id",
            &[&name, &is_group, &creator_id, &dm_key],
        )
        .await?;
    if let Some(row) = created {
        return Ok((row.get(0), true));
    }
    let row = client
        .query_one("select id from chats where dm_key = $1", &[&dm_key])
        .await?;
    Ok((row.get(0), false))
}

#[derive(Deserialize)]
struct CreateChatRequest {
    name: Option<String>,
    #[serde(default)]
    is_group: bool,
    #[serde(default, deserialize_with = "crate::validate::integers")]
    member_ids: Vec<i64>,
}

async fn create_chat(
    user: AuthUser,
    req: CreateChatRequest,
    pool: Pool,
    limits: Arc<LimitsConfig>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let name = check_name(req.name.as_deref(), req.is_group, &mut errors);
    let others = check_member_ids(&req.member_ids, user.id, &limits, &mut errors);
    if !req.is_group && errors.is_empty() && others.len() != 1 {
        errors.push(FieldError::new(
            "member_ids",
            "a direct message needs exactly one other user",
        ));
    }
    validated(errors)?;
    if others.len() + 1 > limits.group_members {
        return Err(ApiError::ChatFull);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut everyone = others.clone();
    everyone.push(user.id);
    let found = lock_users(&tx, &everyone).await?;
    if found.binary_search(&user.id).is_err() {
        return Err(auth::revoked());
    }
    ensure_users_exist(&others, &found)?;
    ensure_not_blocked_by(&tx, user.id, &others).await?;
    let dm_key = (!req.is_group).then(|| {
        let (a, b) = (user.id.min(others[0]), user.id.max(others[0]));
        format!("{a}:{b}")
    });
    let (chat_id, created) = insert_chat(
        &tx,
        name.as_deref(),
        req.is_group,
        user.id,
        dm_key.as_deref(),
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // For an existing DM this re-adds whichever of the two had left it.
    let mut all = vec![user.id];
    all.extend(&others);
    let added: Vec<i64> = tx
        .query(
            "insert into chat_members (chat_id, user_id, is_admin)
             select $1, u, u = $2 from unnest($3::bigint[]) as u
             on conflict do nothing
             returning user_id",
            &[&chat_id, &user.id, &all],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let chat = fetch_chat_detail(&tx, chat_id, user.id)
        .await?
        .ok_or_else(|| ApiError::internal("the chat just created is not visible to its creator"))?;
    if !added.is_empty() {
        let pending = if status == StatusCode::CREATED {
            vec![
                NewEvent::new(chat_id, EventKind::ChatCreated, chat.joined_view())
                    .to_users(added.clone()),
            ]
        } else {
            let mut pending = reopened_events(&tx, chat_id, &added).await?;
            pending.extend(members::member_added_events(&tx, chat_id, &added).await?);
            pending
        };
        events::emit(&tx, &pending).await?;
    }
    tx.commit().await?;
    Ok(warp::reply::with_status(warp::reply::json(&chat), status).into_response())
}

/// The `chat_created` of each user brought back into an existing DM: the chat
/// as they see it, unread messages included, not as the caller does.
async fn reopened_events(
    client: &impl GenericClient,
    chat_id: i64,
    added: &[i64],
) -> Result<Vec<NewEvent>, ApiError> {
    let mut pending = Vec::with_capacity(added.len());
    for &user_id in added {
        let view = fetch_chat_detail(client, chat_id, user_id)
            .await?
            .ok_or_else(|| ApiError::internal("a member just added cannot see the chat"))?;
        pending.push(
            NewEvent::new(chat_id, EventKind::ChatCreated, view.without_presence())
                .to_users(vec![user_id]),
        );
    }
    Ok(pending)
}
