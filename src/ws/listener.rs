//! The node's one LISTEN connection: turns NOTIFYs into dispatches.
//!
//! Durable events arrive in commit order, which is id order, and ids have no
//! holes (see `events`). A notification whose id is not `last + 1` therefore
//! means something was missed — a notification too large to carry its frame,
//! or ones sent while this connection was down — and the missing range is read
//! back from the event log before going on. That one rule covers oversized
//! payloads, reconnects and startup alike.

use super::Hub;
use super::close::{ACCOUNT_DELETED, TOKEN_EXPIRED};
use super::event::{Event, Frame};
use super::notice::{Announced, announced};
use super::registry::{BlockChange, DISPATCH_BATCH, Hidden, Sender};
use crate::events::{EVENTS_CHANNEL, LIVE_CHANNEL, Live, Membership, READ_EVENTS_SQL};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

/// Connects, LISTENs and dispatches until the hub shuts down, reconnecting with backoff.
pub async fn run(hub: Arc<Hub>, mut ready: Option<tokio::sync::oneshot::Sender<()>>) {
    let mut backoff = Duration::from_millis(100);
    let mut heard = Instant::now();
    loop {
        let result = listen_once(&hub, &mut ready, &mut heard).await;
        hub.set_listening(false);
        match result {
            Ok(()) => return,
            Err(e) => {
                hub.metrics.listener_reconnects.inc();
                log::warn!("event listener lost its connection: {e}; reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if hub.is_shutting_down() {
            return;
        }
    }
}

/// How much earlier than the listener last heard from the database a
/// presence change it may have missed can be stamped: the stamp is taken
/// before the change commits, a notice sent just before may still have been
/// on its way, and notices received but not yet handled when the connection
/// failed are dropped with it.
const MISSED_MARGIN: Duration = Duration::from_secs(5);

/// `heard`: when the connection last answered (its `listen`, or the
/// liveness check every [`LIVENESS_INTERVAL`]), kept across reconnects: the
/// presence changes announced since, less [`MISSED_MARGIN`], are announced
/// again after a reconnect.
async fn listen_once(
    hub: &Arc<Hub>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    heard: &mut Instant,
) -> Result<(), String> {
    let mut pg: tokio_postgres::Config = hub
        .database_url
        .parse()
        .expect("database url was validated at startup");
    pg.connect_timeout(Duration::from_secs(5));
    pg.application_name("chatapp-listener");
    crate::db::session_defaults(&mut pg);
    let (client, mut connection) = pg.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("listener connection error: {e}");
                    return;
                }
            }
        }
    });
    let result = serve(hub, &client, &mut rx, ready, heard).await;
    driver.abort();
    result
}

async fn serve(
    hub: &Arc<Hub>,
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<Notification>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    heard: &mut Instant,
) -> Result<(), String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    client
        .batch_execute(&format!("listen {EVENTS_CHANNEL}; listen {LIVE_CHANNEL}"))
        .await
        .map_err(db)?;
    // Notices from here on arrive; those before it may be gone.
    let away = heard.elapsed() + MISSED_MARGIN;
    *heard = Instant::now();
    // Presence fan-outs need a query, so they run off this loop, but in
    // order: a user's offline and online must not reach clients swapped.
    let (presence_tx, presence_rx) = mpsc::unbounded_channel::<(i64, Frame)>();
    if let Some(ready) = ready.take() {
        // First start: begin at the current head; older events are history.
        let head: i64 = client
            .query_one("select last_id from event_seq", &[])
            .await
            .map_err(db)?
            .get(0);
        hub.registry.advance_to(head);
        // Hold the newest events from the start, so that clients reconnecting
        // to a node that just started (a restart, a deploy) replay from memory.
        let recent = hub.registry.recent();
        let newest = recent.preload_estimate() as i64;
        if newest > 0 {
            let page = fetch_events(client, head - newest, head, newest)
                .await
                .map_err(db)?;
            recent.preload(page.events);
        }
        let _ = ready.send(());
    } else {
        // Reconnected: whatever was announced while we were away is in the
        // log; what the cache holds may have gone stale meanwhile.
        hub.registry.recent().clear();
        catch_up(hub, client, i64::MAX).await.map_err(db)?;
        recheck_sessions(hub, client).await.map_err(db)?;
        reload_blocks(hub, client).await.map_err(db)?;
        // So are the presence changes announced while it was away: each
        // user whose presence may have changed meanwhile is announced as
        // they are now, ahead of every notice received since `listen`.
        let missed = super::presence::changed_within(client, away.as_secs_f64())
            .await
            .map_err(|e| e.to_string())?;
        for (user_id, notice) in missed {
            let _ = presence_tx.send((user_id, Frame::from(notice.as_str())));
        }
    }
    hub.set_listening(true);
    tokio::spawn(super::presence::fan_out(hub.clone(), presence_rx));
    let mut shutdown = hub.shutdown_signal();
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + LIVENESS_INTERVAL,
        LIVENESS_INTERVAL,
    );
    loop {
        let notification = tokio::select! {
            n = rx.recv() => n,
            _ = check.tick() => {
                check_head(hub, client).await?;
                *heard = Instant::now();
                continue;
            }
            _ = super::stopping(&mut shutdown) => return Ok(()),
        };
        let Some(first) = notification else {
            return Err("the connection closed".into());
        };
        // A group commit's notifications arrive together: dispatch what is
        // already here in one go (see `Registry::dispatch_all`).
        let mut batch = vec![first];
        while batch.len() < DISPATCH_BATCH
            && let Ok(n) = rx.try_recv()
        {
            batch.push(n);
        }
        let mut events: Vec<Arc<Event>> = Vec::new();
        for n in batch {
            if n.channel() != EVENTS_CHANNEL {
                // Keep live signals in order with the events around them.
                dispatch(hub, std::mem::take(&mut events));
                on_live(hub, n.payload(), &presence_tx);
                continue;
            }
            let last = events
                .last()
                .map_or_else(|| hub.registry.last_event_id(), |e| e.id);
            match announced(n.payload(), last, &hub.metrics) {
                Announced::Next(event) => events.push(Arc::new(event)),
                Announced::Stale => {}
                Announced::Gap(upto) => {
                    dispatch(hub, std::mem::take(&mut events));
                    catch_up(hub, client, upto).await.map_err(db)?;
                }
            }
        }
        dispatch(hub, events);
    }
}

/// Dispatches `events`, first telling the presence view which chats'
/// members they change.
fn dispatch(hub: &Hub, events: Vec<Arc<Event>>) {
    for e in &events {
        if let Some(chat_id) = e.chat_id
            && e.kind.membership() != Membership::Unchanged
        {
            hub.presence_view.membership_changed(chat_id);
        }
    }
    hub.registry.dispatch_all(events);
}

/// Closes the sockets whose tokens were revoked, or whose accounts were
/// deleted, while this listener was away: those announcements are live
/// signals, gone with the connection that missed them, so every connected
/// user's token version is read again.
async fn recheck_sessions(hub: &Arc<Hub>, client: &Client) -> Result<(), tokio_postgres::Error> {
    let users = hub.registry.connected_users();
    if users.is_empty() {
        return Ok(());
    }
    let rows = client
        .query(
            "select u, (select token_version from users where id = u)
             from unnest($1::bigint[]) u",
            &[&users],
        )
        .await?;
    for row in rows {
        let user_id: i64 = row.get(0);
        match row.get::<_, Option<i32>>(1) {
            None => hub.registry.kill_user(user_id, ACCOUNT_DELETED, |_| true),
            Some(current) => hub
                .registry
                .kill_user(user_id, TOKEN_EXPIRED, |version| version < current),
        }
    }
    Ok(())
}

/// Reads again every block involving a user connected here: a block or
/// unblock announced while this listener was away is gone with its notice,
/// and the connections would go on showing (or hiding) what it changed.
async fn reload_blocks(hub: &Arc<Hub>, client: &Client) -> Result<(), tokio_postgres::Error> {
    let users = hub.registry.connected_users();
    if users.is_empty() {
        return Ok(());
    }
    let rows = client
        .query(
            "select blocker_id, blocked_id from blocks
             where blocker_id = any($1) or blocked_id = any($1)",
            &[&users],
        )
        .await?;
    let pairs: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    hub.registry.reload_blocks(&pairs);
    Ok(())
}

/// How often the listener proves its connection alive and compares the log's
/// head with what it dispatched.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(10);

/// A connection can die without a reset (a partition): nothing would arrive
/// and nothing would fail. A bounded query detects that (the caller then
/// reconnects and catches up), and dispatches anything a lost notification hid.
async fn check_head(hub: &Arc<Hub>, client: &Client) -> Result<(), String> {
    let query = client.query_one("select last_id from event_seq", &[]);
    let head: i64 = match tokio::time::timeout(Duration::from_secs(5), query).await {
        Ok(Ok(row)) => row.get(0),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("the connection stopped answering".into()),
    };
    if head > hub.registry.last_event_id() {
        catch_up(hub, client, head)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Dispatches every logged event after the last dispatched one, up to `upto`.
async fn catch_up(hub: &Arc<Hub>, client: &Client, upto: i64) -> Result<(), tokio_postgres::Error> {
    loop {
        let after = hub.registry.last_event_id();
        let page = fetch_events(client, after, upto, 1000).await?;
        let Some(through) = page.through else {
            return Ok(());
        };
        if let Some(first) = page.events.first()
            && first.id != after + 1
        {
            log::warn!(
                "events {}..{} were pruned before this node could dispatch them",
                after + 1,
                first.id - 1
            );
        }
        let events: Vec<Arc<Event>> = page.events.into_iter().map(Arc::new).collect();
        for batch in events.chunks(DISPATCH_BATCH) {
            dispatch(hub, batch.to_vec());
        }
        // Past any event skipped for its unknown kind, too.
        hub.registry.advance_to(through);
        if !page.full {
            return Ok(());
        }
    }
}

/// A page of the log, as [`fetch_events`] reads it.
pub struct LogPage {
    pub events: Vec<Event>,
    /// The last id read (events of unknown kinds are skipped); `None` if none.
    pub through: Option<i64>,
    /// Whether the page was cut at its limit: more may follow.
    pub full: bool,
}

/// Logged events with ids in `(after, upto]`, oldest first, at most `limit`.
pub async fn fetch_events(
    client: &impl tokio_postgres::GenericClient,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<LogPage, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "{} where e.id > $1 and e.id <= $2 order by e.id limit $3",
                READ_EVENTS_SQL.as_str()
            ),
            &[&after, &upto, &limit],
        )
        .await?;
    Ok(LogPage {
        events: rows.iter().filter_map(Event::from_row).collect(),
        through: rows.last().map(|r| r.get(0)),
        full: rows.len() as i64 == limit,
    })
}

fn on_live(hub: &Arc<Hub>, payload: &str, presence: &mpsc::UnboundedSender<(i64, Frame)>) {
    let signal: Live = match serde_json::from_str(payload) {
        Ok(s) => s,
        Err(e) => {
            log::error!("unreadable live notification: {e}");
            return;
        }
    };
    let registry = &hub.registry;
    // typing, read and presence payloads are already frames (see `Live`).
    let frame = || Frame::from(payload);
    match signal {
        Live::Typing {
            chat_id, user_id, ..
        } => {
            if hub.typing_deliverable(user_id, chat_id) {
                let typer = Sender {
                    user_id,
                    hidden: Hidden::FromBlockers,
                };
                registry.broadcast_room(chat_id, frame(), Some(typer));
            }
        }
        Live::Read { chat_id, .. } => registry.broadcast_room(chat_id, frame(), None),
        Live::Presence {
            user_id,
            online,
            ref last_seen,
        } => {
            // Applied to the view before its fan-out starts (see `presence::View`).
            hub.presence_view
                .noticed(user_id, online, last_seen.as_deref());
            // Who shares a chat with them is a database question; ask it off this loop.
            let _ = presence.send((user_id, frame()));
        }
        Live::TokensRevoked {
            user_id,
            token_version,
        } => {
            registry.kill_user(user_id, TOKEN_EXPIRED, |v| v < token_version);
        }
        Live::UserDeleted { user_id } => {
            // Their memberships went without events.
            hub.presence_view.forget();
            registry.kill_user(user_id, ACCOUNT_DELETED, |_| true);
            registry.recent().forget_sender(user_id);
        }
        Live::Blocked {
            blocker_id,
            blocked_id,
            blocked,
        } => registry.apply_block(BlockChange {
            blocker: blocker_id,
            blocked: blocked_id,
            on: blocked,
        }),
    }
}
