-- A join wrote two B-trees in an order a hot event does not keep: the
-- key (event, user) and joins_by_user (user, joined_at, event). Keyed by
-- (user, event), the key is also the index of a person's joins (their
-- list is sorted by when they joined as it is read: a person's joins are
-- few), and a join writes one such B-tree where it wrote two. The upsert's
-- ON CONFLICT (event_id, user_id) names the same columns.
ALTER TABLE joins DROP CONSTRAINT joins_pkey, ADD PRIMARY KEY (user_id, event_id);
DROP INDEX joins_by_user;
