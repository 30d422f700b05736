//! Presence across nodes, and event-log retention.
//!
//! Each node records which users it holds connections for in
//! `presence_sessions` and heartbeats its `presence_nodes` row ([`nodes`]).
//! A user is online while any live node holds a session for them. Nodes
//! reap peers whose heartbeat is older than `presence_timeout_secs`, so a
//! node that died without saying goodbye has its users shown offline within
//! that time.
//!
//! Who hears of a change ([`fan_out`]) and what a connection is told when
//! it opens ([`snapshot`]) follow `crate::presence`: per-user presence is
//! shared in chats of at most `ws.presence_max_members` members; members of
//! larger chats ask for it (`GET /api/v1/chats/:id/presence`).

mod fan_out;
mod nodes;
pub mod snapshot;
mod view;

pub use fan_out::fan_out;
pub use nodes::{beat, drain_grace, leave, maintain, prune_events};
pub use snapshot::{SNAPSHOT_USERS, Snapshots};
pub use view::View;

use super::Hub;
use super::registry::PresenceChange;
use crate::error::ApiError;
use crate::events::{Live, notify_live_all};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(crate::support::rfc3339)
}

/// Attempts a presence batch gets while the database is unreachable or
/// slow, waiting 250 ms, then twice as long each time, between them.
const ATTEMPTS: u32 = 5;

/// Runs `attempt` until it succeeds, retrying the failures a moment of
/// overload causes (the pool's wait timing out, a statement timing out):
/// a presence change dropped then would leave a user shown online or
/// offline wrongly until their next change. Each batch is retried before
/// the next is taken, so changes still apply and arrive in order. Both
/// kinds of batch may run again whole: a failed update rolled back, and a
/// failed fan-out sent nothing.
async fn retried<F, Fut>(what: &str, mut attempt: F) -> Result<(), ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let mut pause = Duration::from_millis(250);
    for _ in 1..ATTEMPTS {
        match attempt().await {
            Err(e @ (ApiError::DatabaseUnavailable | ApiError::QueryTimeout)) => {
                log::warn!("{what} failed, retrying in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            done => return done,
        }
    }
    attempt().await
}

/// Presence changes applied in one transaction at most. A reconnect storm
/// (a node restarting under thousands of users) is applied in a few batches
/// instead of a transaction per user, which could not keep up: users would
/// stay unrecorded long after they connected.
const PRESENCE_BATCH: usize = 1000;

/// How long the node waits before re-recording its sessions after a
/// presence update failed, and between attempts while they fail.
pub(super) const RESYNC_PAUSE: Duration = Duration::from_secs(1);

/// Applies this node's presence changes to the database, in order: each
/// batch takes what has queued up and applies every user's latest change.
///
/// A batch that still fails after its retries (the database away for
/// seconds, or an error no retry mends) is not dropped for good: its
/// changes were never recorded, so a user who left would stay online for
/// as long as this node lives, and one who came would stay offline. From
/// then on the node re-records its sessions as its connections are
/// ([`resync`]) every [`RESYNC_PAUSE`] until that succeeds, then goes back
/// to batches.
pub async fn track(hub: Arc<Hub>, mut changes: mpsc::UnboundedReceiver<PresenceChange>) {
    let mut shutdown = hub.shutdown_signal();
    let mut batch = Vec::with_capacity(PRESENCE_BATCH);
    let mut diverged = false;
    loop {
        if diverged {
            tokio::select! {
                _ = tokio::time::sleep(RESYNC_PAUSE) => {}
                _ = super::stopping(&mut shutdown) => return,
            }
            // Changes queued until now are in the connections the re-sync
            // reads next (the registry queues them under its lock), so they
            // need no batch of their own; a later one gets one.
            while changes.try_recv().is_ok() {}
            diverged = match retried("presence re-sync", || resync(&hub)).await {
                Ok(()) => {
                    hub.metrics.presence_resyncs.inc();
                    false
                }
                Err(e) => {
                    log::warn!("presence re-sync failed: {e:?}");
                    hub.metrics.presence_update_failures.inc();
                    true
                }
            };
            continue;
        }
        let received = tokio::select! {
            n = changes.recv_many(&mut batch, PRESENCE_BATCH) => n,
            _ = super::stopping(&mut shutdown) => 0,
        };
        if received == 0 {
            return;
        }
        let (online, mut offline) = latest_states(batch.drain(..));
        // Sockets closed by a shutdown leave their sessions to `leave`.
        if hub.is_shutting_down() {
            offline.clear();
        }
        let applied = retried("presence update", || apply(&hub, &online, &offline));
        if let Err(e) = applied.await {
            log::warn!(
                "presence update for {} users failed: {e:?}; re-recording this node's sessions",
                online.len() + offline.len()
            );
            hub.metrics.presence_update_failures.inc();
            diverged = true;
        }
    }
}

/// Records this node's sessions as its connections are now: a session for
/// each user connected here that has none, none for each one that has left,
/// and announces those whose presence across all nodes changed ([`apply`]).
async fn resync(hub: &Hub) -> Result<(), ApiError> {
    let connected = hub.registry.connected_users();
    let recorded: Vec<i64> = {
        let client = hub.pool.get().await?;
        client
            .query_typed(
                "select user_id from presence_sessions where node_id = $1",
                &[(&hub.node_id, Type::TEXT)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let (online, mut offline) = differences(&connected, &recorded);
    // Sockets closed by a shutdown leave their sessions to `leave`.
    if hub.is_shutting_down() {
        offline.clear();
    }
    if online.is_empty() && offline.is_empty() {
        return Ok(());
    }
    apply(hub, &online, &offline).await
}

/// Users `connected` but not `recorded`, and `recorded` but not `connected`.
fn differences(connected: &[i64], recorded: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let connected_set: HashSet<i64> = connected.iter().copied().collect();
    let recorded_set: HashSet<i64> = recorded.iter().copied().collect();
    (
        connected
            .iter()
            .filter(|u| !recorded_set.contains(u))
            .copied()
            .collect(),
        recorded
            .iter()
            .filter(|u| !connected_set.contains(u))
            .copied()
            .collect(),
    )
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

/// The presence notice of every user whose presence may have changed in
/// the last `secs` seconds by the database's clock: whose session began,
/// or who was last seen (went offline), since then. A node whose listener
/// was away announces them again (`ws::listener`): the notices sent
/// meanwhile are gone. A user listed whose presence did not change is
/// announced as it is, which changes nothing for a client. `(user id,
/// notice)`, each notice as `notify_live` sends it.
pub async fn changed_within(
    client: &impl tokio_postgres::GenericClient,
    secs: f64,
) -> Result<Vec<(i64, String)>, ApiError> {
    let rows = client
        .query_typed(
            "with since as (select clock_timestamp() - make_interval(secs => $1) as t)
             select u.id, exists (select 1 from presence_sessions s where s.user_id = u.id),
                    u.last_seen
             from users u, since
             where u.last_seen >= since.t
                or u.id in (select s.user_id from presence_sessions s, since
                            where s.began_at >= since.t)",
            &[(&secs, Type::FLOAT8)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let user_id = r.get(0);
            let notice = Live::Presence {
                user_id,
                online: r.get(1),
                last_seen: rfc3339(r.get(2)),
            };
            Ok((user_id, serde_json::to_string(&notice)?))
        })
        .collect()
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
                 update users set last_seen = clock_timestamp()
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

    #[test]
    fn a_resync_records_who_came_and_drops_who_left() {
        let (came, left) = differences(&[1, 2, 4], &[2, 3, 4, 5]);
        assert_eq!(came, vec![1]);
        assert_eq!(left, vec![3, 5]);
        assert_eq!(differences(&[7], &[7]), (vec![], vec![]));
    }
}
