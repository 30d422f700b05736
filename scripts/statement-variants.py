#!/usr/bin/env python3
"""Writes the variants of the group-commit statement that BENCHMARKS.md
times with scripts/statement-cpu.sh, each an edit of the server's text:

    target/release/examples/send_batch_sql > /tmp/server.sql
    scripts/statement-variants.py /tmp/server.sql /tmp/variants
    scripts/statement-cpu.sh /tmp/variants/*.sql

  no-notice.sql   the notice carries the routing ids only, not the
                  message's fields (so other nodes would read the log)
  no-json.sql     no-notice, and the message's fields reduced to its id (so
                  the REST body returned is that too)
  no-locks.sql    the sends not checked against the locked memberships and
                  token versions (so those locks are not taken)
  storage.sql     what storing a message needs and nothing else: the message
                  row (its search vector and indexes), event_seq, the event
                  row, a NOTIFY of ids
BENCHMARKS.md's "Where PostgreSQL's CPU per message goes (5c823f9)" ran
these against that commit's statement, which also built the frame (its
"no-frame"); since 2ec29dd the statement writes the message's fields as
one flat array, and the variants edit that.
A variant fails loudly when the text it edits is gone.
"""
import os
import sys


def edit(text, old, new):
    if old not in text:
        sys.exit(f"statement-variants: {old[:60]!r} is no longer in the statement")
    return text.replace(old, new)


def between(text, start, end, new, keep_end=True):
    i = text.index(start)
    j = text.index(end, i)
    return text[:i] + new + (text[j:] if keep_end else text[j + len(end):])


def no_notice(s):
    return between(s, "), sent as (", ")\n         select req.n",
                   "), sent as (\n select ev.id, pg_notify('chatapp_events', "
                   "json_build_object('id', ev.id, 'chat_id', ev.chat_id)::text) from ev\n ")


def no_json(s):
    s = no_notice(s)
    return between(s, "json_build_array(\n             m.id,", "as fields\n",
                   "json_build_array(m.id) ")


def no_locks(s):
    return edit(s, """where (r.chat_id, r.sender_id, r.version) in (
                       select chat_id, user_id, token_version from locked_members)
               and (r.reply_to_id""", "where (r.reply_to_id")


STORAGE = """with req as (
  select r.n, r.chat_id, r.sender_id, r.content, r.client_id, r.search,
         nextval('messages_id_seq'::regclass) as id
  from unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[],
              $7::text[], $8::int4[])
       with ordinality as r (chat_id, sender_id, content, client_id, search, reply_to_id,
                             names, version, n)
), m as (
  insert into messages (id, chat_id, sender_id, content, client_id, search)
  overriding system value
  select id, chat_id, sender_id, content, client_id, search::tsvector from req order by id
  returning id, chat_id
), seq as (
  update event_seq set last_id = last_id + (select count(*) from m)
  returning last_id - (select count(*) from m) as base
), ins as (
  insert into events (id, chat_id, kind, user_ids, payload)
  select seq.base + row_number() over (order by m.id), m.chat_id, 'message', '{}',
         jsonb_build_object('chat_id', m.chat_id, 'message_id', m.id)
  from seq, m order by m.id
  returning id, chat_id
)
select pg_notify('chatapp_events', json_build_object('id', id, 'chat_id', chat_id)::text)
from ins
"""


def main():
    server, out = sys.argv[1], sys.argv[2]
    text = open(server).read()
    os.makedirs(out, exist_ok=True)
    variants = {"no-notice": no_notice(text), "no-json": no_json(text),
                "no-locks": no_locks(text), "storage": STORAGE}
    for name, sql in variants.items():
        with open(os.path.join(out, name + ".sql"), "w") as f:
            f.write(sql)


main()
