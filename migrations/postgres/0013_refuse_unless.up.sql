-- The journal's group commit writes a batch in one autocommitted statement
-- that ends by calling this with whether all of its checks passed: raising
-- undoes everything the statement wrote, so a failed check writes nothing.
-- The journal tells the refusal by its SQLSTATE and checks the batch again
-- in a transaction to learn which check failed.
CREATE FUNCTION turnout_refuse_unless(passed BOOLEAN) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF passed IS NOT TRUE THEN
        RAISE EXCEPTION 'a check of the journal''s batch failed' USING ERRCODE = 'TN001';
    END IF;
    RETURN TRUE;
END
$$;
