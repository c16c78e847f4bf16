-- Idempotent answers are kept as the domain's typed answer (changed, and
-- the caller's membership), rendered by the HTTP layer, not as a stored
-- HTTP status and body. Keys answered before this migration are forgotten:
-- a retry under one is decided again, which for a join answers "already a
-- member" (200) and has no second effect.
DROP TABLE idempotency_keys;
CREATE TABLE idempotency_keys (
    user_id     UUID NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    answer      JSONB NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_by_expiry ON idempotency_keys (expires_at);
