#!/usr/bin/env bash
# Spread joins at an arrival rate the server keeps up with: 400 joins/s over
# 200 events of capacity 100 (8,000 users, 20 s), SQLite, on a fresh server;
# prints the server's CPU per join, its threads' context switches per join
# (from /proc) and how many appends each of the journal's commits carried
# (from /metrics: `journal.linger_us` raises it). BIN names the server
# binary, for an A/B of two builds:
#
#   cargo build --release -p turnout -p turnout-loadtest
#   cp target/release/turnout /tmp/turnout-a     # … and another build as -b
#   for b in a b a b; do BIN=/tmp/turnout-$b loadtest/spread-ab.sh; done
#
# Extra arguments are settings for the server (VAR=value). DB_PROCESS=postgres
# also prints the database's CPU per join, over the same 10 s.
set -euo pipefail
# Whatever stops the script, the servers it started stop with it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
# BIN may be given relative to where the script was started from.
if [ -n "${BIN:-}" ]; then BIN=$(realpath "$BIN"); fi
cd "$(dirname "$0")/.."
KEY=spread-bench-key-spread-bench-key-0123
PORT=18131
data=$(mktemp -d)
env TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data \
  TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
  TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 "$@" \
  ${BIN:-target/release/turnout} --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
switches() {
  cat /proc/$pid/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n}'
}
# The CPU ticks of every process named DB_PROCESS (e.g. postgres).
db_cpu() {
  if [ -z "${DB_PROCESS:-}" ]; then echo 0; return; fi
  for p in $(pgrep -x "$DB_PROCESS"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done \
    | awk '{n += $1} END {print n + 0}'
}
(sleep 4; switches > "$data/switches.start"; db_cpu > "$data/db.start"; sleep 10
 switches > "$data/switches.end"; db_cpu > "$data/db.end") &
counter=$!
target/release/turnout-loadtest spread-join --target http://127.0.0.1:$PORT --jwt-key $KEY \
  --events 200 --capacity 100 --users ${USERS:-8000} --rate 400 --server-pid $pid --json $data/r.json >/dev/null 2>&1 || true
wait $counter
per_join=$(( ($(cat "$data/switches.end") - $(cat "$data/switches.start")) / 4000 ))
python3 - "$data/r.json" "${BIN:-target/release/turnout}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = [c["detail"] for c in d["checks"] if "CPU" in c["name"]]
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'{sys.argv[2]}  {d["throughput_per_s"]:6.0f} req/s  p50 {d["latency"]["p50_ms"]:.2f}  p99 {d["latency"]["p99_ms"]:.2f} ms  {cpu}  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
echo "  context switches per join (10 s at 400/s): $per_join"
# Over the whole run: how many appends each of the journal's commits carried.
curl -sf http://127.0.0.1:$PORT/metrics | awk '
  /^turnout_journal_batch_size_sum/ {sum = $2} /^turnout_journal_batch_size_count/ {n = $2}
  END {if (n) printf "  appends per commit: %.2f (%d commits)\n", sum / n, n}' || true
if [ -n "${DB_PROCESS:-}" ]; then
  ticks=$(( $(cat "$data/db.end") - $(cat "$data/db.start") ))
  echo "  $DB_PROCESS CPU per join (10 s at 400/s): $(( ticks * 1000000 / $(getconf CLK_TCK) / 4000 )) µs"
fi
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$data"
