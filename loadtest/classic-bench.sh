#!/usr/bin/env bash
# The classic design at its best (loadtest/classic/schema.sql: one stored-
# procedure call per join) on this machine's Postgres, under pgbench at
# several client counts — report the best. Each run on fresh tables.
#
#   loadtest/classic-bench.sh              # CLIENTS="4 8 16 32 64" SECONDS_EACH=15
set -euo pipefail
cd "$(dirname "$0")/classic"
PG="-h 127.0.0.1 -U postgres"
dropdb $PG --if-exists classic_bench; createdb $PG classic_bench
for clients in ${CLIENTS:-4 8 16 32 64}; do
  psql $PG -d classic_bench -q -v ON_ERROR_STOP=1 -f schema.sql >/dev/null 2>&1
  out=$(pgbench $PG -n -M prepared -c "$clients" -j 2 -T "${SECONDS_EACH:-15}" -f join.pgbench classic_bench 2>&1)
  tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
  lat=$(echo "$out" | awk '/latency average/ {print $4; exit}')
  counts=$(psql $PG -d classic_bench -Atc "SELECT active_count, waitlist_count, (SELECT count(*) FROM classic_joins) FROM classic_events")
  echo "clients $clients: $tps joins/s, latency average $lat ms (active|waitlisted|rows: $counts)"
done
