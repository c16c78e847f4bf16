ALTER TABLE venues ADD COLUMN time_zone TEXT;
