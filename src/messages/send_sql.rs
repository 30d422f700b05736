//! The send statements: one send committed on its own, and many committed
//! together (group commit). Kept apart from the queue that runs them
//! (`send`): the benchmark's pgbench ceilings run these very strings.

use super::mentions::mentions_sql;
use crate::events;
use crate::membership::lock_members;
use crate::message_json::{MESSAGE_COLUMNS, logged_payload_sql, sent_fields_sql};
use std::sync::LazyLock;

/// Sends message `$3` with client id `$4` and search vector `$5` (a
/// `tsvector` literal) from `$2` into chat `$1`, in reply to `$6` (or
/// null), mentioning the members `$7` names (see `mentions`), in one
/// statement (one round trip, committed on its own): inserts it if `$2` is
/// a member whose token of version `$8` is still good, `$6` is null or a
/// message of the chat, and the client id is new, touches the chat, appends the `message` event and NOTIFYs it;
/// returns the message (id, chat, client id, and its fields as the notice
/// carries them: `message_json::sent_fields_sql`) and `event_id`, or no row
/// when nothing was inserted.
///
/// The sender, chat and membership are locked first (`lock_members`),
/// before the event_seq row: a deletion or membership change of the chat
/// holds the chat, then appends its events, so a send taking event_seq
/// first would deadlock with it. The original of a reply is locked next
/// (key share: only its deletion and edits wait, and this statement waits
/// for theirs), so it cannot be deleted or edited between the check and
/// the commit, and the preview is read from the locked row, the latest
/// committed version. The event_seq row lock (see `events`) is held only
/// while PostgreSQL runs and commits this statement, never across a
/// network round trip. Public so the benchmark's pgbench ceiling runs the
/// very statement the server runs.
pub static SEND_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with {locked}, original as (
             select id, sender_id, content from messages
             where id = $6 and chat_id = $1
             for key share
         ), m as (
             insert into messages (chat_id, sender_id, content, client_id, search, reply_to_id,
                                   mentions)
             select $1, $2, $3, $4, $5::tsvector, $6, {mentions} from locked_members
             where ($6::bigint is null or exists (select 1 from original))
             on conflict (sender_id, client_id) where client_id is not null do nothing
             returning {MESSAGE_COLUMNS}
         ), b as (
             select m.id, m.chat_id, m.client_id, m.reply_to_id, {fields} as fields
             from m left join users u on u.id = m.sender_id
         ), touched as (
             update chats set last_activity_at = now() where id = (select chat_id from m)
         ), seq as (
             update event_seq set last_id = last_id + 1 where exists (select 1 from m)
             returning last_id
         ), ins as (
             insert into events (id, chat_id, kind, user_ids, payload)
             select seq.last_id, b.chat_id, 'message', '{{}}', {logged}
             from seq, b
             returning id
         ), ev as (
             select ins.id, b.chat_id, 'message' as kind, '{{}}'::bigint[] as user_ids,
                    b.id as message_id, b.reply_to_id, null::text as frame, null::text as body,
                    b.fields::text as sent
             from ins, b
         ), sent as (
             {notify}
         )
         select b.id, b.chat_id, b.client_id, ev.sent as fields, (select id from sent) as event_id
         from b, ev",
        locked = lock_members("array[$1::int8]", "array[$2::int8]", "array[$8::int4]"),
        mentions = mentions_sql("$7::text", "$1"),
        fields = sent_fields_sql("m", "u", "original"),
        logged = logged_payload_sql("b"),
        notify = events::notify_sql("ev"),
    )
});

/// [`SEND_SQL`] for many sends at once, committed together: element `n`
/// (counted from one) of the arrays `$1` chat ids, `$2` sender ids, `$3`
/// contents, `$4` client ids, `$5` search vectors, `$6` originals replied
/// to, `$7` names mentioned, `$8` the senders' token versions is one send. Message ids are drawn in array
/// order before the insert (from the identity column's sequence named as a
/// `regclass` constant: resolved once when the statement is prepared, where
/// `pg_get_serial_sequence` would look it up in the catalog for every row),
/// so each returned row carries its `n`; messages
/// and events are numbered in that order. Sends not inserted (not a member,
/// a token revoked since, no such original in the chat, client id reused,
/// even within the batch) return no row.
pub static SEND_BATCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with {locked}, originals as (
             select id, chat_id, sender_id, content from messages
             where id = any($6::int8[])
             for key share
         ), req as (
             select r.n, r.chat_id, r.sender_id, r.content, r.client_id, r.search,
                    r.reply_to_id, r.names,
                    nextval('messages_id_seq'::regclass) as id
             from unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[],
                         $7::text[], $8::int4[])
                  with ordinality as r (chat_id, sender_id, content, client_id, search,
                                        reply_to_id, names, version, n)
             where (r.chat_id, r.sender_id, r.version) in (
                       select chat_id, user_id, token_version from locked_members)
               and (r.reply_to_id is null or exists (
                   select 1 from originals o where o.id = r.reply_to_id and o.chat_id = r.chat_id))
             order by r.n
         ), m as (
             insert into messages (id, chat_id, sender_id, content, client_id, search,
                                   reply_to_id, mentions)
             overriding system value
             select id, chat_id, sender_id, content, client_id, search::tsvector, reply_to_id,
                    {mentions}
             from req order by id
             on conflict (sender_id, client_id) where client_id is not null do nothing
             returning {MESSAGE_COLUMNS}
         ), b as (
             select m.id, m.chat_id, m.client_id, m.reply_to_id, {fields} as fields
             from m left join users u on u.id = m.sender_id
         ), touched as (
             update chats set last_activity_at = now() where id in (select chat_id from m)
         ), seq as (
             update event_seq set last_id = last_id + (select count(*) from m)
             where exists (select 1 from m)
             returning last_id - (select count(*) from m) as base
         ), ins as (
             insert into events (id, chat_id, kind, user_ids, payload)
             select seq.base + row_number() over (order by b.id), b.chat_id, 'message', '{{}}',
                    {logged}
             from seq, b
             order by b.id
             returning id, (payload->>'message_id')::bigint as message_id
         ), ev as (
             select ins.id, b.chat_id, 'message' as kind, '{{}}'::bigint[] as user_ids,
                    b.id as message_id, b.reply_to_id, null::text as frame, null::text as body,
                    b.fields::text as sent
             from ins join b on b.id = ins.message_id
         ), sent as (
             {notify}
         )
         select req.n, b.id, b.chat_id, b.client_id, ev.sent as fields, ev.id as event_id
         from sent join ev on ev.id = sent.id join b on b.id = ev.message_id
         join req on req.id = b.id",
        locked = lock_members("$1::int8[]", "$2::int8[]", "$8::int4[]"),
        mentions = mentions_sql("req.names", "req.chat_id"),
        fields = sent_fields_sql("m", "u", "originals"),
        logged = logged_payload_sql("b"),
        notify = events::notify_sql("ev"),
    )
});
