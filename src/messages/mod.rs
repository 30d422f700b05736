//! Messages: send (idempotent by client_id), fetch, page through, search,
//! edit, delete. Bodies are built in SQL by
//! [`message_json`](crate::message_json), the one definition of a message.

pub mod mentions;
pub mod reactions;
pub mod search;
mod send;
mod send_sql;
pub mod words;

pub use crate::message_json::rfc3339_sql;
pub use send::{CLIENT_ID_MAX_CHARS, PendingSend, SendQueue, SendRequest, SendSetup, Sent};
pub use send_sql::{SEND_BATCH_SQL, SEND_SQL};

use crate::auth::{AuthUser, Sealed};
use crate::db::Pool;
use crate::error::{ApiError, FieldError};
use crate::events::{self, EventKind, NewEvent};
use crate::http::{
    Context, JsonText, Query, authed, id_param, json_body, query, respond, sealed, validated, with,
};
use crate::membership::{ensure_member, is_member, join_member};
use crate::message_json::{MESSAGE_COLUMNS, message_rest_sql};
use serde::Deserialize;
use std::sync::{Arc, LazyLock};
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes(
    ctx: &Context,
    sends: &Arc<SendQueue>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    send(ctx, sends)
        .or(history(ctx))
        .unify()
        .or(search::route(ctx))
        .unify()
        .or(get(ctx))
        .unify()
        .or(edit(ctx))
        .unify()
        .or(delete(ctx))
        .unify()
        .or(reactions::routes(ctx))
        .unify()
        .or(mentions::routes(ctx))
        .unify()
}

/// POST /api/v1/messages
fn send(
    ctx: &Context,
    sends: &Arc<SendQueue>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("messages")
        .and(warp::post())
        .and(sealed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(sends.clone()))
        .then(send_message)
        .map(respond)
}

/// GET /api/v1/messages/chat/:chatId?limit&before_id&after_id&offset
fn history(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("messages" / "chat" / ..)
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(authed(ctx))
        .and(query(ctx))
        .and(with(ctx.pool.clone()))
        .then(fetch_history)
        .map(respond)
}

/// GET /api/v1/messages/:id
fn get(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(get_message)
        .map(respond)
}

/// PUT /api/v1/messages/:id
fn edit(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::put())
        .and(authed(ctx))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .and(with(ctx.limits.message_chars))
        .then(edit_message)
        .map(respond)
}

/// DELETE /api/v1/messages/:id
fn delete(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("messages")
        .and(id_param())
        .and(warp::path::end())
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(delete_message)
        .map(respond)
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

/// The token's version is checked by the send's statement (see
/// `auth::Sealed`): one round trip for the request, not two.
async fn send_message(
    caller: Sealed,
    req: SendRequest,
    sends: Arc<SendQueue>,
) -> Result<impl Reply, ApiError> {
    let sent = sends.queue(caller, req).await?.finish().await?;
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(warp::reply::with_status(
        JsonText(sent.rest_body()?),
        status,
    ))
}

async fn get_message(id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select {}::text from messages m {} left join users u on u.id = m.sender_id
             where m.id = $1",
            message_rest_sql("m", "u", "$2"),
            join_member("c", "m.chat_id", "$2"),
        )
    });
    let client = pool.get().await?;
    let row = client
        .query_opt(SQL.as_str(), &[&id, &user.id])
        .await?
        .ok_or(ApiError::MessageNotFound)?;
    Ok(JsonText(row.get(0)))
}

async fn fetch_history(
    chat_id: i64,
    user: AuthUser,
    q: Query,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut errors = Vec::new();
    let page = q.page(&mut errors);
    let before = q.int("before_id", 1, i64::MAX, &mut errors);
    let after = q.int("after_id", 1, i64::MAX, &mut errors);
    if before.is_some() && after.is_some() {
        errors.push(FieldError::new(
            "after_id",
            "cannot be combined with before_id",
        ));
    }
    validated(errors)?;
    let client = pool.get().await?;
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
        // An empty page of a chat the caller is not in is a 404, like any other read.
        ensure_member(&*client, chat_id, user.id).await?;
    }
    Ok(json_array(&rows))
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
                "select {body}::text from (
                     select * from messages
                     where chat_id = $1
                       and {member}
                       and ($3::bigint is null or id < $3)
                       and ($4::bigint is null or id > $4)
                     order by {order}
                     limit $5 offset $6
                 ) m
                 left join users u on u.id = m.sender_id
                 order by m.id desc",
                body = message_rest_sql("m", "u", "$2"),
                member = is_member("$1", "$2"),
            )
        })
    });
    &SQL[oldest_first as usize]
}

/// Rows whose first column is a message body, as one JSON array.
fn json_array(rows: &[tokio_postgres::Row]) -> JsonText {
    let bodies: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    JsonText(format!("[{}]", bodies.join(",")))
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
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select m.chat_id, m.sender_id is not distinct from $2, c.is_admin
             from messages m {}
             where m.id = $1
             for update of m",
            join_member("c", "m.chat_id", "$2")
        )
    });
    let row = client
        .query_opt(SQL.as_str(), &[&id, &user_id])
        .await?
        .ok_or(ApiError::MessageNotFound)?;
    Ok(Access {
        chat_id: row.get(0),
        is_sender: row.get(1),
        is_chat_admin: row.get(2),
    })
}

async fn edit_message(
    id: i64,
    user: AuthUser,
    req: EditRequest,
    pool: Pool,
    max_chars: usize,
) -> Result<impl Reply, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "with m as (
                 update messages edited
                 set content = $2, search = $5::text::tsvector, is_edited = true,
                     mentions = {}
                 where edited.id = $1
                 returning {MESSAGE_COLUMNS}
             )
             select {}::text from m left join users u on u.id = m.sender_id",
            mentions::mentions_sql("$4::text", "edited.chat_id"),
            message_rest_sql("m", "u", "$3"),
        )
    });
    let mut errors = Vec::new();
    let content = check_content(&req.content, max_chars, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let access = lock_access(&tx, id, user.id).await?;
    if !access.is_sender {
        return Err(ApiError::NotMessageSender);
    }
    let search = words::tsvector_text(&content);
    let row = tx
        .query_one(
            SQL.as_str(),
            &[
                &id,
                &content,
                &user.id,
                &mentions::mention_names(&content),
                &search,
            ],
        )
        .await?;
    events::emit(
        &tx,
        &[NewEvent::new(
            access.chat_id,
            EventKind::MessageUpdated,
            serde_json::json!({ "chat_id": access.chat_id, "message_id": id }),
        )],
    )
    .await?;
    tx.commit().await?;
    Ok(JsonText(row.get(0)))
}

async fn delete_message(id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
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
