-- When each session began (a statement's own clock, not its transaction's):
-- a node whose LISTEN connection was away announces again the presence of
-- users whose sessions began, or who were last seen, while it was away.
alter table presence_sessions add column began_at timestamptz not null default clock_timestamp();
