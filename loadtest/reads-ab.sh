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
set -euo pipefail
# Whatever stops the script, the servers it started stop with it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
# BIN may be given relative to where the script was started from.
if [ -n "${BIN:-}" ]; then BIN=$(realpath "$BIN"); fi
cd "$(dirname "$0")/.."
KEY=reads-bench-key-reads-bench-key-0123
PORT=18121
for round in 1 2; do
  for cached in ${CACHED:-0 50000}; do
    data=$(mktemp -d)
    TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data \
      TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
      TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
      TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP=0 TURNOUT_HTTP__CACHED_EVENTS=$cached \
      "${BIN:-target/release/turnout}" --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
    target/release/turnout-loadtest mixed --target http://127.0.0.1:$PORT --jwt-key $KEY \
      --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every ${LIST_EVERY:-4} \
      --server-pid $pid --json "$data/r.json" >/dev/null 2>&1 || true
    python3 - "$data/r.json" "$cached" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = [c["detail"] for c in d["checks"] if "CPU" in c["name"]]
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'cached_events={sys.argv[2]:>5}  {d["throughput_per_s"]:6.0f} req/s  p50 {d["latency"]["p50_ms"]:.2f}  p99 {d["latency"]["p99_ms"]:.2f} ms  {cpu}  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf "$data"
  done
done
