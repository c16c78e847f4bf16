-- A join wrote two B-trees in an order a hot event does not keep: the
-- table's key (event, user) and joins_by_user (user, joined_at, event).
-- Users come in no order, so each join dirtied a leaf of each, and on the
-- journal's one writer the hot event ran a tenth slower for it
-- (docs/BENCHMARKS.md, "One B-tree fewer per join"). Keyed by (user,
-- event) the table is its own index of a person's joins (their list is
-- sorted by when they joined as it is read: a person's joins are few),
-- and a join writes one B-tree in no order where it wrote two. The roster
-- index (event, status, order) takes joins in the order they come.

CREATE TABLE joins_next (
    event_id         BLOB NOT NULL REFERENCES events (id),
    user_id          BLOB NOT NULL,
    status           TEXT NOT NULL CHECK (status = 'active' OR status = 'waitlisted'
        OR status = 'offered' OR status = 'left' OR status = 'declined'
        OR status = 'expired' OR status = 'cancelled'),
    order_key        INTEGER NOT NULL,
    seats            INTEGER NOT NULL DEFAULT 1 CHECK (seats BETWEEN 1 AND 20),
    offer_expires_at INTEGER,
    joined_at        INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id)
) WITHOUT ROWID;
INSERT INTO joins_next SELECT event_id, user_id, status, order_key, seats, offer_expires_at,
    joined_at, updated_at FROM joins;
DROP TABLE joins;
ALTER TABLE joins_next RENAME TO joins;
CREATE INDEX joins_roster ON joins (event_id, status, order_key);
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';
