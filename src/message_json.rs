//! The one definition of a message as clients see it. REST bodies and the
//! `message` / `message_updated` event payloads (sent live, through NOTIFY,
//! and replayed) are both built here, in SQL: a send builds its event in the
//! statement that stores it, so the notification leaves with the commit.

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
pub const MESSAGE_COLUMNS: &str =
    "id, chat_id, sender_id, content, is_edited, client_id, created_at, updated_at";

/// SQL (jsonb) for message row `m`, sent by user row `u` (left-joined: null
/// once the account is gone), as REST returns it: `{id, chat_id, sender_id,
/// content, is_edited, client_id, created_at, updated_at, sender}`.
pub fn message_json_sql(m: &str, u: &str) -> String {
    format!(
        "jsonb_build_object(
             'id', {m}.id, 'chat_id', {m}.chat_id, 'sender_id', {m}.sender_id,
             'content', {m}.content, 'is_edited', {m}.is_edited, 'client_id', {m}.client_id,
             'created_at', {created}, 'updated_at', {updated},
             'sender', case when {u}.id is null then null
                            else jsonb_build_object('id', {u}.id, 'username', {u}.username,
                                                    'display_name', {u}.display_name) end)",
        created = rfc3339_sql(&format!("{m}.created_at")),
        updated = rfc3339_sql(&format!("{m}.updated_at")),
    )
}

/// The fields of a message event's payload (see [`event_payload_sql`]) that
/// name its sender: all null once the sender's account is gone.
pub const SENDER_FIELDS: [&str; 3] = ["sender_id", "username", "display_name"];

/// SQL (jsonb) for the event payload of the message whose REST body is
/// `body` (a jsonb from [`message_json_sql`]): the same fields, with the id,
/// the sender's name and the send time under the names the seed's clients
/// read (`message_id`, `username`, `display_name`, `timestamp`).
pub fn event_payload_sql(body: &str) -> String {
    format!(
        "(({body}) - 'id' - 'sender') || jsonb_build_object(
             'message_id', ({body})->'id',
             'username', ({body})->'sender'->'username',
             'display_name', ({body})->'sender'->'display_name',
             'timestamp', ({body})->'created_at')"
    )
}

/// SQL (text) for the frame of event row `e` (id, kind, payload) as clients
/// receive it: `{"type": kind, "payload": {..., "event_id"}}`. The log keeps
/// only the ids of a message event (`{chat_id, message_id}`), never its
/// text: the frame is built from the message as it is now, so an edit leaves
/// no old version to replay and a deleted message's events build no frame
/// at all (NULL).
pub fn frame_sql(e: &str) -> String {
    format!(
        "case when {e}.kind in ('message', 'message_updated') then (
             select json_build_object('type', {e}.kind, 'payload',
                        {payload} || jsonb_build_object('event_id', {e}.id))::text
             from messages fm left join users fu on fu.id = fm.sender_id
             where fm.id = ({e}.payload->>'message_id')::bigint)
         else json_build_object('type', {e}.kind, 'payload',
                  {e}.payload || jsonb_build_object('event_id', {e}.id))::text end",
        payload = event_payload_sql(&message_json_sql("fm", "fu")),
    )
}

/// SQL (jsonb) for what the log keeps of message `m`'s event: its ids only.
pub fn logged_payload_sql(m: &str) -> String {
    format!("jsonb_build_object('chat_id', {m}.chat_id, 'message_id', {m}.id)")
}
