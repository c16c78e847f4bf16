#!/usr/bin/env bash
# Reads side by side with the measuring stick, in one session: 2,000
# reads/s (an event's details; one in LIST_EVERY the listing, 0 for none)
# plus 20 joins/s over 200 events, 20 s, on the HTTP stick (actix-web, the
# token checked, the event and its counts in memory: a read at its
# plainest) and on Turnout (SQLite, the event cache on), taking turns
# ROUNDS times (2), each on a fresh server.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/reads-stick.sh            # BIN=… for another build of the server
source "$(dirname "$0")/lib.sh"
KEY=reads-bench-key-reads-bench-key-0123
PORT=18132
for round in $(seq 1 "${ROUNDS:-2}"); do
  for system in stick turnout; do
    data=$(mktemp -d)
    if [ $system = stick ]; then
      target/release/http-stick --bind 127.0.0.1:$PORT --jwt-key $KEY >/dev/null 2>&1 &
      pid=$!
      await_answer
    else
      start_turnout "$data"
      await_ready
    fi
    target/release/turnout-loadtest mixed --target http://127.0.0.1:$PORT --jwt-key $KEY \
      --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every ${LIST_EVERY:-4} \
      --server-pid $pid --json "$data/r.json" >"$data/tool.log" 2>&1 || true
    report_line "$data/r.json" "$system"
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf "$data"
  done
done
