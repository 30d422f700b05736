//! Pins: messages a chat keeps at hand, most recently pinned first. In a
//! group its admins pin and unpin, in a direct message either member; a
//! chat holds at most [`MAX_PINS`]. Each change is a durable event to the
//! chat's members; a deleted message leaves the pins with it.

use super::lock_role;
use crate::auth::AuthUser;
use crate::db::Pool;
use crate::error::ApiError;
use crate::events::{self, EventKind, NewEvent};
use crate::http::{Context, JsonText, authed, id_param, respond, with};
use crate::membership::is_member;
use crate::message_json::{message_rest_sql, rfc3339_sql};
use serde::Serialize;
use std::sync::LazyLock;
use tokio_postgres::GenericClient;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The most messages one chat keeps pinned.
pub const MAX_PINS: i64 = 50;

pub fn routes(
    ctx: &Context,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    list(ctx).or(pin(ctx)).unify().or(unpin(ctx)).unify()
}

/// GET /api/v1/chats/:id/pins
fn list(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path("chats")
        .and(id_param())
        .and(warp::path!("pins"))
        .and(warp::get())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(list_pins)
        .map(respond)
}

/// `/chats/:id/pins/:messageId`: the chat and message ids.
fn pin_path() -> impl Filter<Extract = (i64, i64), Error = Rejection> + Clone {
    warp::path("chats")
        .and(id_param())
        .and(warp::path("pins"))
        .and(id_param())
        .and(warp::path::end())
}

/// PUT /api/v1/chats/:id/pins/:messageId
fn pin(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    pin_path()
        .and(warp::put())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(pin_message)
        .map(respond)
}

/// DELETE /api/v1/chats/:id/pins/:messageId
fn unpin(ctx: &Context) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    pin_path()
        .and(warp::delete())
        .and(authed(ctx))
        .and(with(ctx.pool.clone()))
        .then(unpin_message)
        .map(respond)
}

/// The pinned messages of chat `$1` as member `$2` reads them, most
/// recently pinned first: each a message as REST shows it, with when it was
/// pinned and by whom. At most [`MAX_PINS`] rows.
static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select ({body} || jsonb_build_object('pinned_at', {pinned_at},
                                              'pinned_by', p.pinned_by))::text
         from pins p join messages m on m.id = p.message_id
         left join users u on u.id = m.sender_id
         where p.chat_id = $1 and {member}
         order by p.pinned_at desc, p.message_id desc",
        body = message_rest_sql("m", "u", "$2"),
        pinned_at = rfc3339_sql("p.pinned_at"),
        member = is_member("$1", "$2"),
    )
});

async fn list_pins(chat_id: i64, user: AuthUser, pool: Pool) -> Result<impl Reply, ApiError> {
    let client = pool.get().await?;
    let rows = client
        .query(LIST_SQL.as_str(), &[&chat_id, &user.id])
        .await?;
    if rows.is_empty() {
        // No pins of a chat the caller is not in is a 404, like any other read.
        let member: bool = client
            .query_one(
                &format!("select {}", is_member("$1", "$2")),
                &[&chat_id, &user.id],
            )
            .await?
            .get(0);
        if !member {
            return Err(ApiError::ChatNotFound);
        }
    }
    let bodies: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    Ok(JsonText(format!("[{}]", bodies.join(","))))
}

/// A pin event's payload.
#[derive(Serialize)]
struct Pin {
    chat_id: i64,
    message_id: i64,
    user_id: i64,
}

impl Pin {
    /// Appends this change to the log as a `kind` event of its chat.
    async fn emit(self, tx: &impl GenericClient, kind: EventKind) -> Result<(), ApiError> {
        events::emit(tx, &[NewEvent::new(self.chat_id, kind, self)]).await?;
        Ok(())
    }
}

/// Locks chat `chat_id` for user `user_id`'s change of its pins (pins of
/// one chat change one at a time, so [`MAX_PINS`] holds): 404 for a
/// non-member, 403 for a group member who is not an admin.
async fn lock_pins(
    client: &impl GenericClient,
    chat_id: i64,
    user_id: i64,
) -> Result<(), ApiError> {
    let role = lock_role(client, chat_id, user_id).await?;
    if role.is_group && !role.is_admin {
        return Err(ApiError::NotChatAdmin);
    }
    Ok(())
}

async fn pin_message(
    chat_id: i64,
    message_id: i64,
    user: AuthUser,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_pins(&tx, chat_id, user.id).await?;
    // The message is locked (key share) so that it cannot be deleted
    // before the pin commits: its pin event precedes its deletion's.
    let row = tx
        .query_one(
            "with target as (
                 select id from messages where id = $2 and chat_id = $1 for key share
             ), pinned as (
                 insert into pins (message_id, chat_id, pinned_by)
                 select id, $1, $3 from target
                 where (select count(*) from pins where chat_id = $1) < $4
                 on conflict (message_id) do nothing
                 returning 1
             )
             select exists (select 1 from target), exists (select 1 from pinned),
                    exists (select 1 from pins where message_id = $2)",
            &[&chat_id, &message_id, &user.id, &MAX_PINS],
        )
        .await?;
    let (found, pinned, already): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !found {
        return Err(ApiError::MessageNotFound);
    }
    let pin = Pin {
        chat_id,
        message_id,
        user_id: user.id,
    };
    if pinned {
        pin.emit(&tx, EventKind::MessagePinned).await?;
    } else if !already {
        return Err(ApiError::TooManyPins { max: MAX_PINS });
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unpin_message(
    chat_id: i64,
    message_id: i64,
    user: AuthUser,
    pool: Pool,
) -> Result<impl Reply, ApiError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    lock_pins(&tx, chat_id, user.id).await?;
    let row = tx
        .query_one(
            "with target as (
                 select id from messages where id = $2 and chat_id = $1
             ), unpinned as (
                 delete from pins where message_id = $2 and chat_id = $1
                 returning 1
             )
             select exists (select 1 from target), exists (select 1 from unpinned)",
            &[&chat_id, &message_id],
        )
        .await?;
    let (found, unpinned): (bool, bool) = (row.get(0), row.get(1));
    if !found {
        return Err(ApiError::MessageNotFound);
    }
    if unpinned {
        let pin = Pin {
            chat_id,
            message_id,
            user_id: user.id,
        };
        pin.emit(&tx, EventKind::MessageUnpinned).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
