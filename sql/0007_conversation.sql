-- Conversation features: replies, reactions, mentions and pins.

-- A reply names an earlier message of its chat. No foreign key: a reply
-- keeps the id of an original deleted since (shown as deleted, without its
-- text). A nullable column without a default costs no rewrite of the table.
alter table messages add column reply_to_id bigint;

