//! What a durable event's notification says (`events::notify_sql`): its
//! routing fields, read as JSON, and what it carries after them (the frame,
//! the body of the message it shows, or a sent message's fields), taken as
//! it is and made into the frame members get.

use super::event::{Event, Frame};
use crate::events::{EventKind, NOTICE_BODY_MARKER, NOTICE_FRAME_MARKER, NOTICE_SENT_MARKER};
use crate::message_json::{message_frame, sent_body};
use crate::metrics::Metrics;
use serde::Deserialize;
use std::borrow::Cow;

/// The NOTIFY payload of a durable event (`events::notify_sql`) up to its
/// frame, or the body of the message it shows, which follows unless the
/// event was too large to carry it.
#[derive(Deserialize)]
struct Notice {
    id: i64,
    chat_id: Option<i64>,
    /// Absent, or unknown to this binary (a newer node's): read from the log.
    #[serde(default, deserialize_with = "known_kind")]
    kind: Option<EventKind>,
    #[serde(default)]
    user_ids: Vec<i64>,
    message_id: Option<i64>,
    #[serde(default)]
    reply_to_id: Option<i64>,
    /// When the event's statement ran (seconds since the epoch, by the
    /// database's clock): how late it is dispatched is `listen_lag`.
    at: Option<f64>,
}

fn known_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EventKind>, D::Error> {
    let text = Option::<&str>::deserialize(d)?;
    Ok(text.and_then(EventKind::parse))
}

/// What a durable event's notification means, given the last id dispatched.
pub enum Announced {
    /// The next event, carried whole.
    Next(Event),
    /// Already dispatched (or unreadable, which is logged).
    Stale,
    /// Events up to this id must be read from the log: some were missed, or
    /// this one was too large to carry its frame.
    Gap(i64),
}

pub fn announced(payload: &str, last: i64, metrics: &Metrics) -> Announced {
    let (fields, carried) = split_notice(payload);
    let notice: Notice = match serde_json::from_str(&fields) {
        Ok(n) => n,
        Err(e) => {
            log::error!("unreadable event notification: {e}");
            return Announced::Stale;
        }
    };
    if let Some(at) = notice.at {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics.listen_lag.observe((now - at).max(0.0));
    }
    if notice.id <= last {
        return Announced::Stale;
    }
    let (true, Some(kind), Some(carried)) = (notice.id == last + 1, notice.kind, carried) else {
        return Announced::Gap(notice.id);
    };
    let built = match carried {
        Carried::Frame(frame) => Ok(frame.to_string()),
        _ if !kind.shows_message() => return Announced::Gap(notice.id),
        Carried::Body(body) => message_frame(kind.as_str(), notice.id, body),
        Carried::Sent(fields) => {
            sent_body(fields).and_then(|body| message_frame(kind.as_str(), notice.id, &body))
        }
    };
    let frame = match built {
        Ok(frame) => frame,
        Err(e) => {
            log::error!("unreadable message in event {}: {e}", notice.id);
            return Announced::Gap(notice.id);
        }
    };
    Announced::Next(Event {
        id: notice.id,
        chat_id: notice.chat_id,
        kind,
        user_ids: notice.user_ids,
        message_id: notice.message_id,
        reply_to_id: notice.reply_to_id,
        frame: Frame::from(frame),
    })
}

/// What a notice carries after its routing fields.
#[derive(Debug, PartialEq)]
enum Carried<'a> {
    /// The frame, as clients receive it.
    Frame(&'a str),
    /// The REST body of the message the event shows, its frame to be built.
    Body(&'a str),
    /// The fields of a message just sent, its body and frame to be built.
    Sent(&'a str),
}

/// A notice's routing fields (a JSON object) and what it carries after
/// them, if anything. The fields hold no object, so a frame or body begins
/// at the second `{`, right after its marker (found by a byte search, not a
/// string search); a sent message's fields, an array, right after the first
/// [`NOTICE_SENT_MARKER`], which no JSON string can hold (its quotes would
/// be escaped).
fn split_notice(payload: &str) -> (Cow<'_, str>, Option<Carried<'_>>) {
    let split = payload
        .get(1..)
        .and_then(|rest| rest.find('{'))
        .map(|at| payload.split_at(at + 1))
        .and_then(|(head, tail)| {
            let tail = tail.strip_suffix('}')?;
            if let Some(fields) = head.strip_suffix(NOTICE_FRAME_MARKER) {
                Some((fields, Carried::Frame(tail)))
            } else {
                Some((head.strip_suffix(NOTICE_BODY_MARKER)?, Carried::Body(tail)))
            }
        })
        .or_else(|| {
            let (fields, tail) = payload.split_once(NOTICE_SENT_MARKER)?;
            Some((fields, Carried::Sent(tail.strip_suffix('}')?)))
        });
    match split {
        Some((fields, carried)) => {
            let mut object = String::with_capacity(fields.len() + 1);
            object.push_str(fields);
            object.push('}');
            (Cow::Owned(object), Some(carried))
        }
        None => (Cow::Borrowed(payload), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(payload: &str, last: i64) -> Result<String, String> {
        match announced(payload, last, &Metrics::new()) {
            Announced::Next(event) => Ok(event.frame.to_string()),
            Announced::Stale => Err("stale".into()),
            Announced::Gap(upto) => Err(format!("gap to {upto}")),
        }
    }

    #[test]
    fn a_notice_gives_its_frame_as_it_is_or_sends_the_listener_to_the_log() {
        let fields = r#"{"id" : 8, "chat_id" : 3, "kind" : "message", "user_ids" : [], "message_id" : 5, "reply_to_id" : null, "at" : 1.5"#;
        let frame = r#"{"type" : "message", "payload" : {"content": "a \"frame_last\" : x}"}}"#;
        // As `events::notify_sql` writes it.
        let whole = format!("{fields}{NOTICE_FRAME_MARKER}{frame}}}");
        let cases = [
            (whole.clone(), 7, Ok(frame.to_string())),
            (whole.clone(), 8, Err("stale".into())),
            (whole, 5, Err("gap to 8".into())),
            // Too large to carry its frame.
            (r#"{"id" : 8}"#.to_string(), 7, Err("gap to 8".into())),
            (format!("{fields}}}"), 7, Err("gap to 8".into())),
            // A node of the earlier layout: the frame amid the fields.
            (
                format!(r#"{{"id" : 8, "kind" : "message", "frame" : {frame}, "at" : 1.5}}"#),
                7,
                Err("gap to 8".into()),
            ),
        ];
        for (payload, last, want) in cases {
            assert_eq!(frame_of(&payload, last), want, "{payload}");
        }
    }

    #[test]
    fn a_notice_with_a_message_body_gives_the_frame_built_from_it() {
        let fields = r#"{"id" : 8, "chat_id" : 3, "kind" : "message", "user_ids" : [], "message_id" : 5, "reply_to_id" : null, "at" : 1.5"#;
        let body = r#"{"id": 5, "chat_id": 3, "content": "a \"body_last\" : {x}", "sender": null}"#;
        let built = message_frame("message", 8, body).unwrap();
        let cases = [
            // As `events::notify_sql` writes it.
            (format!("{fields}{NOTICE_BODY_MARKER}{body}}}"), Ok(built)),
            // Not a body: read from the log.
            (
                format!("{fields}{NOTICE_BODY_MARKER}{{\"id\": }}}}"),
                Err("gap to 8".to_string()),
            ),
            // A body for a kind that shows no message.
            (
                format!(
                    "{}{NOTICE_BODY_MARKER}{body}}}",
                    fields.replace(r#""message""#, r#""system""#)
                ),
                Err("gap to 8".to_string()),
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(frame_of(&payload, 7), want, "{payload}");
        }
    }

    #[test]
    fn a_notice_with_a_sent_messages_fields_gives_the_frame_built_from_its_body() {
        let fields = r#"{"id" : 8, "chat_id" : 3, "kind" : "message", "user_ids" : [], "message_id" : 5, "reply_to_id" : null, "at" : 1.5"#;
        // Content that looks like the other markers, and a brace before the
        // array's end: neither may be taken for what the notice carries.
        let sent = r#"[5, 3, 1, "a, \"body_last\" : {x} , \"sent_last\" : [", false, null, "2026-12-06T07:00:00.5", "2026-12-06T07:00:00.5", 1, "ann", null, null, null, []]"#;
        let built = message_frame("message", 8, &sent_body(sent).unwrap()).unwrap();
        // As `events::notify_sql` writes it.
        let payload = format!("{fields}{NOTICE_SENT_MARKER}{sent}}}");
        let content = r#"a, "body_last" : {x} , "sent_last" : ["#;
        let cases = [
            (payload.clone(), Ok(built)),
            // Not the fields of a message: read from the log.
            (
                format!("{fields}{NOTICE_SENT_MARKER}[5, 3]}}"),
                Err("gap to 8".to_string()),
            ),
            // Fields for a kind that shows no message.
            (
                format!(
                    "{}{NOTICE_SENT_MARKER}{sent}}}",
                    fields.replace(r#""message""#, r#""system""#)
                ),
                Err("gap to 8".to_string()),
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(frame_of(&payload, 7), want, "{payload}");
        }
        let frame: serde_json::Value =
            serde_json::from_str(&frame_of(&payload, 7).unwrap()).unwrap();
        assert_eq!(frame["payload"]["content"], content);
    }
}
