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
source "$(dirname "$0")/lib.sh"
KEY=spread-bench-key-spread-bench-key-0123
PORT=18131
data=$(mktemp -d)
start_turnout "$data" "$@"
await_ready
switches() {
  cat /proc/$pid/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n}'
}
(sleep 4; switches > "$data/switches.start"; db_cpu > "$data/db.start"; sleep 10
 switches > "$data/switches.end"; db_cpu > "$data/db.end") &
counter=$!
target/release/turnout-loadtest spread-join --target http://127.0.0.1:$PORT --jwt-key $KEY \
  --events 200 --capacity 100 --users ${USERS:-8000} --rate 400 --server-pid $pid --json $data/r.json >"$data/tool.log" 2>&1 || true
wait $counter
per_join=$(( ($(cat "$data/switches.end") - $(cat "$data/switches.start")) / 4000 ))
report_line "$data/r.json" "${BIN:-target/release/turnout}"
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
