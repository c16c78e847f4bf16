-- The outbox relay reads pending rows in id order and lists dead ones: small
-- partial indexes, so published rows (the vast majority) cost nothing here.
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';

-- Leases: one holder at a time per name (the outbox relay), with expiry, so
-- several server processes on one database publish through one relay.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
