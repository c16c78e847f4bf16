-- The W3C trace context of the command that wrote the row, carried on to
-- the stream entry and the consumers (set only while traces are exported).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
