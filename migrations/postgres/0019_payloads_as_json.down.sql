ALTER TABLE idempotency_keys ALTER COLUMN answer TYPE JSONB USING answer::jsonb;
ALTER TABLE snapshots ALTER COLUMN state TYPE JSONB USING state::jsonb;
ALTER TABLE outbox ALTER COLUMN payload TYPE JSONB USING payload::jsonb;
ALTER TABLE event_log ALTER COLUMN payload TYPE JSONB USING payload::jsonb;
