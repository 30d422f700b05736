//! Read markers: how far each member has read, moved forward only.

use super::{mention_count_sql, unread_count_sql};
use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::{self, Live};
use crate::http::{Context, authed_for, id_param, json_body, respond, with};
use crate::limits::Action;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use tokio_postgres::GenericClient;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    mark_read(ctx)
}

/// POST /api/v1/chats/:id/read
fn mark_read(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("read"))
        .and(warp::post())
        .and(authed_for(ctx, Action::MarkRead))
        .and(json_body(ctx.limits.body_bytes))
        .and(with(ctx.pool.clone()))
        .then(read_up_to)
        .map(respond)
}

async fn read_up_to(
    chat_id: i64,
    user: AuthUser,
    req: ReadRequest,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let marker = advance_read_marker(&*client, chat_id, user.id, req.message_id).await?;
    Ok(warp::reply::json(&marker))
}

#[derive(Deserialize)]
pub struct ReadRequest {
    #[serde(deserialize_with = "crate::validate::integer")]
    pub message_id: i64,
}

#[derive(Debug, Serialize)]
pub struct ReadMarker {
    pub chat_id: i64,
    pub last_read_message_id: Option<i64>,
    pub unread_count: i64,
    pub mention_count: i64,
}

/// Moves the member's marker to `message_id` unless it is already past it, and
/// tells the chat when it moved. The message must belong to the chat. The
/// answer is the marker as this call leaves it, never older: a concurrent
/// call may have moved it further.
pub async fn advance_read_marker(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
    message_id: i64,
) -> Result<ReadMarker, ApiError> {
    // `member` locks the membership before reading it, so it reads the marker
    // a concurrent call committed, not the statement's older snapshot; the
    // update joins it so that it runs after the lock, whatever order
    // PostgreSQL runs the CTEs in.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "with member as (
                 select last_read_message_id from chat_members where chat_id = $1 and user_id = $2
                 for no key update
             ), target as (
                 select id from messages where id = $3 and chat_id = $1
             ), moved as (
                 update chat_members m set last_read_message_id = $3
                 from member
                 where m.chat_id = $1 and m.user_id = $2 and exists (select 1 from target)
                   and coalesce(member.last_read_message_id, 0) < $3
                 returning m.last_read_message_id
             ), answer as (
                 select coalesce((select last_read_message_id from moved), member.last_read_message_id) as marker,
                        exists (select 1 from moved) as moved
                 from member
             )
             select exists (select 1 from target) as found, answer.marker, answer.moved,
                    {} as unread_count, {} as mention_count
             from answer",
            unread_count_sql("$1", "$2", "answer.marker"),
            mention_count_sql("$1", "$2", "answer.marker"),
        )
    });
    let row = client
        .query_opt(SQL.as_str(), &[&chat_id, &user_id, &message_id])
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    if !row.get::<_, bool>("found") {
        return Err(ApiError::MessageNotFound);
    }
    if row.get::<_, bool>("moved") {
        events::notify_live(
            client,
            &Live::Read {
                chat_id,
                user_id,
                message_id,
            },
        )
        .await?;
    }
    Ok(ReadMarker {
        chat_id,
        last_read_message_id: row.get("marker"),
        unread_count: row.get("unread_count"),
        mention_count: row.get("mention_count"),
    })
}
