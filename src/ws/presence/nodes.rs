//! The node's own presence row: heartbeats, reaping dead peers, rejoining
//! after a stall, leaving on shutdown; and pruning the event log.

use super::rfc3339;
use crate::error::ApiError;
use crate::events::{Live, notify_live};
use crate::ws::Hub;
use std::sync::Arc;
use std::time::Duration;

/// Registers the node, then heartbeats, reaps dead peers and prunes old events.
pub async fn maintain(hub: Arc<Hub>) {
    let cfg = hub.config.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(cfg.presence_heartbeat_secs));
    let mut prune = tokio::time::interval(Duration::from_secs(cfg.prune_interval_secs));
    let mut shutdown = hub.shutdown_signal();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = beat(&hub).await {
                    log::warn!("presence heartbeat failed: {e:?}");
                }
            }
            _ = prune.tick() => {
                if let Err(e) = prune_events(&hub).await {
                    log::warn!("event pruning failed: {e:?}");
                }
            }
            _ = crate::ws::stopping(&mut shutdown) => return,
        }
    }
}

pub async fn beat(hub: &Hub) -> Result<(), ApiError> {
    let client = hub.pool.get().await?;
    // Upsert rather than update: if peers reaped us during a stall, come back
    // with every user we still hold.
    let rejoined = client
        .query_one(
            "with old as (select 1 from presence_nodes where node_id = $1)
             insert into presence_nodes (node_id) values ($1)
             on conflict (node_id) do update set heartbeat_at = now()
             returning not exists (select 1 from old)",
            &[&hub.node_id],
        )
        .await?
        .get::<_, bool>(0);
    if rejoined {
        let users = hub.registry.connected_users();
        // The reaper showed users held nowhere else offline: show them online again.
        let back = client
            .query(
                "with ins as (
                     insert into presence_sessions (node_id, user_id)
                     select $1, u from unnest($2::bigint[]) u where exists (select 1 from users where id = u)
                     on conflict do nothing
                     returning user_id
                 )
                 select ins.user_id, u.last_seen from ins join users u on u.id = ins.user_id
                 where not exists (select 1 from presence_sessions s
                                   where s.user_id = ins.user_id and s.node_id <> $1)",
                &[&hub.node_id, &users],
            )
            .await?;
        for row in back {
            notify_live(
                &*client,
                &Live::Presence {
                    user_id: row.get(0),
                    online: true,
                    last_seen: rfc3339(row.get(1)),
                },
            )
            .await?;
        }
    }
    reap(hub, &*client).await
}

/// Removes nodes that stopped heartbeating; their users with no other session go offline.
async fn reap(hub: &Hub, client: &impl tokio_postgres::GenericClient) -> Result<(), ApiError> {
    let timeout = hub.config.presence_timeout_secs as f64;
    let rows = client
        .query(
            "with dead as (
                 delete from presence_nodes
                 where heartbeat_at < now() - make_interval(secs => $1) and node_id <> $2
                 returning node_id
             ), gone as (
                 select distinct s.user_id from presence_sessions s join dead d on d.node_id = s.node_id
             ), offline as (
                 update users set last_seen = clock_timestamp()
                 where id in (select user_id from gone)
                   and not exists (select 1 from presence_sessions s
                                   where s.user_id = users.id
                                     and s.node_id not in (select node_id from dead))
                 returning id, last_seen
             )
             select id, last_seen from offline",
            &[&timeout, &hub.node_id],
        )
        .await?;
    for row in rows {
        let user_id: i64 = row.get(0);
        let last_seen = rfc3339(row.get(1));
        notify_live(
            client,
            &Live::Presence {
                user_id,
                online: false,
                last_seen,
            },
        )
        .await?;
    }
    Ok(())
}

/// Drops events older than the retention and records how far replay can reach.
pub async fn prune_events(hub: &Hub) -> Result<u64, ApiError> {
    let client = hub.pool.get().await?;
    let retention = hub.config.event_retention_secs as f64;
    let row = client
        .query_one(
            "with gone as (
                 delete from events where created_at < now() - make_interval(secs => $1) returning id
             ), mark as (
                 update event_seq set pruned_through = greatest(pruned_through, (select max(id) from gone))
                 where exists (select 1 from gone)
             )
             select count(*) from gone",
            &[&retention],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// This node is leaving (its sockets are closed): its sessions stay until
/// its peers reap it, [`drain_grace`] from now, instead of going now.
///
/// Its clients were asked to come back within `ws.reconnect_spread_ms`
/// (the close reason's `retry_after_ms`); a user who does so, on another
/// node, was never shown offline and is not shown online again. Removed at
/// once, every user of a restarting node went offline and online again
/// within seconds, each change a frame to every member of their chats: in
/// chats of a thousand, more frames than the restart's own traffic. Those
/// who do not come back are shown offline when the peers reap the node.
pub async fn leave(hub: &Hub) -> Result<(), ApiError> {
    let client = hub.pool.get().await?;
    let expires_in =
        (hub.config.presence_timeout_secs as f64 - drain_grace(&hub.config).as_secs_f64()).max(0.0);
    client
        .execute(
            "update presence_nodes set heartbeat_at = now() - make_interval(secs => $2)
             where node_id = $1",
            &[&hub.node_id, &expires_in],
        )
        .await?;
    Ok(())
}

/// How long a node that stopped keeps its users online: the time its
/// clients were asked to come back within, and a heartbeat for them to
/// reach another node.
pub fn drain_grace(config: &crate::config::WsConfig) -> Duration {
    Duration::from_millis(config.reconnect_spread_ms)
        + Duration::from_secs(config.presence_heartbeat_secs)
}
