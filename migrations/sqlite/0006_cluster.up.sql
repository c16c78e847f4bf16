-- The cluster's membership. The shard count is fixed the first time a node
-- starts on this database; every later node must be configured alike.
CREATE TABLE cluster (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    shard_count INTEGER NOT NULL CHECK (shard_count > 0)
);

-- Each running node, as it registered and last heartbeated. A node whose
-- heartbeat is older than the lease TTL is dead for placement.
CREATE TABLE nodes (
    id           BLOB PRIMARY KEY,
    address      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
