-- Turnout core schema (SQLite). Times are unix microseconds, UTC: they sort
-- and compare exactly, the same way on SQLite and Postgres.

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    interests     TEXT NOT NULL DEFAULT '[]',
    home_lat      REAL,
    home_lon      REAL,
    role          TEXT NOT NULL DEFAULT 'attendee' CHECK (role IN ('attendee', 'organizer', 'admin')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE venues (
    id         BLOB PRIMARY KEY,
    owner_id   BLOB NOT NULL,
    name       TEXT NOT NULL,
    lat        REAL NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        REAL NOT NULL CHECK (lon BETWEEN -180 AND 180),
    address    TEXT,
    created_at INTEGER NOT NULL
);

-- The source of truth: every fact of every event, in order.
CREATE TABLE event_log (
    stream_id      BLOB NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    request_id     TEXT,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
);

CREATE TABLE snapshots (
    stream_id BLOB PRIMARY KEY,
    version   INTEGER NOT NULL,
    state     TEXT NOT NULL,
    taken_at  INTEGER NOT NULL
);

-- Read model: one row per event with live counts. The CHECKs are the second
-- line of defence behind the actor.
CREATE TABLE events (
    id             BLOB PRIMARY KEY,
    owner_id       BLOB NOT NULL,
    venue_id       BLOB NOT NULL REFERENCES venues (id),
    title          TEXT NOT NULL,
    description    TEXT,
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER,
    capacity       INTEGER NOT NULL CHECK (capacity > 0),
    status         TEXT NOT NULL CHECK (status IN ('draft', 'published', 'cancelled')),
    active_count   INTEGER NOT NULL CHECK (active_count >= 0 AND active_count <= capacity),
    waitlist_count INTEGER NOT NULL CHECK (waitlist_count >= 0),
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX events_by_start ON events (status, starts_at, id);
CREATE INDEX events_by_venue ON events (venue_id, starts_at, id);

CREATE TABLE event_tags (
    tag      TEXT NOT NULL,
    event_id BLOB NOT NULL REFERENCES events (id),
    PRIMARY KEY (tag, event_id)
) WITHOUT ROWID;

-- Read model: one row per (event, user) that ever joined.
CREATE TABLE joins (
    event_id   BLOB NOT NULL REFERENCES events (id),
    user_id    BLOB NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'waitlisted', 'left', 'cancelled')),
    order_key  INTEGER NOT NULL,
    joined_at  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);

CREATE TABLE idempotency_keys (
    user_id     BLOB NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_by_expiry ON idempotency_keys (expires_at);

-- Written in the same transaction as the facts; a relay publishes them.
-- Deliberately few indexes: every join writes a row here.
CREATE TABLE outbox (
    -- Monotonic: the relay publishes in this order.
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
    -- One message per fact: consumers dedupe on message_id.
    UNIQUE (aggregate_id, stream_version)
);
