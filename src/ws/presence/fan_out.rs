//! Live presence frames: each reaches the users sharing a chat of at most
//! `ws.presence_max_members` members with its user, so a member arriving in
//! a chat of any size costs a bounded number of frames.

use crate::error::ApiError;
use crate::presence::shares_presence;
use crate::ws::Hub;
use crate::ws::event::Frame;
use crate::ws::registry::{Hidden, Sender};
use std::sync::{Arc, LazyLock};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

/// Presence fan-outs handled with one membership query at most.
const FAN_OUT_BATCH: usize = 1000;

/// Sends each presence frame to this node's connections subscribed to a chat
/// its user is a member of and shares presence in (`crate::presence`), in
/// the order received. The users' chats come from the database (they may be
/// connected to another node), one query per batch; who is subscribed here
/// comes from the registry, so the cost follows the users' small chats, not
/// the number of connections on the node nor the size of a large chat.
///
/// A batch that still fails after its retries is tried again every
/// [`super::RESYNC_PAUSE`], and the frames after it wait: dropped, its
/// changes would stay unseen until each user's next one, and sent later
/// out of turn, an older frame would undo a newer one. It is given up, with
/// every frame behind it, only when the listener that queued them has gone:
/// the listener that replaces it announces again every change since the
/// old one last answered (`ws::listener`), which takes them in.
pub async fn fan_out(hub: Arc<Hub>, mut frames: mpsc::UnboundedReceiver<(i64, Frame)>) {
    let mut batch = Vec::with_capacity(FAN_OUT_BATCH);
    while frames.recv_many(&mut batch, FAN_OUT_BATCH).await > 0 {
        loop {
            let sent = super::retried("presence fan-out", || fan_out_batch(&hub, &batch));
            let Err(e) = sent.await else { break };
            hub.metrics.presence_update_failures.inc();
            if frames.is_closed() || hub.is_shutting_down() {
                log::warn!("presence fan-out of {} frames dropped: {e:?}", batch.len());
                return;
            }
            log::warn!(
                "presence fan-out of {} frames failed, trying again: {e:?}",
                batch.len()
            );
            tokio::time::sleep(super::RESYNC_PAUSE).await;
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
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "select m.user_id, array_agg(m.chat_id)
             from chat_members m join chats c on c.id = m.chat_id
             where m.user_id = any($1) and {}
             group by m.user_id",
            shares_presence("c", "$2")
        )
    });
    let max_members = hub.config.presence_max_members as i64;
    let rows = client
        .query_typed(
            &SQL,
            &[(&users, Type::INT8_ARRAY), (&max_members, Type::INT8)],
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
