-- Owners' quotas count an owner's venues and upcoming events: an index
-- each, so the count before a create reads only that owner's rows. On the
-- owner alone: the read model's upsert on every join sets every other
-- column of an event (starts_at among them), and SQLite rewrites the
-- entries of each index over a column it sets.
CREATE INDEX events_by_owner ON events (owner_id);
CREATE INDEX venues_by_owner ON venues (owner_id);
