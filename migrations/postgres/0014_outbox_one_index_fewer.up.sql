-- The outbox's UNIQUE (aggregate_id, stream_version) guarded nothing the
-- event log does not: the journal writes an outbox row only for a fact it
-- inserts in the same statement, and the log's primary key refuses a fact
-- written twice. Every join paid for the index's upkeep.
ALTER TABLE outbox DROP CONSTRAINT outbox_aggregate_id_stream_version_key;
