//! Membership: adding members, removing them (or leaving), promoting and
//! demoting admins. Every change locks the chat row first (`lock_role`), so the
//! "at least one admin" and "delete when empty" rules hold under concurrency.

use super::{
    MEMBERS_LISTED, Member, check_member_ids, delete_chat_event, ensure_users_exist,
    fetch_chat_detail, fetch_members_by_id, lock_role,
};
use crate::auth::AuthUser;
use crate::config::LimitsConfig;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::{self, EventKind, NewEvent};
use crate::http::{
    Context, Query, authed, authed_for, id_param, json_body, query, respond, validated, with,
};
use crate::limits::Action;
use crate::membership::{ensure_member, ensure_not_blocked_by, is_member, lock_users};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::LazyLock;
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    list(ctx)
        .or(add(ctx))
        .unify()
        .or(remove(ctx))
        .unify()
        .or(set_admin(ctx))
        .unify()
}

/// GET /api/v1/chats/:id/members?limit&offset
fn list(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("members"))
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_members)
        .map(respond)
}

/// A page of the chat's members, by join time: all of them, where chat
/// objects list the first [`MEMBERS_LISTED`].
async fn list_members(
    chat_id: i64,
    user: AuthUser,
    q: Query,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select m.user_id, u.username, u.display_name, m.is_admin, m.joined_at,
                    {} as online
             from chat_members m join users u on u.id = m.user_id
             where m.chat_id = $1 and {}
             order by m.joined_at, m.user_id
             limit $3 offset $4",
            crate::presence::online("m.user_id", "$2"),
            is_member("$1", "$2")
        )
    });
    let mut errors = Vec::new();
    let page = q.page(&mut errors);
    validated(errors)?;
    let client = pool.get().await?;
    let rows = client
        .query(
            SQL.as_str(),
            &[&chat_id, &user.id, &page.limit, &page.offset],
        )
        .await?;
    if rows.is_empty() {
        ensure_member(&*client, chat_id, user.id).await?;
    }
    let members: Vec<Member> = rows.iter().map(Member::from_row).collect();
    Ok(warp::reply::json(&members))
}

/// POST /api/v1/chats/:id/members
fn add(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("members"))
        .and(warp::post())
        .and(authed_for(ctx, Action::AddMembers))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .and(with(ctx.limits.clone()))
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

/// Tells the chat (and the new members, who subscribe on it) who joined:
/// one `member_added` per [`MEMBERS_LISTED`] of them, so no frame grows
/// with the size of the add.
pub async fn member_added_events(
    client: &impl GenericClient,
    chat_id: i64,
    added: &[i64],
) -> Result<Vec<NewEvent>, ApiError> {
    let members = fetch_members_by_id(client, chat_id, added).await?;
    Ok(members
        .chunks(MEMBERS_LISTED as usize)
        .map(|chunk| {
            NewEvent::new(
                chat_id,
                EventKind::MemberAdded,
                serde_json::json!({ "chat_id": chat_id, "members": chunk }),
            )
            .to_users(chunk.iter().map(|m| m.user_id).collect())
        })
        .collect())
}

/// Names shown in a system note: the first few, then how many more.
fn named(mut names: Vec<String>) -> String {
    const SHOWN: usize = 10;
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let mut text = names.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} others"));
    }
    text
}

#[derive(Deserialize)]
struct AddMembersRequest {
    #[serde(default, deserialize_with = "crate::validate::integers")]
    member_ids: Vec<i64>,
}

async fn add_members(
    chat_id: i64,
    user: AuthUser,
    req: AddMembersRequest,
    pool: Pool,
    limits: Arc<LimitsConfig>,
) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let ids = check_member_ids(&req.member_ids, user.id, &limits, &mut errors);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // The users are locked before the chat, as account deletion locks them:
    // taken after it, a deletion of the group's creator (which clears the
    // group's creator_id) and this add could wait for each other. Unknown
    // ids are still reported after the caller's role.
    let found = lock_users(&tx, &ids).await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    if !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    if !role.is_group {
        return Err(ApiError::NotAGroup);
    }
    if ids.is_empty() && errors.is_empty() {
        errors.push(crate::error::FieldError::new(
            "member_ids",
            "must name at least one other user",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    ensure_users_exist(&ids, &found)?;
    ensure_not_blocked_by(&tx, user.id, &ids).await?;
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
    // Checked after the insert, under the chat's lock: the rollback undoes it.
    if chat.member_count > limits.group_members as i64 {
        return Err(ApiError::ChatFull);
    }
    if !added.is_empty() {
        let added_events = member_added_events(&tx, chat_id, &added).await?;
        let names = added_events
            .iter()
            .flat_map(|e| e.payload["members"].as_array().into_iter().flatten())
            .filter_map(|m| m["username"].as_str().map(str::to_string))
            .collect();
        let note = format!("{} added {}", user.username, named(names));
        let mut pending = vec![
            NewEvent::new(chat_id, EventKind::ChatCreated, chat.joined_view())
                .to_users(added.clone()),
        ];
        pending.extend(added_events);
        pending.push(NewEvent::system(chat_id, note));
        events::emit(&tx, &pending).await?;
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
                    (select u.username from promoted p join users u on u.id = p.user_id) as promoted,
                    (select user_id from promoted) as promoted_id",
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
    if let (Some(promoted), Some(promoted_id)) = (
        row.get::<_, Option<String>>(1),
        row.get::<_, Option<i64>>(2),
    ) {
        // The new admin shows in the chat's members, as after a promotion.
        let chat = fetch_chat_detail(client, chat_id, promoted_id)
            .await?
            .ok_or(ApiError::ChatNotFound)?;
        pending.push(NewEvent::new(
            chat_id,
            EventKind::ChatUpdated,
            chat.shared_view(),
        ));
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
                NewEvent::new(chat_id, EventKind::ChatUpdated, chat.shared_view()),
                NewEvent::system(chat_id, note),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(warp::reply::json(&chat))
}
