-- Offers and parties go; a held offer falls back to the waitlist, and an
-- offer that ended counts as leaving.
CREATE TABLE joins_before (
    event_id   BLOB NOT NULL REFERENCES events (id),
    user_id    BLOB NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'waitlisted', 'left', 'cancelled')),
    order_key  INTEGER NOT NULL,
    joined_at  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (event_id, user_id)
) WITHOUT ROWID;
INSERT INTO joins_before (event_id, user_id, status, order_key, joined_at, updated_at)
    SELECT event_id, user_id,
           CASE status WHEN 'offered' THEN 'waitlisted'
                       WHEN 'declined' THEN 'left'
                       WHEN 'expired' THEN 'left'
                       ELSE status END,
           order_key, joined_at, updated_at
    FROM joins;
DROP TABLE joins;
ALTER TABLE joins_before RENAME TO joins;
CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
CREATE INDEX joins_roster ON joins (event_id, status, order_key);

ALTER TABLE events DROP COLUMN waitlist_fill;
ALTER TABLE events DROP COLUMN max_party;
ALTER TABLE events DROP COLUMN offer_hold_secs;
ALTER TABLE events DROP COLUMN waitlist_mode;
ALTER TABLE events DROP COLUMN offered_count;
