-- Consumers of the outbox record each message they handled, per handler, in
-- the same transaction as the handler's effect: a redelivered message (the
-- relay delivers at least once) is recognised and skipped.
CREATE TABLE inbox (
    message_id   BLOB NOT NULL,
    handler      TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, handler)
);

-- The daily-facts consumer's read model: how many facts of each kind were
-- committed per UTC day (GET /v1/admin/stats).
CREATE TABLE daily_facts (
    day        TEXT NOT NULL,
    event_type TEXT NOT NULL,
    facts      BIGINT NOT NULL,
    PRIMARY KEY (day, event_type)
);
