//! A durable event as a node holds it: routing data plus its frame.

use crate::events::EventKind;
use crate::message_json::message_frame;
use tokio_postgres::Row;

/// A serialised server frame. Cloning shares the buffer: one event is
/// serialised once and the same bytes are written to every subscriber.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub chat_id: Option<i64>,
    pub kind: EventKind,
    /// Users addressed besides the chat's members (see `events::NewEvent`).
    pub user_ids: Vec<i64>,
    /// The message a `message*` event is about.
    pub message_id: Option<i64>,
    /// The original that message is a reply to (`message`, `message_updated`).
    pub reply_to_id: Option<i64>,
    pub frame: Frame,
}

impl Event {
    /// An event read from the log by `events::READ_EVENTS_SQL`, its frame
    /// built from the message's body for the kinds that show one. `None`
    /// for one with no frame (the event of a message deleted since) and for
    /// a kind this binary does not know — written by a newer node during a
    /// rolling upgrade: it is skipped (and logged), not guessed at.
    pub fn from_row(row: &Row) -> Option<Event> {
        let id: i64 = row.get(0);
        let kind: &str = row.get(2);
        let Some(kind) = EventKind::parse(kind) else {
            log::error!("event {id} has an unknown kind `{kind}`; not delivered");
            return None;
        };
        let frame: Option<String> = if kind.shows_message() {
            let body: Option<&str> = row.get(7);
            match body.map(|b| message_frame(kind.as_str(), id, b)) {
                Some(Ok(frame)) => Some(frame),
                Some(Err(e)) => {
                    log::error!("event {id}: unreadable message body: {e}; not delivered");
                    None
                }
                None => None,
            }
        } else {
            row.get(4)
        };
        Some(Event {
            id,
            chat_id: row.get(1),
            kind,
            user_ids: row.get(3),
            message_id: row.get(5),
            reply_to_id: row.get(6),
            frame: Frame::from(frame?),
        })
    }

    /// Whether user `user_id`, a member of `chat_ids` (sorted), is replayed
    /// this event (the rule is [`EventKind::replayed_to`]).
    pub fn replayed_to(&self, user_id: i64, chat_ids: &[i64]) -> bool {
        let member = self
            .chat_id
            .is_some_and(|c| chat_ids.binary_search(&c).is_ok());
        self.kind
            .replayed_to(self.user_ids.contains(&user_id), member)
    }

    /// What holding it in memory costs, roughly.
    pub fn held_bytes(&self) -> usize {
        self.frame.len() + self.user_ids.len() * 8 + 96
    }
}
