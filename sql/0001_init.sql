-- Core schema: users, chats, memberships and messages.

create function set_updated_at() returns trigger language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end $$;

create table users (
    id             bigint generated always as identity primary key,
    username       text        not null,
    password_hash  text        not null,
    display_name   text,
    -- Bumped on password change; tokens carry it, so older tokens stop working at once.
    token_version  integer     not null default 0,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    last_seen      timestamptz
);
-- Usernames are unique case-insensitively; text_pattern_ops also serves prefix search.
create unique index users_username_key on users (lower(username) text_pattern_ops);
create index users_display_name_prefix on users (lower(display_name) text_pattern_ops);
create trigger users_updated_at before update of username, display_name, password_hash on users
    for each row execute function set_updated_at();

create table chats (
    id               bigint generated always as identity primary key,
    name             text,
    is_group         boolean     not null,
    creator_id       bigint      references users (id) on delete set null,
    -- "min:max" of the two user ids for a direct message: one DM per pair, enforced here.
    dm_key           text        unique,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    last_activity_at timestamptz not null default now(),
    constraint chats_dm_has_key check (is_group or dm_key is not null)
);
create trigger chats_updated_at before update of name, is_group on chats
    for each row execute function set_updated_at();

create table chat_members (
    chat_id              bigint      not null references chats (id) on delete cascade,
    user_id              bigint      not null references users (id) on delete cascade,
    is_admin             boolean     not null default false,
    joined_at            timestamptz not null default now(),
    last_read_message_id bigint,
    primary key (chat_id, user_id)
);
-- A user's memberships (chat list, permission checks by user).
create index chat_members_user_id on chat_members (user_id, chat_id);

create table messages (
    id          bigint generated always as identity primary key,
    chat_id     bigint      not null references chats (id) on delete cascade,
    sender_id   bigint      references users (id) on delete set null,
    content     text        not null,
    is_edited   boolean     not null default false,
    client_id   text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
-- History pages: a chat's messages by id, both directions.
create index messages_chat_id_id on messages (chat_id, id);
-- Idempotent sends: one message per (sender, client_id), across restarts.
create unique index messages_sender_client_id_key on messages (sender_id, client_id)
    where client_id is not null;
create trigger messages_updated_at before update of content on messages
    for each row execute function set_updated_at();
