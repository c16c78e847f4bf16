-- A join wrote two B-trees in an order a hot event does not keep: the
-- table's key (event, user), which held the whole row, and joins_by_user
-- (user, joined_at, event). Users come in no order, so each join dirtied
-- a leaf of each, on the journal's one writer. Now the rows go in at the
-- table's end, in the order they come (a rowid table), and the one index
-- in no order is the small entry of their key, (user, event), which is
-- also the index of a person's own joins (their list is sorted by when
-- they joined as it is read: a person's joins are few). The roster index
-- (event, status, order) takes a hot event's joins in the order they
-- come. Under wrk the hot event went from some 23,700 to 28,900 joins a
-- second (docs/BENCHMARKS.md, "One B-tree fewer per join").

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
    UNIQUE (user_id, event_id)
);
INSERT INTO joins_next SELECT event_id, user_id, status, order_key, seats, offer_expires_at,
    joined_at, updated_at FROM joins;
DROP TABLE joins;
ALTER TABLE joins_next RENAME TO joins;
CREATE INDEX joins_roster ON joins (event_id, status, order_key);
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';
