CREATE TABLE outbox_prev (
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
    traceparent     TEXT,
    -- One message per fact: consumers dedupe on message_id.
    UNIQUE (aggregate_id, stream_version)
);
INSERT INTO outbox_prev SELECT id, message_id, topic, aggregate_id, stream_version, event_type,
    payload, request_id, status, attempts, next_attempt_at, last_error, created_at,
    published_at, traceparent FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_prev RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_published ON outbox (published_at) WHERE status = 'published';
