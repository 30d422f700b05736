//! The event log: every durable change is appended here and announced with
//! `NOTIFY` in the same transaction that made it.
//!
//! Ordering: [`emit`] bumps the single `event_seq` row, whose row lock is held
//! until commit. Event ids are therefore handed out in commit order and have no
//! holes, which makes "every event after N" a complete answer the moment N is
//! visible — the property WebSocket replay and the cross-node listener rely on.
//! Because the lock is held to commit, `emit` must be the last statement of
//! its transaction: anything after it would lengthen the serialised section.

use crate::error::ApiError;
use crate::message_json::{message_body_sql, reply_to_id_sql};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::LazyLock;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

/// Channel of durable events (they carry an `event_id`).
pub const EVENTS_CHANNEL: &str = "chatapp_events";
/// Channel of ephemeral signals: typing, read markers, presence, session control.
pub const LIVE_CHANNEL: &str = "chatapp_live";

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; larger events are
/// announced by id only and read back from the log by each listener.
pub const NOTIFY_PAYLOAD_LIMIT: usize = 7900;

/// Every kind of durable event. A node parses the kind once, where an event
/// enters it (its listener, or a read of the log); what an event does to
/// subscriptions and who is replayed it are methods here, so a new kind does
/// not compile until it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Message,
    MessageUpdated,
    MessageDeleted,
    ChatCreated,
    ChatUpdated,
    ChatDeleted,
    MemberAdded,
    MemberRemoved,
    System,
    ReactionAdded,
    ReactionRemoved,
    MessagePinned,
    MessageUnpinned,
}

/// What an event does to the subscriptions of the users it addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// They join the chat's room (after the event is delivered).
    Subscribes,
    /// They leave it (after the event, their last from that chat).
    Unsubscribes,
    Unchanged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::MessageUpdated => "message_updated",
            EventKind::MessageDeleted => "message_deleted",
            EventKind::ChatCreated => "chat_created",
            EventKind::ChatUpdated => "chat_updated",
            EventKind::ChatDeleted => "chat_deleted",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::System => "system",
            EventKind::ReactionAdded => "reaction_added",
            EventKind::ReactionRemoved => "reaction_removed",
            EventKind::MessagePinned => "message_pinned",
            EventKind::MessageUnpinned => "message_unpinned",
        }
    }

    /// The kind named `text` (as the log stores it), if this binary knows it.
    pub fn parse(text: &str) -> Option<EventKind> {
        use serde::de::value::{Error, StrDeserializer};
        EventKind::deserialize(StrDeserializer::<Error>::new(text)).ok()
    }

    pub fn membership(self) -> Membership {
        match self {
            EventKind::ChatCreated | EventKind::MemberAdded => Membership::Subscribes,
            EventKind::MemberRemoved | EventKind::ChatDeleted => Membership::Unsubscribes,
            EventKind::Message
            | EventKind::MessageUpdated
            | EventKind::MessageDeleted
            | EventKind::ChatUpdated
            | EventKind::System
            | EventKind::ReactionAdded
            | EventKind::ReactionRemoved
            | EventKind::MessagePinned
            | EventKind::MessageUnpinned => Membership::Unchanged,
        }
    }

    /// Whether the chat's members hear it, besides the users it addresses:
    /// `chat_created` tells only the users it adds (the others hear
    /// `member_added`).
    pub fn reaches_room(self) -> bool {
        match self {
            EventKind::ChatCreated => false,
            EventKind::Message
            | EventKind::MessageUpdated
            | EventKind::MessageDeleted
            | EventKind::ChatUpdated
            | EventKind::ChatDeleted
            | EventKind::MemberAdded
            | EventKind::MemberRemoved
            | EventKind::System
            | EventKind::ReactionAdded
            | EventKind::ReactionRemoved
            | EventKind::MessagePinned
            | EventKind::MessageUnpinned => true,
        }
    }

    /// Whether its frame shows a message, built from the message as it is
    /// now (see `message_json::message_body_sql`).
    pub fn shows_message(self) -> bool {
        matches!(self, EventKind::Message | EventKind::MessageUpdated)
    }

    /// Whether it is about one message (its payload's `message_id`) and
    /// goes with it: once that message is deleted, the event is not
    /// replayed, from the log or from a node's memory. A message's deletion
    /// itself is not.
    pub fn follows_message(self) -> bool {
        match self {
            EventKind::Message
            | EventKind::MessageUpdated
            | EventKind::ReactionAdded
            | EventKind::ReactionRemoved
            | EventKind::MessagePinned
            | EventKind::MessageUnpinned => true,
            EventKind::MessageDeleted
            | EventKind::ChatCreated
            | EventKind::ChatUpdated
            | EventKind::ChatDeleted
            | EventKind::MemberAdded
            | EventKind::MemberRemoved
            | EventKind::System => false,
        }
    }

    /// The kinds for which `holds` is true, as an SQL list of their names.
    fn sql_list(holds: fn(EventKind) -> bool) -> String {
        let names: Vec<String> = EventKind::ALL
            .into_iter()
            .filter(|k| holds(*k))
            .map(|k| format!("'{}'", k.as_str()))
            .collect();
        names.join(", ")
    }

    /// Every kind (a test reads each back from its name).
    pub const ALL: [EventKind; 13] = [
        EventKind::Message,
        EventKind::MessageUpdated,
        EventKind::MessageDeleted,
        EventKind::ChatCreated,
        EventKind::ChatUpdated,
        EventKind::ChatDeleted,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::System,
        EventKind::ReactionAdded,
        EventKind::ReactionRemoved,
        EventKind::MessagePinned,
        EventKind::MessageUnpinned,
    ];

    /// The replay rule, the one statement of who gets an event again after
    /// reconnecting: the users it addresses, and the members of its chat if
    /// it reaches the room (`member` = the chat is among the user's chats as
    /// of the replay's snapshot).
    pub fn replayed_to(self, addressed: bool, member: bool) -> bool {
        addressed || (member && self.reaches_room())
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    pub chat_id: i64,
    pub kind: EventKind,
    /// Users addressed besides the chat's members: those added (they subscribe
    /// on it), removed, or members of a deleted chat.
    pub user_ids: Vec<i64>,
    /// The frame payload, without `event_id` (added from the log).
    pub payload: Value,
}

impl NewEvent {
    pub fn new(chat_id: i64, kind: EventKind, payload: impl Serialize) -> NewEvent {
        NewEvent {
            chat_id,
            kind,
            user_ids: Vec::new(),
            payload: serde_json::to_value(payload).unwrap_or(Value::Null),
        }
    }

    pub fn to_users(mut self, user_ids: Vec<i64>) -> NewEvent {
        self.user_ids = user_ids;
        self
    }

    /// A human-readable note in the chat about a membership or name change.
    pub fn system(chat_id: i64, message: String) -> NewEvent {
        NewEvent::new(
            chat_id,
            EventKind::System,
            serde_json::json!({ "chat_id": chat_id, "message": message }),
        )
    }
}

/// Appends `events` to the log in order and NOTIFYs each; returns their ids.
/// Call it last in the transaction (see the module docs).
pub async fn emit(client: &impl GenericClient, events: &[NewEvent]) -> Result<Vec<i64>, ApiError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let batch = serde_json::to_value(events)?;
    let rows = client
        .query_typed(&EMIT_SQL, &[(&batch, Type::JSONB)])
        .await?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Appends a JSON array of [`NewEvent`]s (`$1`) and NOTIFYs each.
pub static EMIT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with seq as (
             update event_seq set last_id = last_id + jsonb_array_length($1::jsonb)
             returning last_id - jsonb_array_length($1::jsonb) as base
         ), ins as (
             insert into events (id, chat_id, kind, user_ids, payload)
             select seq.base + e.ord, (e.v->>'chat_id')::bigint, e.v->>'kind',
                    array(select jsonb_array_elements_text(e.v->'user_ids')::bigint),
                    e.v->'payload'
             from seq, jsonb_array_elements($1::jsonb) with ordinality as e(v, ord)
             returning id, chat_id, kind, user_ids, payload
         ), ev as (
             select id, chat_id, kind, user_ids, (payload->>'message_id')::bigint as message_id,
                    {reply_to_id} as reply_to_id, {frame} as frame, {body} as body,
                    null::text as sent
             from ins
         )
         {notify}",
        reply_to_id = reply_to_id_of_sql("ins"),
        frame = frame_sql("ins"),
        body = body_sql("ins"),
        notify = notify_sql("ev"),
    )
});

/// What precedes the frame in a notice, which carries it last, after the
/// routing fields, so that a listener reads those as JSON and takes the
/// frame as it is (`ws::listener`) instead of scanning every byte of it;
/// none of those fields may hold an object, as the frame begins at the
/// payload's second `{`. Its key is not `frame`, the key of notices that carried it elsewhere: a
/// node that finds no frame it knows reads the event from the log, so nodes
/// of either kind still deliver every event while a rolling upgrade mixes
/// them.
pub const NOTICE_FRAME_MARKER: &str = ", \"frame_last\" : ";

/// What precedes, in the same place, the REST body of the message that an
/// event showing one (`message`, `message_updated`) shows: its frame is
/// built from the body by each node (`message_json::message_frame`). A node
/// that knows only [`NOTICE_FRAME_MARKER`] finds no frame and reads the
/// event from the log.
pub const NOTICE_BODY_MARKER: &str = ", \"body_last\" : ";

/// What precedes, in the same place, the fields of a message a send has
/// just stored (`message_json::sent_fields_sql`: an array, so found by its
/// marker rather than by the `{` the other two begin with), of which each
/// node makes the body and then the frame. A node that knows only the
/// markers above finds none of them and reads the event from the log.
pub const NOTICE_SENT_MARKER: &str = ", \"sent_last\" : ";

/// Selects `id` and NOTIFYs each row of the CTE `ev` (id, chat_id, kind,
/// user_ids, message_id, reply_to_id, frame, body, sent; at most one of the
/// last three not null): the whole event when it fits a NOTIFY payload, else
/// its id only (listeners then read it from the log).
pub fn notify_sql(ev: &str) -> String {
    format!(
        "select {ev}.id,
                pg_notify('{EVENTS_CHANNEL}', case when octet_length(n.text) < {NOTIFY_PAYLOAD_LIMIT}
                                                   then n.text
                                                   else json_build_object('id', {ev}.id)::text end)
         from {ev}, lateral (
             select left(json_build_object(
                        'id', {ev}.id, 'chat_id', {ev}.chat_id, 'kind', {ev}.kind,
                        'user_ids', {ev}.user_ids, 'message_id', {ev}.message_id,
                        'reply_to_id', {ev}.reply_to_id, 'at', extract(epoch from clock_timestamp())
                    )::text, -1)
                    || coalesce('{NOTICE_SENT_MARKER}' || {ev}.sent,
                                '{NOTICE_BODY_MARKER}' || {ev}.body,
                                '{NOTICE_FRAME_MARKER}' || {ev}.frame, '') || '}}' as text
         ) n"
    )
}

/// SQL reading logged events as `id, chat_id, kind, user_ids, frame,
/// message_id, reply_to_id, body` (what `ws::event::Event::from_row` takes),
/// for `where` and `order` clauses over `events e` to follow.
pub static READ_EVENTS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select e.id, e.chat_id, e.kind, e.user_ids, {}, (e.payload->>'message_id')::bigint, {},
                {}
         from events e",
        frame_sql("e"),
        reply_to_id_of_sql("e"),
        body_sql("e"),
    )
});

/// SQL (text) for the frame of logged event row `e` (id, kind, payload) as
/// clients receive it: `{"type": kind, "payload": {..., "event_id"}}`, for
/// the kinds that do not show a message (those have [`body_sql`]; NULL
/// here). The events about a message build none (NULL) once it is deleted:
/// see [`EventKind::follows_message`].
fn frame_sql(e: &str) -> String {
    format!(
        "case when {e}.kind in ({shows}) then null
              when {e}.kind in ({follows}) and not exists (
                  select 1 from messages gone where gone.id = ({e}.payload->>'message_id')::bigint)
              then null
              else json_build_object('type', {e}.kind, 'payload',
                       {e}.payload || jsonb_build_object('event_id', {e}.id))::text end",
        shows = EventKind::sql_list(EventKind::shows_message),
        follows = EventKind::sql_list(EventKind::follows_message),
    )
}

/// SQL (text) for the REST body of the message that logged event row `e`
/// shows, for the kinds that show one (else NULL, and NULL once it is
/// deleted): its frame is built from it (`message_json::message_frame`).
fn body_sql(e: &str) -> String {
    format!(
        "case when {e}.kind in ({shows}) then {body} end",
        shows = EventKind::sql_list(EventKind::shows_message),
        body = message_body_sql(e),
    )
}

/// SQL (bigint) for the original the message of event row `e` answers, for
/// the kinds that show a message (else null).
fn reply_to_id_of_sql(e: &str) -> String {
    format!(
        "case when {e}.kind in ({shows}) then {reply_to_id} end",
        shows = EventKind::sql_list(EventKind::shows_message),
        reply_to_id = reply_to_id_sql(e),
    )
}

/// Ephemeral signals: delivered to whoever is connected now, never replayed.
/// Serialised in the frame shape `{"type", "payload"}`, so the NOTIFY payload
/// of `typing`, `read` and `presence` is forwarded to clients as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Live {
    Typing {
        chat_id: i64,
        user_id: i64,
        username: String,
    },
    Read {
        chat_id: i64,
        user_id: i64,
        message_id: i64,
    },
    Presence {
        user_id: i64,
        online: bool,
        last_seen: Option<String>,
    },
    /// Control, never forwarded: sockets of this user holding tokens older
    /// than `token_version` must close.
    TokensRevoked {
        user_id: i64,
        token_version: i32,
    },
    UserDeleted {
        user_id: i64,
    },
    /// Control, never forwarded: `blocker_id` blocked (or unblocked)
    /// `blocked_id`; nodes stop (or resume) passing presence and typing
    /// between them.
    Blocked {
        blocker_id: i64,
        blocked_id: i64,
        blocked: bool,
    },
}

impl Live {
    /// Whether `frame`, queued for a connection, is a `presence` frame (the
    /// payload of a [`Live::Presence`] notification, forwarded as it is).
    /// Read as a signal: a frame of another type stops at its tag.
    pub fn is_presence_frame(frame: &str) -> bool {
        matches!(serde_json::from_str(frame), Ok(Live::Presence { .. }))
    }
}

/// NOTIFYs `signals` in order, in one statement.
pub async fn notify_live_all(
    client: &impl GenericClient,
    signals: &[Live],
) -> Result<(), ApiError> {
    if signals.is_empty() {
        return Ok(());
    }
    let payloads = signals
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    client
        .query_typed(
            "select pg_notify($1, p) from unnest($2::text[]) with ordinality as t(p, n) order by n",
            &[(&LIVE_CHANNEL, Type::TEXT), (&payloads, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(())
}

pub async fn notify_live(client: &impl GenericClient, signal: &Live) -> Result<(), ApiError> {
    let payload = serde_json::to_string(signal)?;
    client
        .execute("select pg_notify($1, $2)", &[&LIVE_CHANNEL, &payload])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name_in_the_log_and_in_notifications() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        assert_eq!(EventKind::parse("message_exploded"), None);
    }

    #[test]
    fn presence_frames_are_told_apart_from_every_other_forwarded_frame() {
        let presence = Live::Presence {
            user_id: 7,
            online: true,
            last_seen: None,
        };
        let others = [
            Live::Typing {
                chat_id: 1,
                user_id: 7,
                username: "presence".into(),
            },
            Live::Read {
                chat_id: 1,
                user_id: 7,
                message_id: 3,
            },
        ];

        assert!(Live::is_presence_frame(
            &serde_json::to_string(&presence).unwrap()
        ));
        for other in others {
            let frame = serde_json::to_string(&other).unwrap();
            assert!(!Live::is_presence_frame(&frame), "{frame}");
        }
    }

    #[test]
    fn chat_created_is_replayed_only_to_the_users_it_adds() {
        assert!(EventKind::ChatCreated.replayed_to(true, false));
        assert!(!EventKind::ChatCreated.replayed_to(false, true));
        assert!(EventKind::MemberAdded.replayed_to(false, true));
        assert!(EventKind::Message.replayed_to(false, true));
        assert!(!EventKind::Message.replayed_to(false, false));
    }
}
