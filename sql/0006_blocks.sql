-- Who blocked whom. A blocked user cannot put their blocker into a new
-- direct message or add them to a group, and neither sees the other's
-- presence; the blocker does not see the blocked user's typing.
create table blocks (
    blocker_id bigint      not null references users (id) on delete cascade,
    blocked_id bigint      not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    primary key (blocker_id, blocked_id),
    constraint blocks_not_self check (blocker_id <> blocked_id)
);
-- "Who blocked me": checked when a user adds others to a chat.
create index blocks_blocked_id on blocks (blocked_id, blocker_id);
