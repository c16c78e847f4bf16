-- Waitlist offers and parties: an event's waitlist policy and the seats it
-- holds on offer; a membership's seats, its offer's deadline, and the ways
-- an offer ends (declined, expired).
ALTER TABLE events
    ADD COLUMN offered_count   BIGINT NOT NULL DEFAULT 0 CHECK (offered_count >= 0),
    ADD COLUMN waitlist_mode   TEXT NOT NULL DEFAULT 'auto' CHECK (waitlist_mode IN ('auto', 'offer')),
    ADD COLUMN offer_hold_secs BIGINT NOT NULL DEFAULT 1800 CHECK (offer_hold_secs BETWEEN 60 AND 604800),
    ADD COLUMN max_party       BIGINT NOT NULL DEFAULT 1 CHECK (max_party BETWEEN 1 AND 20),
    ADD COLUMN waitlist_fill   TEXT NOT NULL DEFAULT 'strict' CHECK (waitlist_fill IN ('strict', 'first_fit')),
    ADD CONSTRAINT events_places_check CHECK (active_count + offered_count <= capacity);

ALTER TABLE joins
    DROP CONSTRAINT joins_status_check,
    ADD CONSTRAINT joins_status_check CHECK (status IN
        ('active', 'waitlisted', 'offered', 'left', 'declined', 'expired', 'cancelled')),
    ADD COLUMN seats            BIGINT NOT NULL DEFAULT 1 CHECK (seats BETWEEN 1 AND 20),
    ADD COLUMN offer_expires_at BIGINT;

-- The sweep that wakes events whose offers are about to run out.
CREATE INDEX joins_offers ON joins (offer_expires_at) WHERE status = 'offered';
