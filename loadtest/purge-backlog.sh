#!/usr/bin/env bash
# The mix (400 joins/s, 1,500 reads/s, 200 subscribers) for 90 s on a SQLite
# database whose outbox holds ROWS published rows past the retention, so
# the server purges them while it serves; prints the latency and the
# slowest seconds. For an A/B of two builds:
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/purge-backlog.sh /tmp/turnout-before 2000000
#   loadtest/purge-backlog.sh target/release/turnout 2000000
source "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/turnout}; ROWS=${2:-2000000}
KEY=bench-key-bench-key-bench-key-0123; PORT=18171
data=$(mktemp -d)
# At info, for the purge's lines; a start on the backlog may take a while.
run() { start_turnout "$data" TURNOUT_LOG_LEVEL=info; await_ready 60; }
run; kill $pid; wait $pid 2>/dev/null || true
python3 - "$data/turnout.db" $ROWS <<'PY'
import sqlite3, sys, os
c = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?) INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, payload, status, next_attempt_at, created_at, published_at) SELECT randomblob(16), 'events', randomblob(16), 1, 'joined', '{\"user\":\"00000000-0000-0000-0000-000000000000\",\"seats\":1,\"at\":1}', 'published', 0, 1, 1 FROM n", (n,))
c.commit(); print("outbox rows", c.execute("select count(*) from outbox").fetchone()[0], "db MiB", os.path.getsize(sys.argv[1])//1048576)
PY
run
target/release/turnout-loadtest mixed --target http://127.0.0.1:$PORT --jwt-key $KEY --events 200 --capacity 100 --duration 90 \
  --join-rate 400 --read-rate 1500 --subscribers 200 --server-pid $pid 2>&1 | grep -E "latency by|slowest|FAIL" || true
grep -i "purged" $data/log | head -3 || true
kill $pid; wait $pid 2>/dev/null || true; rm -rf $data
