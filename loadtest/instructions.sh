#!/usr/bin/env bash
# The server's own instructions per join, counted by valgrind's callgrind:
# user space only (the kernel's share, fsync and sends, is not counted),
# but the same count for the same build and load whatever else the machine
# is doing, where CPU time on this shared box moves by ±10 % from run to
# run. For an A/B of a change too small for CPU time to show:
#
#   cargo build --release -p turnout -p turnout-loadtest
#   cp target/release/turnout /tmp/turnout-a     # … and another build as -b
#   for b in a b a b; do BIN=/tmp/turnout-$b loadtest/instructions.sh; done
#
# The load is hot-join: USERS (2,000) users join one event of capacity
# 2,000 through CONCURRENCY (100) connections, batched as under load;
# CONCURRENCY=1 gives each join a commit of its own, as spread joins have.
# LOAD=details counts reads instead: wrk asks for one published event's
# details (from the event cache) through 2 connections for 15 s;
# LOAD=listing the same for the listing of five events.
# Counting starts once the server is ready and stops when the tool ends;
# OUT keeps callgrind's profile (callgrind_annotate reads it). The server
# runs some 50 times slower under valgrind, so batches differ from a real
# run's: compare builds under the same load, not with CPU times.
source "$(dirname "$0")/lib.sh"
KEY=instructions-key-instructions-key-0123
PORT=18191
USERS=${USERS:-2000}
data=$(mktemp -d)
out=${OUT:-$data/callgrind.out}
env TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data \
  TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
  TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 "$@" \
  valgrind --tool=callgrind --callgrind-out-file="$out" \
  "${BIN:-target/release/turnout}" --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
pid=$!
await_ready 120
# What start-up cost is dropped; the dump after the load holds the load's.
callgrind_control --zero $pid >/dev/null 2>&1
if [ "${LOAD:-joins}" = joins ]; then
  target/release/turnout-loadtest hot-join --target http://127.0.0.1:$PORT --jwt-key $KEY \
    --users "$USERS" --concurrency "${CONCURRENCY:-100}" --capacity "$USERS" \
    --json "$data/r.json" >/dev/null 2>&1 || true
  callgrind_control --dump $pid >/dev/null 2>&1
else
  token=$(loadtest/tokens.py "$KEY")
  auth=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
  id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])'; }
  venue=$(curl -s "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/venues \
    -d '{"name":"Hall","lat":52.37,"lon":4.89}' | id)
  for i in 1 2 3 4 5; do
    event=$(curl -s "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/events \
      -d "{\"title\":\"Event $i\",\"venue_id\":\"$venue\",\"starts_at\":\"$(date -u -d '+7 days' +%FT%TZ)\",\"capacity\":50,\"tags\":[\"jazz\"]}" | id)
    curl -s -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/events/$event/publish
  done
  path=/v1/events/$event
  if [ "$LOAD" = listing ]; then path=/v1/events; fi
  # Each read once before counting, so the count is of reads from memory.
  curl -s -o /dev/null http://127.0.0.1:$PORT$path
  callgrind_control --zero $pid >/dev/null 2>&1
  USERS=$(wrk -t1 -c2 -d15s http://127.0.0.1:$PORT$path | awk '/requests in/ {print $1}')
  callgrind_control --dump $pid >/dev/null 2>&1
  echo '{"checks": []}' >"$data/r.json"
fi
kill $pid; wait $pid 2>/dev/null || true
total=$(callgrind_annotate "$out.1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
python3 - "$data/r.json" "${BIN:-target/release/turnout}" "$total" "$USERS" "${LOAD:-joins}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
failed = [c["name"] for c in d["checks"] if not c["passed"]]
total, users = int(sys.argv[3]), int(sys.argv[4])
what = "join" if sys.argv[5] == "joins" else "read"
print(f'{sys.argv[2]}  {total / users:9.0f} instructions per {what}  ({total:,} for {users:,} {what}s)  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
rm -rf "$data"
if [ -n "${OUT:-}" ]; then echo "  profile: $out.1"; fi
