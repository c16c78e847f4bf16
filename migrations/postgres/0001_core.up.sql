-- Turnout core schema (Postgres). Times are unix microseconds, UTC: they sort
-- and compare exactly, the same way on SQLite and Postgres.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    interests     JSONB NOT NULL DEFAULT '[]',
    home_lat      DOUBLE PRECISION,
    home_lon      DOUBLE PRECISION,
    role          TEXT NOT NULL DEFAULT 'attendee' CHECK (role IN ('attendee', 'organizer', 'admin')),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE venues (
    id         UUID PRIMARY KEY,
    owner_id   UUID NOT NULL,
    name       TEXT NOT NULL,
    lat        DOUBLE PRECISION NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        DOUBLE PRECISION NOT NULL CHECK (lon BETWEEN -180 AND 180),
    address    TEXT,
    created_at BIGINT NOT NULL
);

-- The source of truth: every fact of every event, in order.
CREATE TABLE event_log (
    stream_id      UUID NOT NULL,
    version        BIGINT NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema_version BIGINT NOT NULL,
    payload        JSONB NOT NULL,
    request_id     TEXT,
    recorded_at    BIGINT NOT NULL,
    PRIMARY KEY (stream_id, version)
);

CREATE TABLE snapshots (
    stream_id UUID PRIMARY KEY,
    version   BIGINT NOT NULL,
    state     JSONB NOT NULL,
    taken_at  BIGINT NOT NULL
);

-- Read model: one row per event with live counts. The CHECKs are the second
-- line of defence behind the actor.
CREATE TABLE events (
    id             UUID PRIMARY KEY,
    owner_id       UUID NOT NULL,
    venue_id       UUID NOT NULL REFERENCES venues (id),
    title          TEXT NOT NULL,
    description    TEXT,
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT,
    capacity       BIGINT NOT NULL CHECK (capacity > 0),
    status         TEXT NOT NULL CHECK (status IN ('draft', 'published', 'cancelled')),
    active_count   BIGINT NOT NULL CHECK (active_count >= 0 AND active_count <= capacity),
    waitlist_count BIGINT NOT NULL CHECK (waitlist_count >= 0),
    version        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX events_by_start ON events (status, starts_at, id);
CREATE INDEX events_by_venue ON events (venue_id, starts_at, id);

CREATE TABLE event_tags (
    tag      TEXT NOT NULL,
    event_id UUID NOT NULL REFERENCES events (id),
    PRIMARY KEY (tag, event_id)
);

-- Read model: one row per (event, user) that ever joined.
CREATE TABLE joins (
    event_id   UUID NOT NULL REFERENCES events (id),
    user_id    UUID NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'waitlisted', 'left', 'cancelled')),
    order_key  BIGINT NOT NULL,
    joined_at  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);

CREATE TABLE idempotency_keys (
    user_id     UUID NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    response    JSONB NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_by_expiry ON idempotency_keys (expires_at);

-- Written in the same transaction as the facts; a relay publishes them.
-- Deliberately few indexes: every join writes a row here.
CREATE TABLE outbox (
    -- Monotonic: the relay publishes in this order.
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      UUID NOT NULL,
    topic           TEXT NOT NULL,
    aggregate_id    UUID NOT NULL,
    stream_version  BIGINT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         JSONB NOT NULL,
    request_id      TEXT,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    published_at    BIGINT,
    -- One message per fact: consumers dedupe on message_id.
    UNIQUE (aggregate_id, stream_version)
);
