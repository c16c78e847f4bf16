-- People a venue's owner lets put events on the venue, besides the owner
-- and admins.
CREATE TABLE venue_organizers (
    venue_id BLOB NOT NULL REFERENCES venues (id),
    user_id  BLOB NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (venue_id, user_id)
);
