//! Membership: adding members, removing them (or leaving), promoting and
//! demoting admins. Every change locks the chat row first (`lock_role`), so the
//! "at least one admin" and "delete when empty" rules hold under concurrency.

use super::{
    Chat, check_member_ids, delete_chat_event, ensure_users_exist, fetch_chat_detail, lock_role,
};
use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::{self, EventKind, NewEvent};
use crate::http::{Context, authed, id_param, json_body, respond, with};
use serde::Deserialize;
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    add(ctx).or(remove(ctx)).unify().or(set_admin(ctx)).unify()
}

/// POST /api/v1/chats/:id/members
fn add(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("members"))
        .and(warp::post())
        .and(authed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .then(add_members)
        .map(respond)
}

/// DELETE /api/v1/chats/:id/members/:memberId
fn remove(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path("members"))
        .and(id_param())
        .and(warp::path::end())
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(remove_member)
        .map(respond)
}

/// PUT /api/v1/chats/:id/members/:memberId
fn set_admin(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path("members"))
        .and(id_param())
        .and(warp::path::end())
        .and(warp::put())
        .and(authed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .then(update_member)
        .map(respond)
}

/// Tells the chat (and the new members, who subscribe on it) who joined.
pub fn member_added_event(chat: &Chat, added: &[i64]) -> NewEvent {
    let members: Vec<_> = chat
        .members
        .iter()
        .flatten()
        .filter(|m| added.contains(&m.user_id))
        .collect();
    NewEvent::new(
        chat.id,
        EventKind::MemberAdded,
        serde_json::json!({ "chat_id": chat.id, "members": members }),
    )
    .to_users(added.to_vec())
}

#[derive(Deserialize)]
struct AddMembersRequest {
    #[serde(default)]
    member_ids: Vec<i64>,
}

async fn add_members(
    chat_id: i64,
    user: AuthUser,
    req: AddMembersRequest,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    if !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    if !role.is_group {
        return Err(ApiError::NotAGroup);
    }
    let mut errors = Vec::new();
    let ids = check_member_ids(&req.member_ids, user.id, &mut errors);
    if ids.is_empty() && errors.is_empty() {
        errors.push(crate::error::FieldError::new(
            "member_ids",
            "must name at least one other user",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ensure_users_exist(&tx, &ids).await?;
    let added: Vec<i64> = tx
        .query(
            "insert into chat_members (chat_id, user_id) select $1, u from unnest($2::bigint[]) as u
             on conflict do nothing returning user_id",
            &[&chat_id, &ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let chat = fetch_chat_detail(&tx, chat_id, user.id)
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    if !added.is_empty() {
        let names: Vec<&str> = chat
            .members
            .iter()
            .flatten()
            .filter(|m| added.contains(&m.user_id))
            .map(|m| m.username.as_str())
            .collect();
        let note = format!("{} added {}", user.username, names.join(", "));
        let mut new_member_view = chat.clone();
        new_member_view.last_read_message_id = None;
        new_member_view.unread_count = 0;
        events::emit(
            &tx,
            &[
                NewEvent::new(chat_id, EventKind::ChatCreated, &new_member_view)
                    .to_users(added.clone()),
                member_added_event(&chat, &added),
                NewEvent::system(chat_id, note),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(warp::reply::json(&chat))
}

async fn remove_member(
    chat_id: i64,
    member_id: i64,
    user: AuthUser,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    if member_id != user.id && !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    let pending = leave_chat(&tx, chat_id, member_id, user.id).await?;
    if pending.is_empty() {
        return Err(ApiError::MemberNotFound);
    }
    events::emit(&tx, &pending).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends `user_id`'s membership (removed by `actor_id`, or leaving when equal):
/// promotes the longest-standing member when the last admin goes, deletes the
/// chat when nobody is left. Returns the events to emit; empty when `user_id`
/// was not a member. The caller must hold the chat row lock or be deleting the user.
pub async fn leave_chat(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
    actor_id: i64,
) -> Result<Vec<NewEvent>, ApiError> {
    let row = client
        .query_opt(
            "with gone as (delete from chat_members where chat_id = $1 and user_id = $2 returning is_admin)
             select gone.is_admin,
                    (select username from users where id = $2) as username,
                    (select username from users where id = $3) as actor
             from gone",
            &[&chat_id, &user_id, &actor_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    let was_admin: bool = row.get(0);
    let username: String = row.get::<_, Option<String>>(1).unwrap_or_default();
    let actor: String = row.get::<_, Option<String>>(2).unwrap_or_default();

    let removed = NewEvent::new(
        chat_id,
        EventKind::MemberRemoved,
        serde_json::json!({ "chat_id": chat_id, "user_id": user_id, "removed_by": actor_id }),
    )
    .to_users(vec![user_id]);
    let note = if actor_id == user_id {
        format!("{username} left the chat")
    } else {
        format!("{actor} removed {username}")
    };
    let mut pending = vec![removed, NewEvent::system(chat_id, note)];

    // Promote the longest-standing member if no admin is left; count who remains.
    let row = client
        .query_one(
            "with promoted as (
                 update chat_members set is_admin = true
                 where $2 and chat_id = $1
                   and not exists (select 1 from chat_members where chat_id = $1 and is_admin)
                   and user_id = (select user_id from chat_members where chat_id = $1
                                  order by joined_at, user_id limit 1)
                 returning user_id
             )
             select (select count(*) from chat_members where chat_id = $1) as remaining,
                    (select u.username from promoted p join users u on u.id = p.user_id) as promoted",
            &[&chat_id, &was_admin],
        )
        .await?;
    let remaining: i64 = row.get(0);
    if remaining == 0 {
        let mut deleted = delete_chat_event(client, chat_id).await?;
        deleted.user_ids.push(user_id);
        pending.push(deleted);
        return Ok(pending);
    }
    if let Some(promoted) = row.get::<_, Option<String>>(1) {
        pending.push(NewEvent::system(
            chat_id,
            format!("{promoted} is now an admin"),
        ));
    }
    Ok(pending)
}

#[derive(Deserialize)]
struct UpdateMemberRequest {
    is_admin: Option<bool>,
}

async fn update_member(
    chat_id: i64,
    member_id: i64,
    user: AuthUser,
    req: UpdateMemberRequest,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let is_admin = req
        .is_admin
        .ok_or_else(|| ApiError::validation("is_admin", "is required (true or false)"))?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    if !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    let row = tx
        .query_opt(
            "with target as (
                 select user_id, is_admin from chat_members where chat_id = $1 and user_id = $2
             ), changed as (
                 update chat_members m set is_admin = $3
                 from target t
                 where m.chat_id = $1 and m.user_id = t.user_id and t.is_admin <> $3
                   and ($3 or exists (select 1 from chat_members o
                                      where o.chat_id = $1 and o.is_admin and o.user_id <> $2))
                 returning m.user_id
             )
             select t.is_admin, exists(select 1 from changed),
                    (select username from users where id = $2)
             from target t",
            &[&chat_id, &member_id, &is_admin],
        )
        .await?
        .ok_or(ApiError::MemberNotFound)?;
    let (was_admin, changed): (bool, bool) = (row.get(0), row.get(1));
    if !changed && was_admin != is_admin {
        return Err(ApiError::LastAdmin);
    }
    let chat = fetch_chat_detail(&tx, chat_id, user.id)
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    if changed {
        let name: String = row.get(2);
        let note = if is_admin {
            format!("{} made {name} an admin", user.username)
        } else {
            format!("{} removed {name} as admin", user.username)
        };
        events::emit(
            &tx,
            &[
                NewEvent::new(chat_id, EventKind::ChatUpdated, &chat),
                NewEvent::system(chat_id, note),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(warp::reply::json(&chat))
}
