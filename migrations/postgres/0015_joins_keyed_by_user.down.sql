CREATE INDEX joins_by_user ON joins (user_id, joined_at, event_id);
ALTER TABLE joins DROP CONSTRAINT joins_pkey, ADD PRIMARY KEY (event_id, user_id);
