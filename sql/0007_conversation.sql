-- Conversation features: replies, reactions, mentions and pins.

-- A reply names an earlier message of its chat. No foreign key: a reply
-- keeps the id of an original deleted since (shown as deleted, without its
-- text). A nullable column without a default costs no rewrite of the table.
alter table messages add column reply_to_id bigint;

-- Reactions: one row per message, emoji and user. The message's deletion,
-- or the user's, takes them along.
create table reactions (
    message_id bigint      not null references messages (id) on delete cascade,
    emoji      text        not null,
    user_id    bigint      not null references users (id) on delete cascade,
    -- Drawn under the message's lock (see `messages::reactions`): a
    -- message's emoji are listed in the order they were first used.
    seq        bigint      generated always as identity,
    created_at timestamptz not null default now(),
    primary key (message_id, emoji, user_id)
);
-- Behind `on delete cascade` of an account.
create index reactions_user_id on reactions (user_id);
