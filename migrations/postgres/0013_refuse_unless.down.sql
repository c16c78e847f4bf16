DROP FUNCTION turnout_refuse_unless(BOOLEAN);
