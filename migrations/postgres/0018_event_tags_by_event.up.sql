-- An event's tags are read by event (every event read that misses the
-- cache, each hub's start) and rewritten by event (each create or edit):
-- without an index on the event, each of those read the whole table.
-- Not built CONCURRENTLY: the migrator holds a session advisory lock, and a
-- second node waiting on it at start is a transaction a concurrent build
-- waits for in turn (a deadlock that leaves an invalid index behind). The
-- table is small: one row per tag of an event.
CREATE INDEX event_tags_by_event ON event_tags (event_id);
