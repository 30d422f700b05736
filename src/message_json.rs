//! The one definition of a message as clients see it. REST bodies are built
//! here, in SQL, and the `message` / `message_updated` event frames (sent
//! live, through NOTIFY, and replayed) from them, in Rust. A send returns
//! and NOTIFYs, in the statement that stores it, the message's fields as a
//! flat array ([`sent_fields_sql`]), so the notification leaves with the
//! commit; each node makes its body ([`sent_body`]) and frame, and a REST
//! send its reply ([`sent_rest`]).

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// SQL for timestamp `col` as the RFC 3339 text every body carries (`time`'s
/// format: UTC as `Z`, fraction without trailing zeros). The colons are
/// quoted so pgbench (the benchmark's ceiling) does not read `:MI` as a
/// variable.
pub fn rfc3339_sql(col: &str) -> String {
    format!(
        "(to_char({col} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS')
          || coalesce('.' || nullif(rtrim(to_char({col} at time zone 'UTC', 'US'), '0'), ''), '')
          || 'Z')"
    )
}

/// The columns [`message_json_sql`] reads: what a statement that writes
/// messages returns of them to build their bodies (not `search`, which no
/// body carries).
pub const MESSAGE_COLUMNS: &str = "id, chat_id, sender_id, content, is_edited, client_id, created_at, updated_at, reply_to_id, mentions";

/// How much of its original a reply shows: the first 200 characters.
pub const REPLY_PREVIEW_CHARS: usize = 200;

/// The preview of `content` a reply shows, as the SQL below cuts it
/// (`left` counts characters, as `chars` does): the replay cache rewrites
/// held replies with it when their original is edited.
pub fn reply_preview(content: &str) -> &str {
    match content.char_indices().nth(REPLY_PREVIEW_CHARS) {
        Some((end, _)) => &content[..end],
        None => content,
    }
}

/// SQL (jsonb) for message row `m`, sent by user row `u` (left-joined: null
/// once the account is gone), as REST returns it: `{id, chat_id, sender_id,
/// content, is_edited, client_id, created_at, updated_at, sender, reply_to,
/// mentions}`
/// (the reader's own part, `reactions`, is [`message_rest_sql`]'s).
pub fn message_json_sql(m: &str, u: &str) -> String {
    format!(
        "jsonb_build_object(
             'id', {m}.id, 'chat_id', {m}.chat_id, 'sender_id', {m}.sender_id,
             'content', {m}.content, 'is_edited', {m}.is_edited, 'client_id', {m}.client_id,
             'created_at', {created}, 'updated_at', {updated},
             'sender', case when {u}.id is null then null
                            else jsonb_build_object('id', {u}.id, 'username', {u}.username,
                                                    'display_name', {u}.display_name) end,
             'reply_to', {reply_to}, 'mentions', to_jsonb({m}.mentions))",
        created = rfc3339_sql(&format!("{m}.created_at")),
        updated = rfc3339_sql(&format!("{m}.updated_at")),
        reply_to = reply_to_sql(m),
    )
}

/// SQL (json) for message row `m`, just stored by a send, sent by user row
/// `u` (left-joined), replying to a row of `originals` (a relation with the
/// `id`, `sender_id` and `content` of messages): the fields of its body as
/// a flat array, in [`SentFields`]' order, of which each node makes the
/// body ([`sent_body`]). A send passes the original's row it locked, which
/// is the latest committed version, where `messages` is read as of the
/// statement's start and could show the text an edit committed meanwhile
/// replaced. An array of plain values is what costs PostgreSQL least to
/// write: no keys, no nested objects, times printed by `json` itself (UTC,
/// as `timestamp`s, no zone).
pub fn sent_fields_sql(m: &str, u: &str, originals: &str) -> String {
    format!(
        "json_build_array(
             {m}.id, {m}.chat_id, {m}.sender_id, {m}.content, {m}.is_edited, {m}.client_id,
             {m}.created_at at time zone 'UTC', {m}.updated_at at time zone 'UTC',
             {u}.id, {u}.username, {u}.display_name, {m}.reply_to_id,
             case when {m}.reply_to_id is not null then (
                 select json_build_array(reply_of.sender_id,
                                         left(reply_of.content, {REPLY_PREVIEW_CHARS}))
                 from {originals} reply_of where reply_of.id = {m}.reply_to_id) end,
             {m}.mentions)"
    )
}

/// The array [`sent_fields_sql`] writes, by position (serde reads a struct
/// from a JSON array field by field, in the order declared here).
#[derive(Deserialize)]
struct SentFields<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    chat_id: &'a RawValue,
    #[serde(borrow)]
    sender_id: &'a RawValue,
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(borrow)]
    is_edited: &'a RawValue,
    #[serde(borrow)]
    client_id: &'a RawValue,
    /// UTC without its zone, as `json` prints a `timestamp`: digits and
    /// separators only, so borrowed as it is.
    created_at: &'a str,
    updated_at: &'a str,
    /// The sender's user row: all null once the account is gone.
    #[serde(borrow)]
    user_id: &'a RawValue,
    #[serde(borrow)]
    username: &'a RawValue,
    #[serde(borrow)]
    display_name: &'a RawValue,
    #[serde(borrow)]
    reply_to_id: &'a RawValue,
    /// The original's sender and preview; null when it is none or gone.
    #[serde(borrow)]
    original: Option<(&'a RawValue, &'a RawValue)>,
    #[serde(borrow)]
    mentions: &'a RawValue,
}

/// The body ([`message_json_sql`]'s shape) of a message a send stored, from
/// the fields its statement returned and NOTIFYed ([`sent_fields_sql`]).
pub fn sent_body(fields: &str) -> serde_json::Result<String> {
    write_sent(fields, false)
}

/// A message just sent, as REST returns it: [`sent_body`] with no
/// `reactions` yet.
pub fn sent_rest(fields: &str) -> serde_json::Result<String> {
    write_sent(fields, true)
}

fn write_sent(fields: &str, reactions: bool) -> serde_json::Result<String> {
    let f: SentFields = serde_json::from_str(fields)?;
    let time = |t: &str| format!("\"{t}Z\"");
    let sender = match f.user_id.get() {
        "null" => "null".to_string(),
        id => format!(
            "{{\"id\":{id},\"username\":{},\"display_name\":{}}}",
            f.username, f.display_name
        ),
    };
    let reply_to = match (f.reply_to_id.get(), f.original) {
        ("null", _) => "null".to_string(),
        (id, Some((sender_id, content))) => format!(
            "{{\"id\":{id},\"sender_id\":{sender_id},\"content\":{content},\"deleted\":false}}"
        ),
        (id, None) => {
            format!("{{\"id\":{id},\"sender_id\":null,\"content\":null,\"deleted\":true}}")
        }
    };
    let (created_at, updated_at) = (time(f.created_at), time(f.updated_at));
    let pairs = [
        ("id", f.id.get()),
        ("chat_id", f.chat_id.get()),
        ("sender_id", f.sender_id.get()),
        ("content", f.content.get()),
        ("is_edited", f.is_edited.get()),
        ("client_id", f.client_id.get()),
        ("created_at", &created_at),
        ("updated_at", &updated_at),
        ("sender", &sender),
        ("reply_to", &reply_to),
        ("mentions", f.mentions.get()),
        ("reactions", "[]"),
    ];
    let pairs = if reactions {
        &pairs[..]
    } else {
        &pairs[..pairs.len() - 1]
    };
    let mut body = String::with_capacity(fields.len() + 192);
    for (i, (key, value)) in pairs.iter().enumerate() {
        body.push(if i == 0 { '{' } else { ',' });
        body.push('"');
        body.push_str(key);
        body.push_str("\":");
        body.push_str(value);
    }
    body.push('}');
    Ok(body)
}

/// SQL (jsonb) for message row `m`, sent by user row `u`, as REST returns
/// it to user `viewer` (an SQL expression): [`message_json_sql`] with the
/// message's `reactions` as that user sees them.
pub fn message_rest_sql(m: &str, u: &str, viewer: &str) -> String {
    format!(
        "({} || jsonb_build_object('reactions', {}))",
        message_json_sql(m, u),
        reactions_sql(m, viewer)
    )
}

/// SQL (jsonb) for the reactions to message row `m` as user `viewer` sees
/// them: `[{emoji, count, me}]`, each emoji once, in order of first use.
fn reactions_sql(m: &str, viewer: &str) -> String {
    format!(
        "coalesce((
             select jsonb_agg(jsonb_build_object('emoji', r.emoji, 'count', r.n, 'me', r.me)
                              order by r.first)
             from (select emoji, count(*) as n, bool_or(user_id = {viewer}) as me, min(seq) as first
                   from reactions where message_id = {m}.id group by emoji) r),
         '[]'::jsonb)"
    )
}

/// SQL (jsonb) for the `reply_to` of message row `m`: null, or the
/// original `{id, sender_id, content, deleted}` with a preview of its
/// current text; once it is deleted, its id alone (`deleted: true`):
/// nothing of it is kept.
fn reply_to_sql(m: &str) -> String {
    format!(
        "case when {m}.reply_to_id is null then null else coalesce(
             (select jsonb_build_object('id', reply_of.id, 'sender_id', reply_of.sender_id,
                                        'content', left(reply_of.content, {REPLY_PREVIEW_CHARS}),
                                        'deleted', false)
              from messages reply_of where reply_of.id = {m}.reply_to_id),
             jsonb_build_object('id', {m}.reply_to_id, 'sender_id', null, 'content', null,
                                'deleted', true)) end"
    )
}

/// The fields of a message event's payload (see [`message_frame`]) that
/// name its sender: all null once the sender's account is gone.
pub const SENDER_FIELDS: [&str; 3] = ["sender_id", "username", "display_name"];

/// SQL (text) for the REST body of the message of `message` or
/// `message_updated` event row `e` (id, kind, payload), as it is now; NULL
/// once it is deleted. The log keeps only the ids of a message event
/// (`{chat_id, message_id}`), never its text, so an edit leaves no old
/// version to replay and a deleted message's events build no frame at all.
/// Its frame is built from this body by [`message_frame`], outside the
/// database: reshaping JSON costs PostgreSQL more than storing the message.
pub fn message_body_sql(e: &str) -> String {
    format!(
        "(select {body}::text
          from messages fm left join users fu on fu.id = fm.sender_id
          where fm.id = ({e}.payload->>'message_id')::bigint)",
        body = message_json_sql("fm", "fu"),
    )
}

/// The frame of event `event_id` of kind `kind` (`message` or
/// `message_updated`) for the message whose REST body is `body` (from
/// [`message_json_sql`]): `{"type": kind, "payload": {...}}`, the payload
/// being the body's fields with the id, the sender's name and the send time
/// under the names the seed's clients read (`message_id`, `username`,
/// `display_name`, `timestamp`) and the `event_id`, keys in byte order.
///
/// Built once per message on every node, so the body's values are copied
/// as they are, not parsed into a tree: its strings need no unescaping and
/// escaping again. Objects and arrays (a reply's original, mentions) are
/// made compact, as the rest of the frame is.
pub fn message_frame(kind: &str, event_id: i64, body: &str) -> serde_json::Result<String> {
    #[derive(Deserialize)]
    struct Sender<'a> {
        #[serde(borrow, default)]
        username: Option<&'a RawValue>,
        #[serde(borrow, default)]
        display_name: Option<&'a RawValue>,
    }
    let mut fields: BTreeMap<&str, &RawValue> = serde_json::from_str(body)?;
    let null = RawValue::NULL;
    let id = fields.remove("id").unwrap_or(null);
    let sender = match fields.remove("sender") {
        Some(sender) if sender.get() != "null" => serde_json::from_str(sender.get())?,
        _ => Sender {
            username: None,
            display_name: None,
        },
    };
    let timestamp = fields.get("created_at").copied().unwrap_or(null);
    let event_id = RawValue::from_string(event_id.to_string())?;
    fields.insert("message_id", id);
    fields.insert("username", sender.username.unwrap_or(null));
    fields.insert("display_name", sender.display_name.unwrap_or(null));
    fields.insert("timestamp", timestamp);
    fields.insert("event_id", &event_id);
    // `type` first, as every other frame has it.
    let mut frame = String::with_capacity(body.len() + 128);
    frame.push_str("{\"type\":");
    frame.push_str(&serde_json::to_string(kind)?);
    frame.push_str(",\"payload\":{");
    for (i, (key, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        // Borrowed, so written as it came: a key with an escape fails above.
        frame.push('"');
        frame.push_str(key);
        frame.push_str("\":");
        let raw = value.get();
        if raw.len() > 2 && (raw.starts_with('{') || raw.starts_with('[')) {
            frame.push_str(&serde_json::from_str::<Value>(raw)?.to_string());
        } else {
            frame.push_str(raw);
        }
    }
    frame.push_str("}}");
    Ok(frame)
}

/// SQL (bigint) for the original the message of `message` or
/// `message_updated` event row `e` is a reply to (null when it is none, or
/// deleted since): nodes rewrite the frames they hold of replies when an
/// original changes.
pub fn reply_to_id_sql(e: &str) -> String {
    format!(
        "(select rm.reply_to_id from messages rm
          where rm.id = ({e}.payload->>'message_id')::bigint)"
    )
}

/// SQL (jsonb) for what the log keeps of message `m`'s event: its ids only.
pub fn logged_payload_sql(m: &str) -> String {
    format!("jsonb_build_object('chat_id', {m}.chat_id, 'message_id', {m}.id)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sent_messages_fields_make_its_body_and_its_rest_reply() {
        // As `sent_fields_sql` writes them: json's own spacing, times in UTC
        // without a zone.
        let fields = |user: &str, reply: &str| {
            format!(
                r#"[7, 3, 1, "hi \"x\" }}] \u0001 ✓", false, "c-1", "2026-12-06T07:00:00.5", "2026-12-06T07:00:01", {user}, {reply}, [2, 4]]"#
            )
        };
        let body = |sender: Value, reply_to: Value| {
            json!({"id": 7, "chat_id": 3, "sender_id": 1, "content": "hi \"x\" }] \u{1} ✓",
                   "is_edited": false, "client_id": "c-1",
                   "created_at": "2026-12-06T07:00:00.5Z", "updated_at": "2026-12-06T07:00:01Z",
                   "sender": sender, "reply_to": reply_to, "mentions": [2, 4]})
        };
        let ann = json!({"id": 1, "username": "ann", "display_name": null});
        let cases = [
            (
                fields(r#"1, "ann", null"#, "null, null"),
                body(ann.clone(), Value::Null),
            ),
            (
                fields(r#"1, "ann", null"#, r#"5, [2, "the \"original\""]"#),
                body(
                    ann.clone(),
                    json!({"id": 5, "sender_id": 2, "content": "the \"original\"", "deleted": false}),
                ),
            ),
            (
                fields("null, null, null", "5, null"),
                body(
                    Value::Null,
                    json!({"id": 5, "sender_id": null, "content": null, "deleted": true}),
                ),
            ),
        ];
        for (fields, expected) in cases {
            let built: Value = serde_json::from_str(&sent_body(&fields).unwrap()).unwrap();
            let rest: Value = serde_json::from_str(&sent_rest(&fields).unwrap()).unwrap();

            assert_eq!(built, expected, "{fields}");
            let mut with_reactions = expected;
            with_reactions["reactions"] = json!([]);
            assert_eq!(rest, with_reactions, "{fields}");
        }
        assert!(sent_body("[7, 3]").is_err());
        assert!(sent_body(r#"{"id": 7}"#).is_err());
    }

    #[test]
    fn a_message_frame_is_compact_with_its_keys_in_byte_order_however_the_body_is_spaced() {
        // As PostgreSQL prints a jsonb body: keys by length, spaces after
        // `,` and `:`; a send's json body has a space before `:` too.
        let jsonb = r#"{"id": 5, "sender": {"id": 1, "username": "ann", "display_name": null}, "content": "a \"q\" \\ \n\u0001 ✓", "chat_id": 3, "mentions": [2, 3], "reply_to": {"id": 4, "content": "hi", "deleted": false, "sender_id": 2}, "client_id": null, "is_edited": false, "sender_id": 1, "created_at": "2026-12-06T07:00:00.5Z", "updated_at": "2026-12-06T07:01:00Z"}"#;
        let payload = json!({"chat_id": 3, "sender_id": 1, "content": "a \"q\" \\ \n\u{1} ✓",
                             "is_edited": false, "client_id": null,
                             "created_at": "2026-12-06T07:00:00.5Z",
                             "updated_at": "2026-12-06T07:01:00Z",
                             "reply_to": {"id": 4, "sender_id": 2, "content": "hi", "deleted": false},
                             "mentions": [2, 3], "message_id": 5, "username": "ann",
                             "display_name": null, "timestamp": "2026-12-06T07:00:00.5Z",
                             "event_id": 9});

        let json = jsonb.replace("\": ", "\" : ");

        for body in [jsonb, json.as_str()] {
            let frame = message_frame("message", 9, body).unwrap();

            assert_eq!(
                frame,
                format!("{{\"type\":\"message\",\"payload\":{payload}}}")
            );
        }
    }

    #[test]
    fn a_message_frame_is_its_body_renamed_for_the_seed_clients_with_the_event_id() {
        let body = |sender: Value, reply_to: Value| {
            json!({"id": 5, "chat_id": 3, "sender_id": sender["id"], "content": "a \"quoted\"\n✓",
                   "is_edited": false, "client_id": null, "created_at": "2026-12-06T07:00:00.5Z",
                   "updated_at": "2026-12-06T07:01:00Z", "sender": sender, "reply_to": reply_to,
                   "mentions": [2]})
        };
        let payload = |sender_id: Value, username: Value, display_name: Value, reply_to: Value| {
            json!({"chat_id": 3, "sender_id": sender_id, "content": "a \"quoted\"\n✓",
                   "is_edited": false, "client_id": null, "created_at": "2026-12-06T07:00:00.5Z",
                   "updated_at": "2026-12-06T07:01:00Z", "reply_to": reply_to, "mentions": [2],
                   "message_id": 5, "username": username, "display_name": display_name,
                   "timestamp": "2026-12-06T07:00:00.5Z", "event_id": 9})
        };
        let original = json!({"id": 4, "sender_id": 2, "content": "hi", "deleted": false});
        let cases = [
            (
                "message",
                body(
                    json!({"id": 1, "username": "ann", "display_name": "Ann"}),
                    Value::Null,
                ),
                payload(json!(1), json!("ann"), json!("Ann"), Value::Null),
            ),
            (
                "message_updated",
                body(
                    json!({"id": 1, "username": "ann", "display_name": null}),
                    original.clone(),
                ),
                payload(json!(1), json!("ann"), Value::Null, original),
            ),
            // The sender's account is gone: every field naming them is null.
            (
                "message",
                body(Value::Null, Value::Null),
                payload(Value::Null, Value::Null, Value::Null, Value::Null),
            ),
        ];
        for (kind, body, payload) in cases {
            let frame = message_frame(kind, 9, &body.to_string()).unwrap();
            assert!(
                frame.starts_with(&format!("{{\"type\":\"{kind}\",")),
                "{frame}"
            );
            let frame: Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(frame, json!({"type": kind, "payload": payload}));
        }
        assert!(message_frame("message", 9, "{\"id\": 5").is_err());
        assert!(message_frame("message", 9, "[5]").is_err());
    }
}
