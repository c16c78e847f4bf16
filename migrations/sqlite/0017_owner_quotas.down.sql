DROP INDEX venues_by_owner;
DROP INDEX events_by_owner;
