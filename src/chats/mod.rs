//! Chats: groups and direct messages, listing by activity, rename and delete.
//! Membership changes live in [`members`], read markers in [`read`], who is
//! online in [`presence`].

mod counts;
mod create;
pub mod members;
pub mod pins;
mod presence;
pub mod read;
mod role;

pub use counts::{mention_count_sql, unread_count_sql};
pub use create::{check_member_ids, ensure_users_exist};
pub use role::{Role, lock_role};

use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::events::{self, EventKind, NewEvent};
use crate::http::{Context, Query, authed, id_param, json_body, query, respond, validated, with};
use crate::membership::join_member;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Row};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub const CHAT_NAME_MAX_CHARS: usize = 100;

/// The most members a chat object lists (REST bodies and events alike);
/// `member_count` says how many there are, `GET /chats/:id/members` pages
/// through them. A chat of the largest allowed size must still fit in one
/// frame far below any connection's queue bound.
pub const MEMBERS_LISTED: i64 = 100;

/// Where `unread_count` stops counting: a chat list must not count
/// millions of messages per chat.
pub const UNREAD_COUNT_MAX: i64 = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct Chat {
    pub id: i64,
    pub name: Option<String>,
    pub is_group: bool,
    pub creator_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub last_read_message_id: Option<i64>,
    pub unread_count: i64,
    pub mention_count: i64,
    pub member_count: i64,
    /// The first [`MEMBERS_LISTED`] members, by join time, where listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: i64,
    pub username: String,
    pub display_name: Option<String>,
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
    /// Whether the member is online as the caller sees them
    /// (`crate::presence::online`): in REST bodies, never in events, which
    /// every member shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

/// Chat columns as seen by a member, for `Chat::from_row`; `c` is chats, `m`
/// the membership.
static CHAT_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "c.id, c.name, c.is_group, c.creator_id, c.created_at, c.updated_at,
         m.last_read_message_id,
         {} as unread_count,
         {} as mention_count,
         c.member_count",
        unread_count_sql("c.id", "m.user_id", "m.last_read_message_id"),
        mention_count_sql("c.id", "m.user_id", "m.last_read_message_id"),
    )
});

impl Chat {
    /// The payload of a `chat_updated` event: the chat without the fields
    /// that are one member's own (their read marker, unread and mention
    /// counts), which every member has different and none may see of
    /// another.
    pub fn shared_view(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self.without_presence()).unwrap_or_default();
        if let Some(fields) = value.as_object_mut() {
            fields.remove("last_read_message_id");
            fields.remove("unread_count");
            fields.remove("mention_count");
        }
        value
    }

    /// The payload of the `chat_created` sent to users added to a new chat
    /// or to a group: no read marker yet and nothing counted as unread (the
    /// contract's rule for them), never the fields of whoever added them.
    pub fn joined_view(&self) -> Chat {
        Chat {
            last_read_message_id: None,
            unread_count: 0,
            mention_count: 0,
            ..self.without_presence()
        }
    }

    /// The chat without its members' `online`, which is each viewer's own
    /// (blocks hide it): what an event, shared by every member, carries.
    pub fn without_presence(&self) -> Chat {
        let mut chat = self.clone();
        for member in chat.members.iter_mut().flatten() {
            member.online = None;
        }
        chat
    }

    fn from_row(row: &Row) -> Chat {
        Chat {
            id: row.get("id"),
            name: row.get("name"),
            is_group: row.get("is_group"),
            creator_id: row.get("creator_id"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            last_read_message_id: row.get("last_read_message_id"),
            unread_count: row.get("unread_count"),
            mention_count: row.get("mention_count"),
            member_count: row.get("member_count"),
            members: None,
        }
    }
}

/// The chat as member `user_id` sees it, with members (and their presence as
/// `user_id` sees it); `None` if they are not a member.
pub async fn fetch_chat_detail(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
) -> Result<Option<Chat>, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {} from chats c {} where c.id = $1",
            CHAT_COLUMNS.as_str(),
            join_member("m", "c.id", "$2")
        )
    });
    let row = client
        .query_opt(SQL.as_str(), &[&chat_id, &user_id])
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut chat = Chat::from_row(&row);
    chat.members = Some(
        fetch_members(client, &[chat_id], user_id)
            .await?
            .remove(&chat_id)
            .unwrap_or_default(),
    );
    Ok(Some(chat))
}

/// The first [`MEMBERS_LISTED`] members of several chats, by join time, with
/// their presence as `viewer` sees it, in one query (no N+1 on chat lists).
pub async fn fetch_members(
    client: &impl GenericClient,
    chat_ids: &[i64],
    viewer: i64,
) -> Result<HashMap<i64, Vec<Member>>, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select c.id as chat_id, x.*
             from unnest($1::bigint[]) c(id), lateral (
                 select m.user_id, u.username, u.display_name, m.is_admin, m.joined_at,
                        {} as online
                 from chat_members m join users u on u.id = m.user_id
                 where m.chat_id = c.id
                 order by m.joined_at, m.user_id
                 limit $2) x
             order by c.id, x.joined_at, x.user_id",
            crate::presence::online("m.user_id", "$3")
        )
    });
    let rows = client
        .query(SQL.as_str(), &[&chat_ids, &MEMBERS_LISTED, &viewer])
        .await?;
    let mut out: HashMap<i64, Vec<Member>> = HashMap::new();
    for r in rows {
        out.entry(r.get("chat_id"))
            .or_default()
            .push(Member::from_row(&r));
    }
    Ok(out)
}

impl Member {
    /// A member read with `online` (for a viewer) or without (for an event).
    pub(crate) fn from_row(r: &Row) -> Member {
        Member {
            user_id: r.get("user_id"),
            username: r.get("username"),
            display_name: r.get("display_name"),
            is_admin: r.get("is_admin"),
            joined_at: r.get("joined_at"),
            online: r.try_get("online").ok(),
        }
    }
}

/// Members `user_ids` of chat `chat_id`, by join time.
pub async fn fetch_members_by_id(
    client: &impl GenericClient,
    chat_id: i64,
    user_ids: &[i64],
) -> Result<Vec<Member>, ApiError> {
    let rows = client
        .query(
            "select m.user_id, u.username, u.display_name, m.is_admin, m.joined_at
             from chat_members m join users u on u.id = m.user_id
             where m.chat_id = $1 and m.user_id = any($2)
             order by m.joined_at, m.user_id",
            &[&chat_id, &user_ids],
        )
        .await?;
    Ok(rows.iter().map(Member::from_row).collect())
}

/// Trims a chat name; groups need 1-100 characters, DMs may have none.
fn check_name(raw: Option<&str>, required: bool, errors: &mut Vec<FieldError>) -> Option<String> {
    let name = raw.map(str::trim).filter(|n| !n.is_empty());
    match name {
        None if required => errors.push(FieldError::new("name", "is required for a group chat")),
        Some(n) if n.chars().count() > CHAT_NAME_MAX_CHARS => errors.push(FieldError::new(
            "name",
            format!("must be 1 to {CHAT_NAME_MAX_CHARS} characters"),
        )),
        _ => {}
    }
    name.map(str::to_string)
}

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    create::route(ctx)
        .or(list(ctx))
        .unify()
        .or(get(ctx))
        .unify()
        .or(update(ctx))
        .unify()
        .or(delete(ctx))
        .unify()
        .or(members::routes(ctx))
        .unify()
        .or(read::routes(ctx))
        .unify()
        .or(presence::route(ctx))
        .unify()
        .or(pins::routes(ctx))
        .unify()
}

/// GET /api/v1/chats?limit&offset&with_members
fn list(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("chats")
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_chats)
        .map(respond)
}

/// GET /api/v1/chats/:id
fn get(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(get_chat)
        .map(respond)
}

/// PUT /api/v1/chats/:id
fn update(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::put())
        .and(authed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .then(rename_chat)
        .map(respond)
}

/// DELETE /api/v1/chats/:id
fn delete(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(delete_chat)
        .map(respond)
}

async fn get_chat(chat_id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let chat = fetch_chat_detail(&*client, chat_id, user.id)
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    Ok(warp::reply::json(&chat))
}

async fn list_chats(user: AuthUser, q: Query, pool: Pool) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let page = q.page(&mut errors);
    // Members by default, as the seed listed chats "with members".
    let with_members = match q.get("with_members") {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(_) => {
            errors.push(FieldError::new("with_members", "must be true or false"));
            false
        }
    };
    validated(errors)?;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {} from chats c {}
             order by c.last_activity_at desc, c.id desc
             limit $2 offset $3",
            CHAT_COLUMNS.as_str(),
            join_member("m", "c.id", "$1")
        )
    });
    let client = pool.get().await?;
    let rows = client
        .query(SQL.as_str(), &[&user.id, &page.limit, &page.offset])
        .await?;
    let mut chats: Vec<Chat> = rows.iter().map(Chat::from_row).collect();
    if with_members {
        let ids: Vec<i64> = chats.iter().map(|c| c.id).collect();
        let mut members = fetch_members(&*client, &ids, user.id).await?;
        for chat in &mut chats {
            chat.members = Some(members.remove(&chat.id).unwrap_or_default());
        }
    }
    Ok(warp::reply::json(&chats))
}

#[derive(Deserialize)]
struct RenameChatRequest {
    name: Option<String>,
}

async fn rename_chat(
    chat_id: i64,
    user: AuthUser,
    req: RenameChatRequest,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    if !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    let mut errors = Vec::new();
    let name = check_name(req.name.as_deref(), role.is_group, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    tx.execute(
        "update chats set name = $2 where id = $1",
        &[&chat_id, &name],
    )
    .await?;
    let chat = fetch_chat_detail(&tx, chat_id, user.id)
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    let note = match &name {
        Some(n) => format!("{} renamed the chat to \"{n}\"", user.username),
        None => format!("{} removed the chat's name", user.username),
    };
    events::emit(
        &tx,
        &[
            NewEvent::new(chat_id, EventKind::ChatUpdated, chat.shared_view()),
            NewEvent::system(chat_id, note),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(warp::reply::json(&chat))
}

async fn delete_chat(chat_id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let role = lock_role(&tx, chat_id, user.id).await?;
    let allowed = match role.creator_id {
        Some(creator) => creator == user.id,
        // The creator's account is gone: any admin may delete.
        None => role.is_admin,
    };
    if !allowed {
        return Err(ApiError::NotChatCreator);
    }
    let pending = vec![delete_chat_event(&tx, chat_id).await?];
    events::emit(&tx, &pending).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a chat (messages and memberships cascade) and returns the event that
/// tells its former members.
pub async fn delete_chat_event(
    client: &impl GenericClient,
    chat_id: i64,
) -> Result<NewEvent, ApiError> {
    let members: Vec<i64> = client
        .query(
            "select user_id from chat_members where chat_id = $1 order by user_id",
            &[&chat_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .execute("delete from chats where id = $1", &[&chat_id])
        .await?;
    Ok(NewEvent::new(
        chat_id,
        EventKind::ChatDeleted,
        serde_json::json!({ "chat_id": chat_id }),
    )
    .to_users(members))
}
