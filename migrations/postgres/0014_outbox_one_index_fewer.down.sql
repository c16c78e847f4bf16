ALTER TABLE outbox ADD CONSTRAINT outbox_aggregate_id_stream_version_key
    UNIQUE (aggregate_id, stream_version);
