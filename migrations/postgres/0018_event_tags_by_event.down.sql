-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS event_tags_by_event;
