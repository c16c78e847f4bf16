-- Offers and parties go; a held offer falls back to the waitlist, and an
-- offer that ended counts as leaving.
DROP INDEX joins_offers;
UPDATE joins SET status = 'waitlisted' WHERE status = 'offered';
UPDATE joins SET status = 'left' WHERE status IN ('declined', 'expired');
ALTER TABLE joins
    DROP COLUMN offer_expires_at,
    DROP COLUMN seats,
    DROP CONSTRAINT joins_status_check,
    ADD CONSTRAINT joins_status_check CHECK (status IN ('active', 'waitlisted', 'left', 'cancelled'));
ALTER TABLE events
    DROP CONSTRAINT events_places_check,
    DROP COLUMN waitlist_fill,
    DROP COLUMN max_party,
    DROP COLUMN offer_hold_secs,
    DROP COLUMN waitlist_mode,
    DROP COLUMN offered_count;
