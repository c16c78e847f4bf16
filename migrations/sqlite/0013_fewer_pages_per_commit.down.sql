CREATE TABLE event_log_prev (
    stream_id      BLOB NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    request_id     TEXT,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
);
INSERT INTO event_log_prev SELECT stream_id, version, event_type, schema_version, payload,
    request_id, recorded_at FROM event_log;
DROP TABLE event_log;
ALTER TABLE event_log_prev RENAME TO event_log;

CREATE TABLE outbox_prev (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
