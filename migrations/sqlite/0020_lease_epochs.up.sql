-- A lease's epoch rises each time it changes hands, and is never below the
-- database's time (unix µs) at that moment: the outbox relay fences Redis
-- with it, so that a relay that lost the lease cannot publish after the one
-- that took it over, and a database made afresh (or restored) still fences
-- above every relay of the one before.
ALTER TABLE leases ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
