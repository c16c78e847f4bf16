-- no-transaction
-- An event's tags are read by event (every event read that misses the
-- cache, each hub's start) and rewritten by event (each create or edit):
-- without an index on the event, each of those read the whole table.
-- Built concurrently: nodes keep writing events while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS event_tags_by_event ON event_tags (event_id);
