-- Real-time delivery: the event log, its commit-ordered counter, and presence.

-- One row. Every event-producing transaction bumps last_id as its last step, so
-- the row lock serialises event ids with commit order: when a reader sees event
-- N committed, every event below N is committed too. Rolled-back transactions
-- roll the counter back, so ids have no holes and a listener can spot a missed
-- notification by the gap it leaves.
create table event_seq (
    singleton      boolean primary key default true check (singleton),
    last_id        bigint  not null default 0,
    -- Highest id removed by retention pruning; `since` below it cannot be replayed.
    pruned_through bigint  not null default 0
);
insert into event_seq default values;

create table events (
    id         bigint      primary key,
    -- No foreign key: a chat_deleted event outlives its chat.
    chat_id    bigint,
    kind       text        not null,
    -- Users addressed besides the chat's current members (added, removed, deleted-chat members).
    user_ids   bigint[]    not null default '{}',
    payload    jsonb       not null,
    created_at timestamptz not null default now()
);
create index events_chat_id_id on events (chat_id, id);
create index events_user_ids on events using gin (user_ids);
create index events_created_at on events (created_at);

-- Which users hold connections on which node; a node that stops heartbeating
-- is reaped by the others and its users shown offline.
create table presence_nodes (
    node_id      text        primary key,
    heartbeat_at timestamptz not null default now()
);
create table presence_sessions (
    node_id text   not null references presence_nodes (node_id) on delete cascade,
    user_id bigint not null references users (id) on delete cascade,
    primary key (user_id, node_id)
);
create index presence_sessions_node on presence_sessions (node_id);
