-- A join alone in its commit wrote 13 pages to the WAL, one B-tree page per
-- table and index it touched (docs/BENCHMARKS.md, "Fewer pages per
-- commit"). Two of them only served SQLite's bookkeeping:
--
-- * event_log kept each row twice, in a rowid table and in the index of
--   its primary key. WITHOUT ROWID stores the row in its primary key's
--   B-tree alone (its rows are small, as SQLite advises for such tables).
-- * outbox's AUTOINCREMENT updated sqlite_sequence on every insert. A plain
--   INTEGER PRIMARY KEY numbers a new row after the largest id present,
--   and the purge always keeps the newest row, so ids still never go back.

CREATE TABLE event_log_next (
    stream_id      BLOB NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    request_id     TEXT,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
) WITHOUT ROWID;
INSERT INTO event_log_next SELECT stream_id, version, event_type, schema_version, payload,
    request_id, recorded_at FROM event_log;
DROP TABLE event_log;
ALTER TABLE event_log_next RENAME TO event_log;

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
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    published_at    INTEGER,
    traceparent     TEXT,
    -- One message per fact: consumers dedupe on message_id.
    UNIQUE (aggregate_id, stream_version)
);
INSERT INTO outbox_next SELECT id, message_id, topic, aggregate_id, stream_version, event_type,
    payload, request_id, status, attempts, next_attempt_at, last_error, created_at,
    published_at, traceparent FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_next RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_published ON outbox (published_at) WHERE status = 'published';
