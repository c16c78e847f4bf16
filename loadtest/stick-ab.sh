#!/usr/bin/env bash
# Turnout's hot event against the HTTP measuring stick (src/bin/http-stick.rs:
# actix-web + HS256 JWT check + one actor round trip, no database), side by
# side in one session: the same hot-join load (20,000 users through 1,000
# connections, one event of capacity 1,000) on fresh servers — the stick,
# Turnout on SQLite, Turnout on Postgres — ROUNDS times, interleaved.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/stick-ab.sh            # needs Postgres at 127.0.0.1:5432 (user postgres)
source "$(dirname "$0")/lib.sh"
KEY=stick-bench-key-stick-bench-key-0123
PORT=18151
PG=postgres://postgres@127.0.0.1:5432

load() {
  local name=$1 pid=$2 data=$3
  target/release/turnout-loadtest hot-join --target http://127.0.0.1:$PORT --jwt-key $KEY \
    --server-pid "$pid" --users 20000 --concurrency 1000 --capacity 1000 \
    --json "$data/r.json" >/dev/null 2>&1 || true
  python3 - "$data/r.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = [c["detail"].split(" per")[0] for c in d["checks"] if "CPU" in c["name"]]
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'{sys.argv[2]:<18} {d["ok_per_s"]:7.0f} joins/s  p50 {d["latency"]["p50_ms"]:6.1f}  p99 {d["latency"]["p99_ms"]:6.1f} ms  server {cpu[0]:>9} / tool {cpu[1]:>9} per join  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "${ROUNDS:-2}"); do
  data=$(mktemp -d)
  target/release/http-stick --bind 127.0.0.1:$PORT --jwt-key $KEY >"$data/log" 2>&1 &
  pid=$!; await_answer; load stick $pid "$data"; rm -rf "$data"

  for db in sqlite postgres; do
    data=$(mktemp -d)
    if [ $db = sqlite ]; then
      url="sqlite://$data/turnout.db?mode=rwc"
    else
      dropdb -h 127.0.0.1 -U postgres --if-exists stick_bench; createdb -h 127.0.0.1 -U postgres stick_bench
      url=$PG/stick_bench
    fi
    TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data TURNOUT_DATABASE_URL=$url \
      TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
      target/release/turnout --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
    pid=$!
    await_ready
    load "turnout $db" $pid "$data"; rm -rf "$data"
  done
done
