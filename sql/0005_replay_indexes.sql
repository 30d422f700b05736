-- Replay reads one user's events: those of their chats, by chat, and those
-- addressed to them. Without these, a user of one quiet chat resuming from
-- an old `since` made PostgreSQL read every event logged since then.
--
-- (chat_id, id) serves the per-chat walk in id order; every event insert
-- pays for it. The addressed events are the membership ones (a few per
-- chat), so their index is partial: message events, the bulk of the log,
-- have no addressed users and never touch it.
create index events_chat_id_id on events (chat_id, id);
create index events_user_ids on events using gin (user_ids) where user_ids <> '{}';
