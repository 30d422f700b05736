-- Each chat's member count, kept by the database: presence treats chats
-- above `ws.presence_max_members` differently and asks on every connection
-- and every presence change, where counting a large chat's members each
-- time would cost as much as the fan-out it avoids.
alter table chats add column member_count bigint not null default 0;
update chats c set member_count = (select count(*) from chat_members m where m.chat_id = c.id);

-- Per statement, not per row: adding 1,000 members updates the chat once.
-- Membership changes lock the chat row first anyway (see chats::lock_role),
-- so the update adds no lock they do not already take.
create function count_chat_members() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        update chats c set member_count = c.member_count + d.n
        from (select chat_id, count(*) as n from changed group by chat_id) d
        where c.id = d.chat_id;
    else
        update chats c set member_count = c.member_count - d.n
        from (select chat_id, count(*) as n from changed group by chat_id) d
        where c.id = d.chat_id;
    end if;
    return null;
end $$;
create trigger chat_members_counted_in after insert on chat_members
    referencing new table as changed
    for each statement execute function count_chat_members();
create trigger chat_members_counted_out after delete on chat_members
    referencing old table as changed
    for each statement execute function count_chat_members();
