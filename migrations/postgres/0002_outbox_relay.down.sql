DROP TABLE leases;
DROP INDEX outbox_dead;
DROP INDEX outbox_pending;
