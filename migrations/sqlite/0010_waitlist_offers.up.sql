-- Waitlist offers and parties: an event's waitlist policy and the seats it
-- holds on offer; a membership's seats, its offer's deadline, and the ways
-- an offer ends (declined, expired).
ALTER TABLE events ADD COLUMN offered_count INTEGER NOT NULL DEFAULT 0
    CHECK (offered_count >= 0 AND active_count + offered_count <= capacity);
ALTER TABLE events ADD COLUMN waitlist_mode TEXT NOT NULL DEFAULT 'auto'
    CHECK (waitlist_mode IN ('auto', 'offer'));
ALTER TABLE events ADD COLUMN offer_hold_secs INTEGER NOT NULL DEFAULT 1800
    CHECK (offer_hold_secs BETWEEN 60 AND 604800);
ALTER TABLE events ADD COLUMN max_party INTEGER NOT NULL DEFAULT 1
    CHECK (max_party BETWEEN 1 AND 20);
ALTER TABLE events ADD COLUMN waitlist_fill TEXT NOT NULL DEFAULT 'strict'
    CHECK (waitlist_fill IN ('strict', 'first_fit'));

-- SQLite cannot change a CHECK in place: the roster is copied into a table
-- with the new statuses.
CREATE TABLE joins_next (
    event_id         BLOB NOT NULL REFERENCES events (id),
    user_id          BLOB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
        ('active', 'waitlisted', 'offered', 'left', 'declined', 'expired', 'cancelled')),
    order_key        INTEGER NOT NULL,
    seats            INTEGER NOT NULL DEFAULT 1 CHECK (seats BETWEEN 1 AND 20),
    offer_expires_at INTEGER,
    joined_at        INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
INSERT INTO joins_next (event_id, user_id, status, order_key, joined_at, updated_at)
    SELECT event_id, user_id, status, order_key, joined_at, updated_at FROM joins;
DROP TABLE joins;
ALTER TABLE joins_next RENAME TO joins;
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);
-- The sweep that wakes events whose offers are about to run out.
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';
