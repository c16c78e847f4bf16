#!/usr/bin/env bash
# What people watching their own places (`me`) cost the server: the mix
# (200 events of capacity 100, 400 joins/s, 1,500 reads/s, 2,000 event
# subscribers, 30 s: 12,000 joins) on a fresh SQLite server, WATCHERS of
# whose joins (2,000 by default) are by users subscribed to `me` from
# before the load. Interleave runs with and without them:
#
#   cargo build --release -p turnout -p turnout-loadtest
#   for w in 0 2000 0 2000 0 2000; do WATCHERS=$w loadtest/me-ab.sh; done
#
# Prints the report's line (server CPU per request among it), the `me`
# checks, and the server's CPU per join (all of its CPU over the joins).
# Extra arguments are settings for the server (VAR=value).
source "$(dirname "$0")/lib.sh"
KEY=me-bench-key-me-bench-key-me-bench-key
PORT=18133
data=$(mktemp -d)
start_turnout "$data" "$@"
await_ready
target/release/turnout-loadtest mixed --target "http://127.0.0.1:$PORT" --jwt-key "$KEY" \
  --events 200 --capacity 100 --duration 30 --join-rate 400 --read-rate 1500 \
  --subscribers 2000 --me-watchers "${WATCHERS:-2000}" --server-pid "$pid" \
  --json "$data/r.json" >"$data/tool.log" 2>&1 || true
report_line "$data/r.json" "me watchers ${WATCHERS:-2000}:"
if [ -s "$data/r.json" ]; then
  python3 - "$data/r.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for c in d["checks"]:
    if "me" in c["name"].split():
        print(f'  {c["name"]}: {c["detail"]}')
PY
fi
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$data"
