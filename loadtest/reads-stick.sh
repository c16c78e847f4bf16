#!/usr/bin/env bash
# Reads side by side with the measuring stick, in one session: an event's
# details at 2,000/s plus 20 joins/s over 200 events, 20 s, on the HTTP
# stick (actix-web, the token checked, the event in memory: a read at its
# plainest) and on Turnout (SQLite, the event cache on), taking turns
# ROUNDS times (2), each on a fresh server. Details only: the stick has
# no listing.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/reads-stick.sh            # BIN=… for another build of the server
set -euo pipefail
# Whatever stops the script, the servers it started stop with it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
# BIN may be given relative to where the script was started from.
if [ -n "${BIN:-}" ]; then BIN=$(realpath "$BIN"); fi
cd "$(dirname "$0")/.."
KEY=reads-bench-key-reads-bench-key-0123
PORT=18131
for round in $(seq 1 "${ROUNDS:-2}"); do
  for system in stick turnout; do
    data=$(mktemp -d)
    if [ $system = stick ]; then
      target/release/http-stick --bind 127.0.0.1:$PORT --jwt-key $KEY >/dev/null 2>&1 &
    else
      TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data \
        TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
        TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
        TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP=0 \
        "${BIN:-target/release/turnout}" --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null -X POST http://127.0.0.1:$PORT/v1/venues && break; sleep 0.1; done
    target/release/turnout-loadtest mixed --target http://127.0.0.1:$PORT --jwt-key $KEY \
      --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every 0 \
      --server-pid $pid --json "$data/r.json" >"$data/tool.log" 2>&1 || true
    python3 - "$data/r.json" "$system" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = next(c["detail"] for c in d["checks"] if c["name"].startswith("server CPU"))
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'{sys.argv[2]:8} {d["throughput_per_s"]:6.0f} req/s  non-2xx {d["error_rate"]:.2%}  p99 {d["latency"]["p99_ms"]:.2f} ms  server CPU {cpu}  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf "$data"
  done
done
