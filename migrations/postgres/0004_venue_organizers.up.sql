-- People a venue's owner lets put events on the venue, besides the owner
-- and admins.
CREATE TABLE venue_organizers (
    venue_id UUID NOT NULL REFERENCES venues (id),
    user_id  UUID NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (venue_id, user_id)
);
