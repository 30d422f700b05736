-- No query reads events by user_ids or by chat_id: the listener, replay and
-- `since` read id ranges (the primary key) and pruning reads created_at.
-- Every event insert still paid for both indexes (the GIN one also merges
-- its pending list inside whichever insert overflows it), on the path that
-- holds the event_seq lock.
drop index if exists events_user_ids;
drop index if exists events_chat_id_id;
