//! Who in a chat is online, on demand: how members of chats too large for
//! per-user presence frames (`ws.presence_max_members`) learn it, and a
//! way for any member to refresh it.

use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::http::{Context, authed, id_param, respond, with};
use crate::membership::is_member;
use crate::presence::online;
use serde::Serialize;
use std::sync::LazyLock;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The most online members a reply lists; `online_count` counts them all.
pub const ONLINE_LISTED: usize = 1_000;

#[derive(Debug, Serialize)]
struct ChatPresence {
    member_count: i64,
    online_count: usize,
    /// The first [`ONLINE_LISTED`] online members by id.
    online: Vec<i64>,
}

/// GET /api/v1/chats/:id/presence
pub fn route(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("presence"))
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(chat_presence)
        .map(respond)
}

/// One statement: membership, the count, and every online member (a chat
/// has at most `limits.group_members`), as the caller sees them.
async fn chat_presence(chat_id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select c.member_count,
                    array(select m.user_id from chat_members m
                          where m.chat_id = c.id and {}
                          order by m.user_id)
             from chats c where c.id = $1 and {}",
            online("m.user_id", "$2"),
            is_member("c.id", "$2")
        )
    });
    let client = pool.get().await?;
    let row = client
        .query_opt(SQL.as_str(), &[&chat_id, &user.id])
        .await?
        .ok_or(ApiError::ChatNotFound)?;
    let mut online: Vec<i64> = row.get(1);
    let online_count = online.len();
    online.truncate(ONLINE_LISTED);
    Ok(warp::reply::json(&ChatPresence {
        member_count: row.get(0),
        online_count,
        online,
    }))
}
