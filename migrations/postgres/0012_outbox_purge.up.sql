-- Published rows are purged after the retention, a batch at a time: the
-- purge finds them by when they were published instead of scanning the
-- whole outbox.
CREATE INDEX outbox_published ON outbox (published_at) WHERE status = 'published';
