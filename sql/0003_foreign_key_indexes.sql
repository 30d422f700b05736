-- Indexes behind the `on delete set null` foreign keys: deleting an account
-- otherwise scans every message (and chat) to null its references.
create index messages_sender_id on messages (sender_id);
create index chats_creator_id on chats (creator_id);
