-- Inbox rows are purged once no redelivery can come (the outbox's
-- retention): the purge finds them by when they were handled.
CREATE INDEX inbox_by_time ON inbox (processed_at);
