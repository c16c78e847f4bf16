DROP INDEX inbox_by_time;
