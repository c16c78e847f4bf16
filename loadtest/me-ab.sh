#!/usr/bin/env bash
# What people watching their own places (`me`) cost the server: joins alone
# (the mix's 400/s over 200 events of capacity 100, for 20 s: 8,000 joins,
# a read a second), on a fresh SQLite server, WATCHERS of whose joins (all
# 8,000 by default) are by users subscribed to `me` from before the load.
# Interleave runs with and without them:
#
#   cargo build --release -p turnout -p turnout-loadtest
#   for w in 0 8000 0 8000 0 8000; do WATCHERS=$w loadtest/me-ab.sh; done
#
# Prints the report's line (the server's CPU per request: per join, here)
# and the `me` checks. CAPACITY=20 leaves half the joiners waiting (4,000
# of 8,000), whose watchers hear the changes that may move them (someone
# leaving the waitlist) and read again if one went by before they followed
# the event; with EVENTS=10 as well, 780 wait in each event by the end. MIX=1 runs the whole mix instead (1,500 reads/s,
# 2,000 event subscribers, 30 s: 12,000 joins; WATCHERS 2,000 by default).
# Extra arguments are settings for the server (VAR=value).
source "$(dirname "$0")/lib.sh"
KEY=me-bench-key-me-bench-key-me-bench-key
PORT=18133
if [ -n "${MIX:-}" ]; then
  load=(--duration 30 --read-rate 1500 --subscribers 2000 --me-watchers "${WATCHERS:-2000}")
else
  load=(--duration 20 --read-rate 1 --list-every 0 --subscribers 0 --me-watchers "${WATCHERS:-8000}")
fi
data=$(mktemp -d)
start_turnout "$data" "$@"
await_ready
target/release/turnout-loadtest mixed --target "http://127.0.0.1:$PORT" --jwt-key "$KEY" \
  --events "${EVENTS:-200}" --capacity "${CAPACITY:-100}" --join-rate 400 "${load[@]}" --server-pid "$pid" \
  --json "$data/r.json" >"$data/tool.log" 2>&1 || true
report_line "$data/r.json" "me watchers ${WATCHERS:-default}:"
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
