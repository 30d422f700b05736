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

-- Mentions: the members a message names with @username, resolved when it is
-- sent or edited; the message's own, as its body shows them.
alter table messages add column mentions bigint[] not null default '{}';

-- Who was mentioned where by someone else, for a member's unread mentions
-- (by chat, after the read marker) and their mentions feed (newest first).
-- Kept from messages.mentions by the triggers below: a message without
-- mentions costs a send nothing more than their WHEN test.
create table mentions (
    user_id    bigint not null references users (id) on delete cascade,
    message_id bigint not null references messages (id) on delete cascade,
    chat_id    bigint not null,
    primary key (user_id, message_id)
);
create index mentions_user_chat on mentions (user_id, chat_id, message_id);
-- Behind `on delete cascade` of a message.
create index mentions_message_id on mentions (message_id);

create function index_mentions() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE' then
        delete from mentions where message_id = new.id;
    end if;
    insert into mentions (user_id, message_id, chat_id)
    select mentioned, new.id, new.chat_id from unnest(new.mentions) mentioned
    where mentioned is distinct from new.sender_id
    on conflict do nothing;
    return null;
end $$;
create trigger messages_index_mentions after insert on messages
    for each row when (new.mentions <> '{}') execute function index_mentions();
create trigger messages_reindex_mentions after update of mentions on messages
    for each row when (old.mentions is distinct from new.mentions)
    execute function index_mentions();

-- A member who leaves a chat leaves its mentions of them behind: the feed
-- and the counts read only current members' rows.
create function forget_mentions() returns trigger language plpgsql as $$
begin
    delete from mentions where user_id = old.user_id and chat_id = old.chat_id;
    return null;
end $$;
create trigger chat_members_forget_mentions after delete on chat_members
    for each row execute function forget_mentions();

-- Pins: the messages a chat keeps pinned, by whom and when. A deleted
-- message leaves them; a deleted account leaves its pins without a pinner.
create table pins (
    message_id bigint      primary key references messages (id) on delete cascade,
    chat_id    bigint      not null,
    pinned_by  bigint      references users (id) on delete set null,
    -- The time of the insert, under the chat's lock (see `chats::pins`),
    -- not of its transaction's start: pins are listed in the order made.
    pinned_at  timestamptz not null default clock_timestamp()
);
-- A chat's pins, most recently pinned first.
create index pins_chat_id on pins (chat_id, pinned_at desc, message_id desc);
-- Behind `on delete set null` of an account.
create index pins_pinned_by on pins (pinned_by);
