-- Message search (GET /api/v1/messages/search).
--
-- `search` holds the message's words as a tsvector, written by the server
-- with the content on every send and edit (`messages::search` turns text
-- into words, for messages and for queries alike, so the two agree in every
-- language and whatever the database's locale). PostgreSQL's own parser
-- keeps URLs, e-mail addresses, file names and versions whole; the server
-- splits them into their parts, and a query finds the whole as its parts in
-- order. Rows written before this migration (or by anything but the
-- server) have no vector yet; a starting server fills them in the
-- background, found through the partial index below, which rows written by
-- the server never enter.
alter table messages add column search tsvector;

-- `fastupdate` (PostgreSQL's default, stated because it matters): a send
-- appends its words to the index's pending list instead of updating a
-- posting tree per word, and the server merges the list in the background
-- (`gin_clean_pending_list`), so the merge does not fall to a send, which
-- holds the event log's lock while it runs. Searches read the pending list
-- too: nothing sent is missed while it waits.
create index messages_search on messages using gin (search) with (fastupdate = on);
create index messages_search_missing on messages (id) where search is null;
