CREATE TABLE joins_prev (
    event_id         BLOB NOT NULL REFERENCES events (id),
    user_id          BLOB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
        ('active', 'waitlisted', 'offered', 'left', 'declined', 'expired', 'cancelled')),
    order_key        INTEGER NOT NULL,
    seats            INTEGER NOT NULL DEFAULT 1 CHECK (seats BETWEEN 1 AND 20),
    offer_expires_at INTEGER,
    joined_at        INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
INSERT INTO joins_prev SELECT event_id, user_id, status, order_key, seats, offer_expires_at,
    joined_at, updated_at FROM joins;
DROP TABLE joins;
ALTER TABLE joins_prev RENAME TO joins;
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';

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
INSERT INTO outbox_prev SELECT id, message_id, topic, aggregate_id, stream_version, event_type,
    payload, request_id, status, attempts, next_attempt_at, last_error, created_at,
    published_at, traceparent FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_prev RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_published ON outbox (published_at) WHERE status = 'published';
