//! WebSocket frames: `{"type": ..., "payload": {...}, "ref"?: ...}` both ways.
//! Durable events arrive pre-serialised from the event log; the frames built
//! here are the per-connection ones (ready, presence_snapshot, ack, pong,
//! error) and the ephemeral signals (typing, read, presence).

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum ClientFrame {
    Message(crate::messages::SendRequest),
    JoinChat {
        #[serde(deserialize_with = "crate::validate::integer")]
        chat_id: i64,
    },
    LeaveChat {
        #[serde(deserialize_with = "crate::validate::integer")]
        chat_id: i64,
    },
    Typing {
        #[serde(deserialize_with = "crate::validate::integer")]
        chat_id: i64,
    },
    Read {
        #[serde(deserialize_with = "crate::validate::integer")]
        chat_id: i64,
        #[serde(deserialize_with = "crate::validate::integer")]
        message_id: i64,
    },
    Ping,
}

pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "message",
    "join_chat",
    "leave_chat",
    "typing",
    "read",
    "ping",
];

/// A client frame that could not be used, and why (sent back as an `error` frame).
#[derive(Debug)]
pub struct BadFrame {
    pub code: &'static str,
    pub error: String,
    pub reference: Option<Value>,
}

/// Parses a text frame, keeping the client's `ref` to echo.
pub fn parse_client_frame(text: &str) -> Result<(ClientFrame, Option<Value>), BadFrame> {
    let bad = |code, error: String, reference| BadFrame {
        code,
        error,
        reference,
    };
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        bad(
            "invalid_json",
            format!("frame is not valid JSON: {e}"),
            None,
        )
    })?;
    let Some(obj) = value.as_object_mut() else {
        return Err(bad(
            "invalid_frame",
            "frame must be a JSON object".into(),
            None,
        ));
    };
    let reference = obj.remove("ref");
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    if !CLIENT_FRAME_TYPES.contains(&kind) {
        return Err(bad(
            "unknown_type",
            format!(
                "unknown frame type `{kind}`; expected one of {}",
                CLIENT_FRAME_TYPES.join(", ")
            ),
            reference,
        ));
    }
    match ClientFrame::deserialize(value) {
        Ok(frame) => Ok((frame, reference)),
        Err(e) => Err(bad(
            "invalid_payload",
            format!("invalid payload: {e}"),
            reference,
        )),
    }
}

/// Frames this node builds itself.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        user_id: i64,
        last_event_id: i64,
        chat_ids: Vec<i64>,
        recovered: bool,
    },
    /// After `ready`, before any `presence`: the presence of the users
    /// sharing presence with this one (see `ws::presence::snapshot`).
    PresenceSnapshot {
        users: Vec<PresenceState>,
        /// Whether some were left out (see `SNAPSHOT_USERS`).
        truncated: bool,
    },
    Ack(Value),
    Pong {},
    Error {
        code: &'static str,
        error: String,
        #[serde(rename = "ref")]
        reference: Option<Value>,
        /// On `rate_limited`: when the same frame would be accepted.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// One user's presence, as a `presence` frame carries it.
#[derive(Debug, Serialize)]
pub struct PresenceState {
    pub user_id: i64,
    pub online: bool,
    pub last_seen: Option<String>,
}

impl ServerFrame {
    pub fn error(e: &ApiError, reference: Option<Value>) -> ServerFrame {
        let body = e.body();
        ServerFrame::Error {
            code: body.code,
            error: body.error,
            reference,
            retry_after_ms: e.retry_after_ms(),
        }
    }

    /// Serialises the frame, adding `ref` at the top level when the client sent one.
    pub fn to_text(&self, reference: Option<&Value>) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(r), Some(obj)) = (reference, value.as_object_mut()) {
            obj.insert("ref".into(), r.clone());
        }
        value.to_string()
    }
}

impl From<BadFrame> for ServerFrame {
    fn from(b: BadFrame) -> ServerFrame {
        ServerFrame::Error {
            code: b.code,
            error: b.error,
            reference: b.reference,
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_frame_this_node_builds_passes_for_a_presence_frame() {
        let frames = [
            ServerFrame::PresenceSnapshot {
                users: vec![PresenceState {
                    user_id: 7,
                    online: true,
                    last_seen: None,
                }],
                truncated: false,
            },
            ServerFrame::Pong {},
            ServerFrame::Ack(Value::from("presence")),
        ];

        for frame in frames {
            let text = frame.to_text(None);
            assert!(!crate::events::Live::is_presence_frame(&text), "{text}");
        }
    }

    #[test]
    fn parses_known_frames_and_keeps_ref() {
        let (f, r) =
            parse_client_frame(r#"{"type":"typing","payload":{"chat_id":3},"ref":"a1"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Typing { chat_id: 3 }));
        assert_eq!(r, Some(Value::from("a1")));
        let (f, _) = parse_client_frame(r#"{"type":"ping"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Ping));
    }

    #[test]
    fn classifies_bad_frames() {
        let cases = [
            ("not json", "invalid_json"),
            ("[1,2]", "invalid_frame"),
            (r#"{"type":"dance"}"#, "unknown_type"),
            (
                r#"{"type":"typing","payload":{"chat_id":"x"}}"#,
                "invalid_payload",
            ),
        ];
        for (text, code) in cases {
            assert_eq!(parse_client_frame(text).unwrap_err().code, code, "{text}");
        }
    }
}
