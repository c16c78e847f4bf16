#!/usr/bin/env bash
# What a join alone in its commit writes, counted by strace: the server's
# pwrite64 and fsync calls while USERS (400) users join one event one at a
# time (hot-join --concurrency 1), divided by the joins. Each WAL frame is
# two pwrites (its header and its page), so half the pwrites are the pages
# a lone join costs, the relay's marks included. Deterministic where CPU
# time is not: for an A/B of a change to what a commit writes,
#
#   cargo build --release -p turnout -p turnout-loadtest
#   cp target/release/turnout /tmp/turnout-a     # … and another build as -b
#   for b in a b a b; do BIN=/tmp/turnout-$b loadtest/writes-per-join.sh; done
#
# Needs strace (Debian's package).
source "$(dirname "$0")/lib.sh"
KEY=writes-bench-key-writes-bench-key-0123
PORT=18133
USERS=${USERS:-400}
data=$(mktemp -d)
env TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR=$data \
  TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
  TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
  ${BIN:-target/release/turnout} --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
pid=$!
await_ready
strace -f -c -e trace=pwrite64,fsync -p $pid -o "$data/strace" 2>/dev/null &
tracer=$!
sleep 0.5
target/release/turnout-loadtest hot-join --target http://127.0.0.1:$PORT --jwt-key $KEY \
  --users "$USERS" --concurrency 1 --capacity "$USERS" --json "$data/r.json" >/dev/null 2>&1 || true
kill -INT $tracer; wait $tracer || true
awk -v users="$USERS" -v bin="${BIN:-target/release/turnout}" '
  $NF == "pwrite64" || $NF == "fsync" { n[$NF] = $4 }
  END { printf "%s  %.2f pwrites, %.2f fsyncs per join\n", bin, n["pwrite64"] / users, n["fsync"] / users }
' "$data/strace"
kill $pid; wait $pid 2>/dev/null || true
rm -rf "$data"
