#!/usr/bin/env bash
# A/B of the event cache on one release build, in one session: reads at
# 2,000/s (an event's details; one in LIST_EVERY the listing, 0 for none)
# plus 20 joins/s over 200 events, SQLite, 20 s, with the cache off
# (http.cached_events = 0) and on, interleaved, each run on a fresh server.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   LIST_EVERY=0 loadtest/reads-ab.sh      # details only
#   loadtest/reads-ab.sh                   # one read in four the listing
#
# For an A/B of two builds with the cache on, interleave them with BIN
# (another build of the server) and CACHED (the settings to run, "50000"):
#
#   for b in a b a b; do BIN=/tmp/turnout-$b CACHED=50000 loadtest/reads-ab.sh; done
source "$(dirname "$0")/lib.sh"
KEY=reads-bench-key-reads-bench-key-0123
PORT=18121
for round in 1 2; do
  for cached in ${CACHED:-0 50000}; do
    data=$(mktemp -d)
    start_turnout "$data" TURNOUT_HTTP__CACHED_EVENTS=$cached
    await_ready
    target/release/turnout-loadtest mixed --target http://127.0.0.1:$PORT --jwt-key $KEY \
      --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every ${LIST_EVERY:-4} \
      --server-pid $pid --json "$data/r.json" >"$data/tool.log" 2>&1 || true
    report_line "$data/r.json" "cached_events=$cached"
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf "$data"
  done
done
