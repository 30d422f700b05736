//! Presence across nodes, and event-log retention.
//!
//! Each node records which users it holds connections for in
//! `presence_sessions` and heartbeats its `presence_nodes` row. A user is
//! online while any live node holds a session for them. Nodes reap peers whose
//! heartbeat is older than `presence_timeout_secs`, so a node that died
//! without saying goodbye has its users shown offline within that time.

use super::Hub;
use super::event::Frame;
use super::registry::{Hidden, PresenceChange, Sender};
use crate::error::ApiError;
use crate::events::{Live, notify_live, notify_live_all};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(crate::support::rfc3339)
}

/// Presence changes applied in one transaction at most. A reconnect storm
/// (a node restarting under thousands of users) is applied in a few batches
/// instead of a transaction per user, which could not keep up: users would
/// stay unrecorded long after they connected.
const PRESENCE_BATCH: usize = 1000;

/// Applies this node's presence changes to the database, in order: each
/// batch takes what has queued up and applies every user's latest change.
pub async fn track(hub: Arc<Hub>, mut changes: mpsc::UnboundedReceiver<PresenceChange>) {
    let mut shutdown = hub.shutdown_signal();
    let mut batch = Vec::with_capacity(PRESENCE_BATCH);
    loop {
        let received = tokio::select! {
            n = changes.recv_many(&mut batch, PRESENCE_BATCH) => n,
            _ = super::stopping(&mut shutdown) => 0,
        };
        if received == 0 {
            return;
        }
        let (online, offline) = latest_states(batch.drain(..));
        if let Err(e) = apply(&hub, &online, &offline).await {
            log::warn!(
                "presence update for {} users failed: {e:?}",
                online.len() + offline.len()
            );
        }
    }
}

/// Each user's last change wins: an online-offline-online flap within a batch
/// is the user online. Returns (online, offline) user ids.
fn latest_states(changes: impl Iterator<Item = PresenceChange>) -> (Vec<i64>, Vec<i64>) {
    let mut latest = std::collections::HashMap::new();
    for change in changes {
        latest.insert(change.user_id, change.online);
    }
    let (online, offline): (Vec<_>, Vec<_>) = latest.into_iter().partition(|&(_, on)| on);
    (
        online.into_iter().map(|(u, _)| u).collect(),
        offline.into_iter().map(|(u, _)| u).collect(),
    )
}

/// Records sessions for `online` and drops them for `offline`, and announces
/// each user whose presence across all nodes changed, in one transaction.
///
/// The users' presence changes are serialised across nodes for the rest of
/// the transaction, so each one's check for sessions elsewhere sees the
/// others': otherwise a connection opening on one node while the last one
/// closes on another can leave the user shown offline while connected.
/// Advisory locks (two-key space: 'pres', user id), not row locks: `leave`
/// and `reap` lock session rows before user rows, and taking user rows first
/// would deadlock. Taken in key order, so two nodes' batches cannot deadlock.
async fn apply(hub: &Hub, online: &[i64], offline: &[i64]) -> Result<(), ApiError> {
    let mut client = hub.pool.get().await?;
    let tx = client.transaction().await?;
    let users: Vec<i64> = online.iter().chain(offline).copied().collect();
    tx.query_typed(
        "select pg_advisory_xact_lock(1886545267, k)
         from (select distinct (u % 2147483647)::int as k from unnest($1::bigint[]) u order by k) keys",
        &[(&users, Type::INT8_ARRAY)],
    )
    .await?;
    let mut announce = Vec::new();
    if !online.is_empty() {
        let rows = tx
            .query_typed(
                "with ins as (
                     insert into presence_sessions (node_id, user_id)
                     select $1, u from unnest($2::bigint[]) u where exists (select 1 from users where id = u)
                     on conflict do nothing
                 )
                 select u.id, u.last_seen from users u
                 where u.id = any($2)
                   and not exists (select 1 from presence_sessions s where s.user_id = u.id and s.node_id <> $1)",
                &[(&hub.node_id, Type::TEXT), (&online, Type::INT8_ARRAY)],
            )
            .await?;
        announce.extend(rows.iter().map(|r| Live::Presence {
            user_id: r.get(0),
            online: true,
            last_seen: rfc3339(r.get(1)),
        }));
    }
    if !offline.is_empty() {
        let rows = tx
            .query_typed(
                "with del as (
                     delete from presence_sessions where node_id = $1 and user_id = any($2)
                 )
                 update users set last_seen = now()
                 where id = any($2)
                   and not exists (select 1 from presence_sessions s where s.user_id = users.id and s.node_id <> $1)
                 returning id, last_seen",
                &[(&hub.node_id, Type::TEXT), (&offline, Type::INT8_ARRAY)],
            )
            .await?;
        announce.extend(rows.iter().map(|r| Live::Presence {
            user_id: r.get(0),
            online: false,
            last_seen: rfc3339(r.get(1)),
        }));
    }
    notify_live_all(&tx, &announce).await?;
    tx.commit().await?;
    Ok(())
}

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
            _ = super::stopping(&mut shutdown) => return,
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
                 update users set last_seen = now()
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

/// This node is leaving: its sessions go, and users connected nowhere else go offline.
pub async fn leave(hub: &Hub) -> Result<(), ApiError> {
    let client = hub.pool.get().await?;
    let rows = client
        .query(
            "with mine as (
                 delete from presence_sessions where node_id = $1 returning user_id
             ), node as (
                 delete from presence_nodes where node_id = $1
             ), offline as (
                 update users set last_seen = now()
                 where id in (select user_id from mine)
                   and not exists (select 1 from presence_sessions s
                                   where s.user_id = users.id and s.node_id <> $1)
                 returning id, last_seen
             )
             select id, last_seen from offline",
            &[&hub.node_id],
        )
        .await?;
    for row in rows {
        let user_id: i64 = row.get(0);
        notify_live(
            &*client,
            &Live::Presence {
                user_id,
                online: false,
                last_seen: rfc3339(row.get(1)),
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_applies_each_users_last_change() {
        let change = |user_id, online| PresenceChange { user_id, online };
        let (mut online, mut offline) = latest_states(
            [
                change(1, true),
                change(2, true),
                change(1, false),
                change(3, false),
                change(2, false),
                change(2, true),
            ]
            .into_iter(),
        );
        online.sort();
        offline.sort();
        assert_eq!(online, vec![2]);
        assert_eq!(offline, vec![1, 3]);
    }
}
