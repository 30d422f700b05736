//! Messages: send (idempotent by client_id), fetch, page through, edit, delete.

use crate::auth::AuthUser;
use crate::error::{ApiError, FieldError};
use crate::events::{self, EventKind, NewEvent};
use crate::http::{
    Page, State, auth, id_param, int_param, json_body, query_map, respond, with_state,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::LazyLock;
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Row};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

mod send;

pub use send::{
    CLIENT_ID_MAX_CHARS, PendingSend, SEND_BATCH_SQL, SEND_SQL, SendQueue, SendRequest, Sent,
    pipelined_statements, queue_message, send_message,
};

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub chat_id: i64,
    pub sender_id: Option<i64>,
    pub content: String,
    pub is_edited: bool,
    pub client_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub sender: Option<Sender>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sender {
    pub id: i64,
    pub username: String,
    pub display_name: Option<String>,
}

/// Message columns for `Message::from_row`; `m` is messages, `u` the sender (left join).
const MESSAGE_COLUMNS: &str = "m.id, m.chat_id, m.sender_id, m.content, m.is_edited, m.client_id,
    m.created_at, m.updated_at, u.username, u.display_name";

/// SQL for timestamp `col` as the RFC 3339 text the REST bodies carry
/// (`time`'s format: UTC as `Z`, fraction without trailing zeros). The colons
/// are quoted so pgbench (the benchmark's ceiling) does not read `:MI` as a variable.
pub fn rfc3339_sql(col: &str) -> String {
    format!(
        "(to_char({col} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS')
          || coalesce('.' || nullif(rtrim(to_char({col} at time zone 'UTC', 'US'), '0'), ''), '')
          || 'Z')"
    )
}

impl Message {
    fn from_row(row: &Row) -> Message {
        let sender_id: Option<i64> = row.get("sender_id");
        let username: Option<String> = row.get("username");
        Message {
            id: row.get("id"),
            chat_id: row.get("chat_id"),
            sender_id,
            content: row.get("content"),
            is_edited: row.get("is_edited"),
            client_id: row.get("client_id"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            sender: sender_id.zip(username).map(|(id, username)| Sender {
                id,
                username,
                display_name: row.get("display_name"),
            }),
        }
    }

    /// The WebSocket payload: the seed's shape plus what clients need to reconcile.
    pub fn event_payload(&self) -> serde_json::Value {
        let ts = |t: &OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        serde_json::json!({
            "message_id": self.id,
            "chat_id": self.chat_id,
            "content": self.content,
            "sender_id": self.sender_id,
            "username": self.sender.as_ref().map(|s| &s.username),
            "display_name": self.sender.as_ref().and_then(|s| s.display_name.as_ref()),
            "timestamp": ts(&self.created_at),
            "client_id": self.client_id,
            "created_at": ts(&self.created_at),
            "updated_at": ts(&self.updated_at),
            "is_edited": self.is_edited,
        })
    }
}

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    send(state.clone())
        .or(history(state.clone()))
        .unify()
        .or(get(state.clone()))
        .unify()
        .or(edit(state.clone()))
        .unify()
        .or(delete(state))
        .unify()
}

/// POST /api/v1/messages
fn send(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.config.limits.body_bytes;
    warp::path!("messages")
        .and(warp::post())
        .and(auth(state.clone()))
        .and(with_state(state))
        .and(json_body(limit))
        .then(
            |user: AuthUser, state: State, req: SendRequest| async move {
                let result = send_message(&state, user.id, req).await.map(|sent| {
                    let status = if sent.duplicate {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    };
                    warp::reply::with_status(warp::reply::json(&sent.message), status)
                });
                respond(result)
            },
        )
}

/// GET /api/v1/messages/chat/:chatId?limit&before_id&after_id&offset
fn history(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("messages" / "chat" / ..)
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone()))
        .and(with_state(state))
        .and(query_map())
        .then(|chat_id, user, state, q| async move {
            respond(fetch_history(state, user, chat_id, q).await)
        })
}

/// GET /api/v1/messages/:id
fn get(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone()))
        .and(with_state(state))
        .then(|id, user: AuthUser, state: State| async move {
            let result = async {
                let client = state.pool.get().await?;
                fetch_visible(&*client, id, user.id)
                    .await?
                    .ok_or(ApiError::NotFound("message"))
            };
            respond(result.await.map(|m| warp::reply::json(&m)))
        })
}

/// PUT /api/v1/messages/:id
fn edit(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.config.limits.body_bytes;
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::put())
        .and(auth(state.clone()))
        .and(with_state(state))
        .and(json_body(limit))
        .then(|id, user, state, body| async move { respond(edit_message(state, user, id, body).await) })
}

/// DELETE /api/v1/messages/:id
fn delete(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::delete())
        .and(auth(state.clone()))
        .and(with_state(state))
        .then(|id, user, state| async move { respond(delete_message(state, user, id).await) })
}

/// Trims content and checks its length in characters.
fn check_content(raw: &str, max_chars: usize, errors: &mut Vec<FieldError>) -> String {
    let content = raw.trim();
    let n = content.chars().count();
    if n == 0 || n > max_chars {
        errors.push(FieldError::new(
            "content",
            format!("must be 1 to {max_chars} characters after trimming"),
        ));
    }
    content.to_string()
}

/// A message as seen by `user_id`: `None` unless they are a member of its chat.
pub async fn fetch_visible(
    client: &impl GenericClient,
    id: i64,
    user_id: i64,
) -> Result<Option<Message>, ApiError> {
    let row = client
        .query_opt(
            &format!(
                "select {MESSAGE_COLUMNS} from messages m
                 join chat_members c on c.chat_id = m.chat_id and c.user_id = $2
                 left join users u on u.id = m.sender_id
                 where m.id = $1"
            ),
            &[&id, &user_id],
        )
        .await?;
    Ok(row.as_ref().map(Message::from_row))
}

async fn fetch_history(
    state: State,
    user: AuthUser,
    chat_id: i64,
    q: HashMap<String, String>,
) -> Result<impl Reply, ApiError> {
    let page = Page::from_query(&q);
    let mut errors = match &page {
        Err(ApiError::Validation(e)) => e.clone(),
        _ => Vec::new(),
    };
    let before = int_param(&q, "before_id", 1, i64::MAX, &mut errors);
    let after = int_param(&q, "after_id", 1, i64::MAX, &mut errors);
    if before.is_some() && after.is_some() {
        errors.push(FieldError::new(
            "after_id",
            "cannot be combined with before_id",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let page = page?;
    let client = state.pool.get().await?;
    let rows = client
        .query(
            history_sql(after.is_some()),
            &[
                &chat_id,
                &user.id,
                &before,
                &after,
                &page.limit,
                &page.offset,
            ],
        )
        .await?;
    if rows.is_empty() {
        let member = client
            .query_opt(
                "select 1 from chat_members where chat_id = $1 and user_id = $2",
                &[&chat_id, &user.id],
            )
            .await?;
        if member.is_none() {
            return Err(ApiError::NotFound("chat"));
        }
    }
    let messages: Vec<Message> = rows.iter().map(Message::from_row).collect();
    Ok(warp::reply::json(&messages))
}

/// A page of chat `$1` for member `$2`: before id `$3` or after id `$4`
/// (either may be null), `$5` messages from offset `$6`, newest first.
/// Membership is part of the query; after_id pages are read oldest-first and
/// flipped. A plain `id` ordering (not an expression) lets the (chat_id, id)
/// index serve the page without reading and sorting the chat's whole history.
/// The page is cut before senders are joined: a chat's ids are bunched in
/// time, which PostgreSQL's estimates ignore, so for a small chat it expected
/// fewer rows below a cursor than a page holds, hash-joined them all to
/// `users` and sorted them (every older message of the chat read per page).
pub fn history_sql(oldest_first: bool) -> &'static str {
    static SQL: LazyLock<[String; 2]> = LazyLock::new(|| {
        ["id desc", "id"].map(|order| {
            format!(
                "select {MESSAGE_COLUMNS} from (
                     select * from messages
                     where chat_id = $1
                       and exists (select 1 from chat_members c where c.chat_id = $1 and c.user_id = $2)
                       and ($3::bigint is null or id < $3)
                       and ($4::bigint is null or id > $4)
                     order by {order}
                     limit $5 offset $6
                 ) m
                 left join users u on u.id = m.sender_id
                 order by m.id desc"
            )
        })
    });
    &SQL[oldest_first as usize]
}

#[derive(Debug, Deserialize)]
pub struct EditRequest {
    #[serde(default)]
    pub content: String,
}

/// The caller's relation to a message, with the message row locked.
struct Access {
    chat_id: i64,
    is_sender: bool,
    is_chat_admin: bool,
}

async fn lock_access(
    client: &impl GenericClient,
    id: i64,
    user_id: i64,
) -> Result<Access, ApiError> {
    let row = client
        .query_opt(
            "select m.chat_id, m.sender_id is not distinct from $2, c.is_admin
             from messages m join chat_members c on c.chat_id = m.chat_id and c.user_id = $2
             where m.id = $1
             for update of m",
            &[&id, &user_id],
        )
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    Ok(Access {
        chat_id: row.get(0),
        is_sender: row.get(1),
        is_chat_admin: row.get(2),
    })
}

async fn edit_message(
    state: State,
    user: AuthUser,
    id: i64,
    req: EditRequest,
) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let content = check_content(&req.content, state.config.limits.message_chars, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let access = lock_access(&tx, id, user.id).await?;
    if !access.is_sender {
        return Err(ApiError::NotMessageSender);
    }
    let row = tx
        .query_one(
            &format!(
                "with m as (update messages set content = $2, is_edited = true where id = $1 returning *)
                 select {MESSAGE_COLUMNS} from m left join users u on u.id = m.sender_id"
            ),
            &[&id, &content],
        )
        .await?;
    let message = Message::from_row(&row);
    events::emit(
        &tx,
        &[NewEvent::new(
            access.chat_id,
            EventKind::MessageUpdated,
            message.event_payload(),
        )],
    )
    .await?;
    tx.commit().await?;
    Ok(warp::reply::json(&message))
}

async fn delete_message(state: State, user: AuthUser, id: i64) -> Result<impl Reply, ApiError> {
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let access = lock_access(&tx, id, user.id).await?;
    if !access.is_sender && !access.is_chat_admin {
        return Err(ApiError::NotMessageSender);
    }
    tx.execute("delete from messages where id = $1", &[&id])
        .await?;
    events::emit(
        &tx,
        &[NewEvent::new(
            access.chat_id,
            EventKind::MessageDeleted,
            serde_json::json!({ "chat_id": access.chat_id, "message_id": id }),
        )],
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
