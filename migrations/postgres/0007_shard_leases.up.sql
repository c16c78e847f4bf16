-- Who holds each shard. Taking a shard (new, expired, or handed over)
-- increments its epoch; every journal commit checks, in its transaction,
-- that the committing node holds each touched shard at the epoch its
-- actors were activated with. `node` is NULL when the shard is free.
CREATE TABLE shard_leases (
    shard      INTEGER PRIMARY KEY CHECK (shard >= 0),
    node       UUID,
    epoch      BIGINT NOT NULL DEFAULT 0,
    -- Unix microseconds; the holder renews with its heartbeat.
    expires_at BIGINT NOT NULL DEFAULT 0
);
