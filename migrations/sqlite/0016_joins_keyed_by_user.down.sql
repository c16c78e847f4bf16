CREATE TABLE joins_prev (
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
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
INSERT INTO joins_prev SELECT event_id, user_id, status, order_key, seats, offer_expires_at,
    joined_at, updated_at FROM joins;
DROP TABLE joins;
ALTER TABLE joins_prev RENAME TO joins;
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';
