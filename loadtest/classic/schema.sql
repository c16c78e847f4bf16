-- The classic design at its best, for comparison (issue #16): a join is one
-- stored-procedure call, one round trip, one transaction — record the
-- idempotency key, lock the event's counts row, insert the join as active
-- or waitlisted, update the counts, insert an outbox row. Same tables as
-- `hot-join --baseline rowlock`, which makes the five statements from the
-- client instead.
DROP TABLE IF EXISTS classic_outbox, classic_idempotency, classic_joins, classic_events;
CREATE TABLE classic_events (
    id BIGINT PRIMARY KEY, capacity BIGINT NOT NULL,
    active_count BIGINT NOT NULL DEFAULT 0, waitlist_count BIGINT NOT NULL DEFAULT 0,
    CHECK (active_count <= capacity));
CREATE TABLE classic_joins (
    event_id BIGINT NOT NULL REFERENCES classic_events (id), user_id UUID NOT NULL,
    status TEXT NOT NULL, position BIGINT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id));
CREATE TABLE classic_idempotency (
    user_id UUID NOT NULL, key TEXT NOT NULL, answer JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (user_id, key));
CREATE TABLE classic_outbox (
    id BIGSERIAL PRIMARY KEY, event_id BIGINT NOT NULL, payload JSONB NOT NULL);

-- Answers as a join does: a replayed key gets its stored answer, a member
-- joining again its membership, anyone else a place or a waitlist position.
CREATE OR REPLACE FUNCTION classic_join(p_event BIGINT, p_user UUID, p_key TEXT)
RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
    v_capacity BIGINT; v_active BIGINT; v_waiting BIGINT;
    v_answer JSONB; v_status TEXT; v_position BIGINT;
BEGIN
    SELECT answer INTO v_answer FROM classic_idempotency WHERE user_id = p_user AND key = p_key;
    IF FOUND THEN RETURN v_answer; END IF;
    SELECT capacity, active_count, waitlist_count INTO v_capacity, v_active, v_waiting
      FROM classic_events WHERE id = p_event FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'no such event %', p_event; END IF;
    SELECT status, position INTO v_status, v_position
      FROM classic_joins WHERE event_id = p_event AND user_id = p_user;
    IF NOT FOUND THEN
        IF v_active < v_capacity THEN
            v_status := 'active'; v_position := NULL;
            UPDATE classic_events SET active_count = active_count + 1 WHERE id = p_event;
        ELSE
            v_status := 'waitlisted'; v_position := v_waiting + 1;
            UPDATE classic_events SET waitlist_count = waitlist_count + 1 WHERE id = p_event;
        END IF;
        INSERT INTO classic_joins (event_id, user_id, status, position)
          VALUES (p_event, p_user, v_status, v_position);
        INSERT INTO classic_outbox (event_id, payload)
          VALUES (p_event, jsonb_build_object('type', 'joined', 'user', p_user, 'status', v_status));
    END IF;
    v_answer := jsonb_build_object('status', v_status, 'position', v_position);
    INSERT INTO classic_idempotency (user_id, key, answer) VALUES (p_user, p_key, v_answer);
    RETURN v_answer;
END $$;

INSERT INTO classic_events (id, capacity) VALUES (1, 1000);
