#!/usr/bin/env bash
# Checks the load tool's hot-join figures against wrk (Debian's `wrk`):
# the same hot event — one event of capacity 500, each request a join by a
# new user (HS256 tokens minted beforehand) — through 2 threads and 1,000
# connections for DURATION seconds, against the HTTP stick, the stick
# made durable (`http-stick --durable`: each join appended to a file and
# fsync'd, in groups, before it is answered), the SQLite stick
# (`http-stick --sqlite`: the one-transaction rule's five records per join
# committed to SQLite, in groups) and Turnout on SQLite, each on
# a fresh server; prints wrk's joins/s and the server's CPU
# per join (from /proc); for Turnout, also how much of the run its journal
# had a commit in flight and how many appends a commit carried (from
# /metrics): a journal busy ~100 % of the run is the ceiling.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/wrk-check.sh
#   BIN=/tmp/turnout-before loadtest/wrk-check.sh   # another build of the server
#   BIN=/tmp/turnout-before SYSTEMS=turnout ROUNDS=1 loadtest/wrk-check.sh   # Turnout alone
#
# Extra arguments are settings for the server (VAR=value), e.g. Postgres;
# RESET is a command run before each of Turnout's runs (a fresh database):
#
# DB_PROCESS=postgres also prints the database's CPU per join.
#
#   DB_PROCESS=postgres RESET='dropdb -h 127.0.0.1 -U postgres --if-exists turnout_bench && createdb -h 127.0.0.1 -U postgres turnout_bench' \
#     loadtest/wrk-check.sh TURNOUT_DATABASE_URL=postgres://postgres@127.0.0.1:5432/turnout_bench
source "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)"
KEY=wrk-bench-key-wrk-bench-key-wrk-0123
PORT=18171
DURATION=${DURATION:-5}
# Which systems run (of stick, durable, sqlite and turnout), each ROUNDS (2)
# times: SYSTEMS=turnout for an A/B of two builds or settings of the
# server alone. A name it does not know stops it, rather than running less.
SYSTEMS=${SYSTEMS:-stick durable sqlite turnout}
for system in $SYSTEMS; do
  case $system in stick | durable | sqlite | turnout) ;; *) echo "SYSTEMS: no system named $system" >&2; exit 2 ;; esac
done
dir=$(mktemp -d)
# Enough users that the fastest system here (the stick, up to ~100k
# joins/s) never sees one twice in a run: a repeat is answered from
# memory, and the durable stick would skip its sync for it.
loadtest/tokens.py "$KEY" $((DURATION * 120000)) >"$dir/tokens"
owner=$(tail -1 "$dir/tokens")

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
  local name=$1 pid=$2
  await_answer
  local auth=(-H "Authorization: Bearer $owner" -H "Content-Type: application/json")
  local venue event
  venue=$(curl -s "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/venues \
    -d '{"name":"Hall","lat":52.37,"lon":4.89}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])')
  event=$(curl -s "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/events \
    -d "{\"title\":\"Hot\",\"venue_id\":\"$venue\",\"starts_at\":\"$(date -u -d '+7 days' +%FT%TZ)\",\"capacity\":500}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])')
  curl -s -o /dev/null "${auth[@]}" -X POST http://127.0.0.1:$PORT/v1/events/$event/publish
  local before after db_before db_after ticks
  before=$(cpu "$pid")
  db_before=$(db_cpu)
  result=$(EVENT=$event TOKENS=$dir/tokens THREADS=2 wrk -t2 -c1000 -d"${DURATION}s" \
    -s loadtest/wrk/join.lua http://127.0.0.1:$PORT 2>&1)
  after=$(cpu "$pid")
  db_after=$(db_cpu)
  ticks=$(getconf CLK_TCK)
  # Turnout's journal: how much of the run a commit was in flight, and
  # appends per commit (the stick has no /metrics: empty).
  local journal
  journal=$(curl -s http://127.0.0.1:$PORT/metrics | grep -E '^turnout_journal_(commit_seconds_sum|batch_size_(sum|count)) ' || true)
  python3 - "$name" "$before" "$after" "$ticks" "$db_before" "$db_after" "$DURATION" <<PY
import re, sys
name, before, after, ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
db_ticks = int(sys.argv[6]) - int(sys.argv[5])
text = """$result"""
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
cpu_us = (after - before) / ticks * 1e6 / max(total, 1)
db = f"  database {db_ticks / ticks * 1e6 / max(total, 1):6.1f} µs per join" if db_ticks else ""
metrics = dict(line.split() for line in """$journal""".splitlines())
journal = ""
if metrics:
    busy = float(metrics["turnout_journal_commit_seconds_sum"]) / int(sys.argv[7])
    batch = float(metrics["turnout_journal_batch_size_sum"]) / max(float(metrics["turnout_journal_batch_size_count"]), 1)
    journal = f"  journal busy {busy:4.0%}, {batch:5.0f} appends per commit"
print(f"{name:<16} wrk {rate:9.0f} joins/s  server {cpu_us:6.1f} µs per join{db}  non-2xx: {errors.group(1) if errors else 0}{journal}")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# chosen <system>: whether SYSTEMS names it.
chosen() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# stick <system> <name> [flags…]: runs http-stick with the flags, when chosen.
stick() {
  local system=$1 name=$2
  shift 2
  chosen "$system" || return 0
  target/release/http-stick --bind 127.0.0.1:$PORT --jwt-key $KEY "$@" >/dev/null 2>&1 &
  run "$name" $!
}

for round in $(seq 1 "${ROUNDS:-2}"); do
  stick stick stick
  stick durable "durable stick" --durable "$dir/joins.$round"
  stick sqlite "sqlite stick" --sqlite "$dir/joins.$round.db"
  chosen turnout || continue
  data=$(mktemp -d)
  if [ -n "${RESET:-}" ]; then bash -c "$RESET"; fi
  start_turnout "$data" "$@"
  run "turnout" $pid
  rm -rf "$data"
done
rm -rf "$dir"
