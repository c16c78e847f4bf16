#!/usr/bin/env bash
# One hot event, and joins spread over 200 events, through 1, 2 and 3 nodes
# on one Postgres — round-robin from the load tester, as a balancer would
# send them — in one session, interleaved (1, 2, 3 nodes per round), each
# run on fresh nodes and a fresh database. Per run: joins/s, p50/p99, the
# error rate, the CPU all nodes together spent per join, and what forwarding
# cost: the share of commands forwarded and the mean round trip of one
# (from each node's turnout_forward_seconds).
#
#   loadtest/cluster-bench.sh [ROUNDS]
#
# Needs release binaries (cargo build --release -p turnout -p turnout-loadtest)
# and Postgres at $PG_BASE (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-2}
PG_BASE=${PG_BASE:-postgres://postgres@127.0.0.1:5432}
BIN=${BIN:-target/release}
KEY=cluster-bench-key-cluster-bench-key
FIRST_PORT=18111
OUT=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

cpu_ticks() { # utime + stime of every pid given
  local total=0
  for pid in "$@"; do
    read -r -a stat <"/proc/$pid/stat"
    total=$((total + stat[13] + stat[14]))
  done
  echo "$total"
}

metric_sum() { # the sum of a metric's samples over every node's /metrics
  local name=$1 total=0 port value
  shift
  for port in "$@"; do
    value=$(curl -sf "http://127.0.0.1:$port/metrics" | awk -v n="$name" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }')
    total=$(python3 -c "print($total + $value)")
  done
  echo "$total"
}

run() {
  local nodes=$1 scenario=$2 round=$3
  local db="turnout_bench_$$_${nodes}_${scenario//-/_}_$round"
  psql "$PG_BASE/postgres" -qc "CREATE DATABASE $db" >/dev/null
  local data ports=() targets=()
  data=$(mktemp -d)
  PIDS=()
  for i in $(seq 0 $((nodes - 1))); do
    local port=$((FIRST_PORT + i))
    ports+=("$port")
    targets+=("http://127.0.0.1:$port")
    mkdir -p "$data/node-$i"
    TURNOUT_JWT_SECRETS=$KEY TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR="$data/node-$i" \
      TURNOUT_DATABASE_URL="$PG_BASE/$db" \
      TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
      TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP=0 \
      "$BIN/turnout" --bind "127.0.0.1:$port" >"$data/node-$i.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
      sleep 0.1
    done
  done
  # Placement settles within a few rounds (four per heartbeat).
  sleep 2
  local target_list
  target_list=$(IFS=,; echo "${targets[*]}")
  local json="$OUT/$nodes-$scenario-$round.json"
  local before
  before=$(cpu_ticks "${PIDS[@]}")
  case $scenario in
    hot-join)
      "$BIN/turnout-loadtest" hot-join --target "$target_list" --jwt-key "$KEY" \
        --users 20000 --concurrency 1000 --capacity 1000 --json "$json" >/dev/null 2>&1 || true ;;
    spread-join)
      "$BIN/turnout-loadtest" spread-join --target "$target_list" --jwt-key "$KEY" \
        --events 200 --users 20000 --concurrency 500 --capacity 100 --json "$json" >/dev/null 2>&1 || true ;;
  esac
  local after
  after=$(cpu_ticks "${PIDS[@]}")
  local forwarded answered forward_sum forward_count
  forwarded=$(metric_sum turnout_forwarded_commands_total "${ports[@]}")
  answered=$(metric_sum 'turnout_forwarded_commands_total{outcome="answered"}' "${ports[@]}")
  forward_sum=$(metric_sum turnout_forward_seconds_sum "${ports[@]}")
  forward_count=$(metric_sum turnout_forward_seconds_count "${ports[@]}")
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  psql "$PG_BASE/postgres" -qc "DROP DATABASE $db" >/dev/null
  rm -rf "$data"
  python3 - "$json" "$nodes" "$scenario" "$((after - before))" "$(getconf CLK_TCK)" \
    "$forwarded" "$answered" "$forward_sum" "$forward_count" <<'EOF'
import json, sys
path, nodes, scenario, ticks, hz, forwarded, answered, fsum, fcount = sys.argv[1:]
d = json.load(open(path))
failed = [c["name"] for c in d["checks"] if not c["passed"]]
cpu_us = int(ticks) / int(hz) * 1e6 / max(d["requests"], 1)
share = float(forwarded) / max(d["requests"], 1)
mean_fwd = float(fsum) / float(fcount) * 1e3 if float(fcount) else 0.0
print(f'{nodes} node(s) {scenario:11} {d["ok_per_s"]:7.0f} joins/s  p50 {d["latency"]["p50_ms"]:7.2f}  '
      f'p99 {d["latency"]["p99_ms"]:7.2f} ms  errors {d["error_rate"]:.4f}  nodes CPU {cpu_us:6.0f} µs/join  '
      f'forwarded {share:5.1%} (answered {int(float(answered))}), mean forward {mean_fwd:5.2f} ms  '
      f'{"FAILED " + ",".join(failed) if failed else "all checks pass"}')
EOF
}

for round in $(seq 1 "$ROUNDS"); do
  for scenario in hot-join spread-join; do
    for nodes in 1 2 3; do
      run "$nodes" "$scenario" "$round"
    done
  done
done
