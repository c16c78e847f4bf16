-- What the journal writes as JSON — each fact's payload, its outbox row's,
-- a snapshot's state, an idempotent answer — the server made with serde
-- and only ever reads back whole. `jsonb` parsed every one into its binary
-- form on insert: a tenth of Postgres's CPU on a hot event's joins. `json`
-- keeps the text as written, still checked to be JSON. (A rewrite of each
-- table, under its lock: on a large log, run it in a quiet hour.)
ALTER TABLE event_log ALTER COLUMN payload TYPE JSON;
ALTER TABLE outbox ALTER COLUMN payload TYPE JSON;
ALTER TABLE snapshots ALTER COLUMN state TYPE JSON;
ALTER TABLE idempotency_keys ALTER COLUMN answer TYPE JSON;
