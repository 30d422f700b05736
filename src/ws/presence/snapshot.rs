//! What a connection is told of presence when it opens: one
//! `presence_snapshot` frame after `ready`, with the presence of the users
//! it shares presence with (`crate::presence`), so it need not wait for
//! each of them to change.
//!
//! Read after the connection is subscribed to its chats: a change committed
//! after this read reaches the connection live, after the snapshot (the
//! writer holds `presence` frames back until it is sent, and nothing else);
//! one committed before it may arrive live as well, in order, so the last
//! word on each user is always the latest.
//!
//! Snapshots are read in batches, as sends are committed: one task per node
//! takes every request waiting, reads the chats of all their users in one
//! statement and the members of those chats in another, each chat once, and
//! builds each frame from them: each member's entry is serialised once per
//! batch and every frame listing them is spliced from those pieces, not
//! serialised again per viewer. When a node dies, its clients come back at
//! once and most of them are members of a few large chats; read per
//! connection, each of them read the same thousand members again, and that
//! was most of what the database did during the storm. A chat read by an
//! earlier batch is not read again while the node's [`View`] keeps it
//! (`ws.presence_view_ttl_ms`): its members' presence follows the notices.
//!
//! The two reads are planned for each batch, not prepared: a plan kept from
//! the node's first connections, when few users had sessions, scanned every
//! session for each member once the cluster was full (seen with
//! `auto_explain` during a reconnect storm); planned per batch, they follow
//! the tables' size, and a batch's planning is a small part of it.

use super::rfc3339;
use super::view::View;
use crate::error::ApiError;
use crate::presence::{has_session, shares_presence};
use crate::ws::protocol::ServerFrame;
use crate::ws::starts::StartReads;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

/// Users a snapshot lists at most: those online first, then the most
/// recently seen. Past it the frame says `truncated`.
pub const SNAPSHOT_USERS: usize = 1_000;

/// Memberships of the user's chats a snapshot reads at most, taking the
/// chats most recently active first, so a user in thousands of chats costs
/// a bounded read; chats left out make the frame `truncated` too.
const SNAPSHOT_MEMBERSHIPS: i64 = 10_000;

/// Snapshot requests one batch takes at most.
const BATCH: usize = 256;

/// The longest rest after a batch (see [`serve`]).
const MAX_REST: Duration = Duration::from_secs(1);

/// Member rows one read of the batch's chats returns at most (more when a
/// single user's chats have more): what a batch holds in memory at once.
const MEMBER_ROWS: i64 = 50_000;

/// SQL: for each user of `$1`, their chats of at most `$2` members within
/// `$3` memberships, most recently active first, with each chat's member
/// count; whether chats were left out; and the users hidden from them by a
/// block either way.
static CHATS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with v as (select distinct unnest($1::bigint[]) as viewer),
         mine as (
             select v.viewer, c.id, c.member_count,
                    sum(c.member_count) over (partition by v.viewer
                                              order by c.last_activity_at desc, c.id desc)
                        - c.member_count as before
             from v join chat_members m on m.user_id = v.viewer
                    join chats c on c.id = m.chat_id
             where {shares}
         )
         select v.viewer,
                coalesce(array_agg(mine.id order by mine.before) filter (where mine.before < $3), '{{}}'),
                coalesce(array_agg(mine.member_count order by mine.before) filter (where mine.before < $3), '{{}}'),
                coalesce(bool_or(mine.before >= $3), false),
                array(select blocked_id from blocks where blocker_id = v.viewer
                      union select blocker_id from blocks where blocked_id = v.viewer)
         from v left join mine on mine.viewer = v.viewer
         group by v.viewer",
        shares = shares_presence("c", "$2"),
    )
});

/// SQL: the members of chats `$1` with their presence, as nobody's blocks
/// hide it: `(chat_id, user_id, online, last_seen)`.
static MEMBERS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select m.chat_id, u.id, {online}, u.last_seen
         from chat_members m join users u on u.id = m.user_id
         where m.chat_id = any($1)",
        online = has_session("u.id"),
    )
});

/// A connection's request for its snapshot; `None` back when it could not
/// be read (the cause is logged once for the batch).
struct Request {
    user_id: i64,
    reply: oneshot::Sender<Option<String>>,
}

/// Where connections ask for their snapshots (see [`serve`]).
#[derive(Clone)]
pub struct Snapshots {
    requests: mpsc::UnboundedSender<Request>,
}

/// The receiving end of [`Snapshots`], for [`serve`].
pub struct SnapshotRequests(mpsc::UnboundedReceiver<Request>);

impl Snapshots {
    pub fn new() -> (Snapshots, SnapshotRequests) {
        let (requests, rx) = mpsc::unbounded_channel();
        (Snapshots { requests }, SnapshotRequests(rx))
    }

    /// The `presence_snapshot` frame for user `user_id`, read after this is
    /// called (the request joins the line now, not when first polled);
    /// `None` when it could not be read.
    pub fn frame(&self, user_id: i64) -> impl Future<Output = Option<String>> + use<> {
        let (reply, rx) = oneshot::channel();
        let asked = self.requests.send(Request { user_id, reply }).is_ok();
        async move {
            if !asked {
                return None;
            }
            rx.await.ok().flatten()
        }
    }
}

/// Answers snapshot requests a batch at a time until the node stops,
/// `max_members` being `ws.presence_max_members`. One batch is read at a
/// time: while it is, the next one gathers, so the batches grow with the
/// load and the database's share of it stays one statement per node.
pub async fn serve(
    reads: Arc<StartReads>,
    view: Arc<View>,
    mut requests: SnapshotRequests,
    max_members: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = requests.0.recv_many(&mut batch, BATCH) => n,
            _ = crate::ws::stopping(&mut shutdown) => 0,
        };
        if received == 0 {
            return;
        }
        // A connection that closed while it waited needs nothing read.
        batch.retain(|r| !r.reply.is_closed());
        let users: Vec<i64> = batch.iter().map(|r| r.user_id).collect();
        let started = Instant::now();
        match read_batch(&reads, &view, &users, max_members).await {
            Ok(frames) => {
                for request in batch.drain(..) {
                    let _ = request.reply.send(frames.get(&request.user_id).cloned());
                }
            }
            // Dropped unanswered: their connections close.
            Err(e) => {
                log::warn!(
                    "presence snapshots for {} connections failed: {}",
                    batch.len(),
                    crate::error::chain(&e)
                );
                batch.clear();
            }
        }
        // A batch costs about as much for ten arrivals as for hundreds in
        // the same chats (each chat's members are read once), so while a
        // storm of reconnects lasts, back-to-back batches would keep
        // PostgreSQL busy rereading the same big chats for a few arrivals
        // each, and the surviving clients' messages wait behind them. Resting
        // as long as the batch took lets the next one gather twice the
        // arrivals and leaves the database at least half of this reader's
        // time; a lone arrival's batch is short, and so is its rest. A batch
        // that took long because the database did (or failed after a wait)
        // is no reason to hold the next one back as long.
        tokio::select! {
            _ = tokio::time::sleep(started.elapsed().min(MAX_REST)) => {}
            _ = crate::ws::stopping(&mut shutdown) => return,
        }
    }
}

/// One user's part of a batch, as [`CHATS_SQL`] reads it.
struct Viewer {
    user_id: i64,
    /// Their chats that share presence, each with its member count.
    chats: Vec<(i64, i64)>,
    left_out: bool,
    hidden: HashSet<i64>,
}

/// A chat member as [`MEMBERS_SQL`] reads them.
#[derive(Clone)]
pub struct Member {
    pub user_id: i64,
    pub(super) online: bool,
    last_seen: Option<OffsetDateTime>,
    /// Their entry in the frame's `users`, serialised once for every viewer
    /// of the batch (most of a frame's cost when built per viewer).
    /// Shared by its clones: a node's view and every list of a batch hold
    /// the same member.
    json: Arc<str>,
}

impl Member {
    pub fn new(user_id: i64, online: bool, last_seen: Option<OffsetDateTime>) -> Member {
        let piece = Piece {
            last_seen: rfc3339(last_seen),
            online,
            user_id,
        };
        Member {
            user_id,
            online,
            last_seen,
            json: serde_json::to_string(&piece).unwrap_or_default().into(),
        }
    }
}

/// A [`crate::ws::protocol::PresenceState`] as `ServerFrame::to_text`
/// spells it inside a frame: that goes through a `serde_json::Value`, whose
/// objects list their keys sorted, hence this field order. Serialised
/// directly, without building a `Value` per member.
#[derive(Serialize)]
struct Piece {
    last_seen: Option<String>,
    online: bool,
    user_id: i64,
}

/// The `presence_snapshot` frames of `users` (one per user, however often
/// listed), `max_members` being `ws.presence_max_members`: reads their
/// chats, then the chats' members, each chat once for a group of users
/// whose chats have at most [`MEMBER_ROWS`] members together (what is held
/// in memory at once).
pub async fn read_batch(
    reads: &StartReads,
    view: &View,
    users: &[i64],
    max_members: usize,
) -> Result<HashMap<i64, String>, ApiError> {
    let lent = reads.get().await?;
    let rows = lent
        .conn
        .client
        .query_typed(
            &CHATS_SQL,
            &[
                (&users, Type::INT8_ARRAY),
                (&(max_members as i64), Type::INT8),
                (&SNAPSHOT_MEMBERSHIPS, Type::INT8),
            ],
        )
        .await?;
    drop(lent);
    let viewers: Vec<Viewer> = rows
        .iter()
        .map(|r| Viewer {
            user_id: r.get(0),
            chats: r
                .get::<_, Vec<i64>>(1)
                .into_iter()
                .zip(r.get::<_, Vec<i64>>(2))
                .collect(),
            left_out: r.get(3),
            hidden: r.get::<_, Vec<i64>>(4).into_iter().collect(),
        })
        .collect();
    let mut frames = HashMap::with_capacity(viewers.len());
    let mut group: Vec<&Viewer> = Vec::new();
    let mut chats: HashMap<i64, i64> = HashMap::new();
    let mut rows = 0;
    for viewer in &viewers {
        let more: i64 = viewer
            .chats
            .iter()
            .filter(|(chat, _)| !chats.contains_key(chat))
            .map(|(_, members)| members)
            .sum();
        if !group.is_empty() && rows + more > MEMBER_ROWS {
            frames.extend(frames_for(reads, view, &group, &chats).await?);
            group.clear();
            chats.clear();
            rows = 0;
        }
        rows += more;
        chats.extend(viewer.chats.iter().copied());
        group.push(viewer);
    }
    if !group.is_empty() {
        frames.extend(frames_for(reads, view, &group, &chats).await?);
    }
    Ok(frames)
}

/// The frames of `group`'s users, with the members of `chats` (theirs,
/// with their member counts) as the node's [`View`] holds them, reading
/// those it does not once. Users in the same chats share one sorted list of
/// their members.
async fn frames_for(
    reads: &StartReads,
    view: &View,
    group: &[&Viewer],
    chats: &HashMap<i64, i64>,
) -> Result<Vec<(i64, String)>, ApiError> {
    let (mut members, missing, ticket) = view.cached(chats);
    if !missing.is_empty() {
        let lent = reads.get().await?;
        let rows = lent
            .conn
            .client
            .query_typed(&MEMBERS_SQL, &[(&missing, Type::INT8_ARRAY)])
            .await?;
        drop(lent);
        let mut read: HashMap<i64, Vec<Member>> = HashMap::with_capacity(missing.len());
        for r in &rows {
            let member = Member::new(r.get(1), r.get(2), r.get(3));
            read.entry(r.get(0)).or_default().push(member);
        }
        view.read_done(ticket, &read);
        members.extend(read);
    }
    let mut lists: HashMap<&[(i64, i64)], Vec<Member>> = HashMap::new();
    let mut frames = Vec::with_capacity(group.len());
    for viewer in group {
        let list = lists
            .entry(&viewer.chats)
            .or_insert_with(|| everyone(&viewer.chats, &members));
        frames.push((viewer.user_id, frame(viewer, list)));
        // A batch's frames take a while to build; other tasks on this
        // worker thread should not wait for all of them.
        tokio::task::yield_now().await;
    }
    Ok(frames)
}

/// The members of `chats`, each once, in the snapshot's order.
fn everyone(chats: &[(i64, i64)], members: &HashMap<i64, Vec<Member>>) -> Vec<Member> {
    let mut seen = HashSet::new();
    let mut list: Vec<Member> = chats
        .iter()
        .flat_map(|(chat, _)| members.get(chat).into_iter().flatten())
        .filter(|m| seen.insert(m.user_id))
        .cloned()
        .collect();
    list.sort_unstable_by(listed_first);
    list
}

/// One user's `presence_snapshot` frame from `list`, everyone in their
/// chats ([`everyone`]): the others, a user hidden by a block shown offline
/// (`crate::presence`), at most [`SNAPSHOT_USERS`] of them.
fn frame(viewer: &Viewer, list: &[Member]) -> String {
    let hides = |m: &Member| viewer.hidden.contains(&m.user_id);
    let resorted;
    let list = if list.iter().any(|m| m.online && hides(m)) {
        let mut own: Vec<Member> = list
            .iter()
            .map(|m| {
                if m.online && hides(m) {
                    Member::new(m.user_id, false, m.last_seen)
                } else {
                    m.clone()
                }
            })
            .collect();
        own.sort_unstable_by(listed_first);
        resorted = own;
        &resorted
    } else {
        list
    };
    let mut peers = list.iter().filter(|m| m.user_id != viewer.user_id);
    let users: Vec<&str> = peers
        .by_ref()
        .take(SNAPSHOT_USERS)
        .map(|m| &*m.json)
        .collect();
    let truncated = viewer.left_out || peers.next().is_some();
    // The frame around an empty `users`, which is the one `[]` in it.
    let empty = ServerFrame::PresenceSnapshot {
        users: Vec::new(),
        truncated,
    }
    .to_text(None);
    let (head, tail) = empty.split_at(empty.find("[]").map_or(empty.len(), |at| at + 1));
    let mut frame =
        String::with_capacity(empty.len() + users.iter().map(|u| u.len() + 1).sum::<usize>());
    frame.push_str(head);
    for (i, user) in users.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(user);
    }
    frame.push_str(tail);
    frame
}

/// The snapshot's order: online first, then the most recently seen (never
/// seen last), then by id.
fn listed_first(a: &Member, b: &Member) -> Ordering {
    b.online
        .cmp(&a.online)
        .then_with(|| match (a.last_seen, b.last_seen) {
            (Some(x), Some(y)) => y.cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then(a.user_id.cmp(&b.user_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::protocol::PresenceState;

    fn member(user_id: i64, online: bool, seen: Option<i64>) -> Member {
        let last_seen = seen.map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap());
        Member::new(user_id, online, last_seen)
    }

    fn viewer(chats: &[i64], hidden: &[i64]) -> Viewer {
        Viewer {
            user_id: 1,
            chats: chats.iter().map(|c| (*c, 0)).collect(),
            left_out: false,
            hidden: hidden.iter().copied().collect(),
        }
    }

    /// `viewer`'s frame, as [`frames_for`] builds it.
    fn frame_of(viewer: &Viewer, members: &HashMap<i64, Vec<Member>>) -> String {
        frame(viewer, &everyone(&viewer.chats, members))
    }

    fn listed(frame: &str) -> (Vec<(i64, bool)>, bool) {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        let users = v["payload"]["users"].as_array().unwrap();
        let users = users
            .iter()
            .map(|u| {
                (
                    u["user_id"].as_i64().unwrap(),
                    u["online"].as_bool().unwrap(),
                )
            })
            .collect();
        (users, v["payload"]["truncated"].as_bool().unwrap())
    }

    #[test]
    fn peers_are_listed_once_online_first_then_most_recently_seen_then_by_id() {
        let members = HashMap::from([
            (
                10,
                vec![
                    member(1, true, Some(5)),
                    member(2, false, None),
                    member(3, false, Some(100)),
                    member(4, true, Some(1)),
                ],
            ),
            (
                11,
                vec![member(4, true, Some(1)), member(5, false, Some(100))],
            ),
        ]);

        let (users, truncated) = listed(&frame_of(&viewer(&[10, 11], &[]), &members));

        assert_eq!(
            users,
            vec![(4, true), (3, false), (5, false), (2, false)],
            "the viewer is left out, user 4 is listed once"
        );
        assert!(!truncated);
    }

    #[test]
    fn a_user_hidden_by_a_block_is_shown_offline() {
        let members = HashMap::from([(10, vec![member(2, false, Some(5)), member(3, true, None)])]);

        let (users, _) = listed(&frame_of(&viewer(&[10], &[3]), &members));

        assert_eq!(
            users,
            vec![(2, false), (3, false)],
            "3 is placed as offline"
        );
    }

    #[test]
    fn users_sharing_a_list_each_leave_only_themselves_out() {
        let members = HashMap::from([(10, vec![member(1, true, None), member(2, true, None)])]);
        let list = everyone(&[(10, 2)], &members);
        let mut second = viewer(&[10], &[]);
        second.user_id = 2;

        let (first_sees, _) = listed(&frame(&viewer(&[10], &[]), &list));
        let (second_sees, _) = listed(&frame(&second, &list));

        assert_eq!(first_sees, vec![(2, true)]);
        assert_eq!(second_sees, vec![(1, true)]);
    }

    #[test]
    fn past_the_limit_the_first_in_order_are_kept_and_the_frame_says_truncated() {
        let big: Vec<Member> = (2..=SNAPSHOT_USERS as i64 + 2)
            .map(|u| member(u, u % 2 == 0, Some(u)))
            .collect();
        let members = HashMap::from([(10, big)]);

        let (users, truncated) = listed(&frame_of(&viewer(&[10], &[]), &members));

        assert!(truncated);
        assert_eq!(users.len(), SNAPSHOT_USERS);
        let online = users.iter().filter(|(_, on)| *on).count();
        assert_eq!(online, SNAPSHOT_USERS / 2 + 1, "every online user is kept");
        assert_eq!(users[0], (SNAPSHOT_USERS as i64 + 2, true));
        assert_eq!(
            users.last().unwrap().0,
            5,
            "the least recently seen are cut"
        );
    }

    #[test]
    fn chats_left_out_make_the_frame_truncated() {
        let members = HashMap::from([(10, vec![member(2, true, None)])]);
        let mut v = viewer(&[10], &[]);
        v.left_out = true;

        let (_, truncated) = listed(&frame_of(&v, &members));

        assert!(truncated);
    }

    #[test]
    fn a_frame_is_spelled_as_the_protocol_spells_it() {
        let members = HashMap::from([(
            10,
            vec![
                member(2, true, Some(5)),
                member(3, true, None),
                member(4, false, Some(1_700_000_000)),
            ],
        )]);
        let list = everyone(&[(10, 3)], &members);
        let state = |user_id, online, seen: Option<i64>| PresenceState {
            user_id,
            online,
            last_seen: rfc3339(seen.map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())),
        };
        let mut hiding = viewer(&[10], &[2]);
        hiding.left_out = true;

        let plain = frame(&viewer(&[10], &[]), &list);
        let hidden = frame(&hiding, &list);

        let expected = ServerFrame::PresenceSnapshot {
            users: vec![
                state(2, true, Some(5)),
                state(3, true, None),
                state(4, false, Some(1_700_000_000)),
            ],
            truncated: false,
        };
        assert_eq!(plain, expected.to_text(None));
        let expected = ServerFrame::PresenceSnapshot {
            users: vec![
                state(3, true, None),
                state(4, false, Some(1_700_000_000)),
                state(2, false, Some(5)),
            ],
            truncated: true,
        };
        assert_eq!(hidden, expected.to_text(None));
    }
}
