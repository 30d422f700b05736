//! Live presence frames: each reaches the users sharing a chat with its user.

use crate::error::ApiError;
use crate::ws::Hub;
use crate::ws::event::Frame;
use crate::ws::registry::{Hidden, Sender};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

/// Presence fan-outs handled with one membership query at most.
const FAN_OUT_BATCH: usize = 1000;

/// Sends each presence frame to this node's connections subscribed to a chat
/// its user is a member of, in the order received. The users' chats come
/// from the database (they may be connected to another node), one query per
/// batch; who is subscribed here comes from the registry, so the cost follows
/// the users' chats, not the number of connections on the node.
pub async fn fan_out(hub: Arc<Hub>, mut frames: mpsc::UnboundedReceiver<(i64, Frame)>) {
    let mut batch = Vec::with_capacity(FAN_OUT_BATCH);
    while frames.recv_many(&mut batch, FAN_OUT_BATCH).await > 0 {
        if let Err(e) = fan_out_batch(&hub, &batch).await {
            log::warn!("presence fan-out of {} frames failed: {e:?}", batch.len());
        }
        batch.clear();
    }
}

async fn fan_out_batch(hub: &Hub, batch: &[(i64, Frame)]) -> Result<(), ApiError> {
    if hub.registry.stats().connections == 0 {
        return Ok(());
    }
    let users: Vec<i64> = batch.iter().map(|(u, _)| *u).collect();
    let client = hub.pool.get().await?;
    let rows = client
        .query_typed(
            "select user_id, array_agg(chat_id) from chat_members where user_id = any($1) group by user_id",
            &[(&users, Type::INT8_ARRAY)],
        )
        .await?;
    drop(client);
    let chats: std::collections::HashMap<i64, Vec<i64>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (user_id, frame) in batch {
        if let Some(chats) = chats.get(user_id) {
            hub.registry.broadcast_rooms(
                chats,
                frame.clone(),
                Some(Sender {
                    user_id: *user_id,
                    hidden: Hidden::BothWays,
                }),
            );
        }
    }
    Ok(())
}
