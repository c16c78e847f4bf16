DROP TABLE daily_facts;
DROP TABLE inbox;
