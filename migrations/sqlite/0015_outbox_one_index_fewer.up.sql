-- A join alone in its commit wrote a page of the outbox's UNIQUE
-- (aggregate_id, stream_version) index, at a random place among the
-- events (docs/BENCHMARKS.md, "One index fewer per commit"). It guarded
-- nothing the event log does not: the journal writes an outbox row only for
-- a fact it has just inserted in the same transaction, and the log's
-- primary key (stream_id, version) refuses a fact written twice, so a fact
-- cannot have two outbox rows. SQLite cannot drop a table's constraint: the
-- table is built again without it.

CREATE TABLE outbox_next (
    -- Never goes back (the purge keeps the newest row): the relay
    -- publishes in this order.
    id              INTEGER PRIMARY KEY,
    message_id      BLOB NOT NULL,
    topic           TEXT NOT NULL,
    aggregate_id    BLOB NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    request_id      TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status = 'pending' OR status = 'published' OR status = 'dead'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    published_at    INTEGER,
    traceparent     TEXT
);
INSERT INTO outbox_next SELECT id, message_id, topic, aggregate_id, stream_version, event_type,
    payload, request_id, status, attempts, next_attempt_at, last_error, created_at,
    published_at, traceparent FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_next RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_published ON outbox (published_at) WHERE status = 'published';
