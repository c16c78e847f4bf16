#!/usr/bin/env bash
# Interleaved A/B of two server builds on the same load, in one session:
# A and B alternate (ABBA order per round), each run on a fresh server and a
# fresh SQLite database, so drift on a shared machine falls on both alike.
#
#   loadtest/ab.sh DIR_A DIR_B [ROUNDS]
#
# DIR_A and DIR_B each hold a release `turnout` (build one checkout, copy
# the binary out, build the other); DIR_A also holds the `turnout-loadtest`
# that drives both, so a change to the tool, which shares the cores, is not
# counted as the server's. Prints
# one line per run and a per-build summary (median of the runs) of hot-join
# (20,000 users through 1,000 connections, capacity 1,000) and ws-fanout
# (5,000 clients on one venue, 10 rounds); SCENARIOS="hot-join" runs one.
A=${1:?usage: loadtest/ab.sh DIR_A DIR_B [ROUNDS]}
B=${2:?usage: loadtest/ab.sh DIR_A DIR_B [ROUNDS]}
# As given from where the script was started: lib.sh moves to the repo.
A=$(realpath -e "$A") || exit 2
B=$(realpath -e "$B") || exit 2
source "$(dirname "$0")/lib.sh"

ROUNDS=${3:-3}
SCENARIOS=${SCENARIOS:-hot-join ws-fanout}
PORT=18081
KEY=ab-bench-key-ab-bench-key-ab-bench-key
OUT=$(mktemp -d)

run() {
  local build=$1 label=$2 scenario=$3 round=$4
  local data
  data=$(mktemp -d)
  BIN=$build/turnout start_turnout "$data"
  await_ready
  local json="$OUT/$label-$scenario-$round.json"
  # A failed check exits 1 and still writes the report, whose line says so.
  case $scenario in
    hot-join)
      "$A/turnout-loadtest" hot-join --target "http://127.0.0.1:$PORT" --jwt-key "$KEY" \
        --server-pid "$pid" --users 20000 --concurrency 1000 --capacity 1000 --json "$json" >"$data/tool.log" 2>&1 || true ;;
    ws-fanout)
      "$A/turnout-loadtest" ws-fanout --target "http://127.0.0.1:$PORT" --jwt-key "$KEY" \
        --server-pid "$pid" --clients 5000 --rounds 10 --json "$json" >"$data/tool.log" 2>&1 || true ;;
  esac
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  if [ ! -s "$json" ]; then
    echo "$label $scenario: no report; the tool said:" >&2
    tail -5 "$data/tool.log" >&2
    rm -rf "$data"
    return 1
  fi
  rm -rf "$data"
  python3 - "$json" "$label" "$scenario" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
if "ok_per_s" not in d:  # an older build's tool: its 2xx over the run, kept for the medians
    d["ok_per_s"] = sum(n for k, n in d["outcomes"].items() if k.startswith("2")) / max(d["elapsed_s"], 1e-9)
    json.dump(d, open(sys.argv[1], "w"))
cpu = next((c["detail"].split(" µs")[0] for c in d["checks"] if c["name"].startswith("server CPU")), "?")
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'{sys.argv[2]} {sys.argv[3]:9} {d["ok_per_s"]:9.0f}/s  p50 {d["latency"]["p50_ms"]:7.2f}  '
      f'p99 {d["latency"]["p99_ms"]:7.2f} ms  server CPU {cpu} µs/{"delivery" if sys.argv[3] == "ws-fanout" else "join"}  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
EOF
}

for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    if (( round % 2 )); then order="A B"; else order="B A"; fi
    for label in $order; do
      if [ "$label" = A ]; then run "$A" A "$scenario" "$round"; else run "$B" B "$scenario" "$round"; fi
    done
  done
done

python3 - "$OUT" <<'EOF'
import glob, json, statistics, sys
print("\nmedian over the runs:")
for scenario in ("hot-join", "ws-fanout"):
    for label in ("A", "B"):
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/{label}-{scenario}-*.json"))]
        if not runs:
            continue
        cpu = [float(c["detail"].split(" µs")[0]) for r in runs for c in r["checks"] if c["name"].startswith("server CPU")]
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        print(f'{label} {scenario:9} {med([r["ok_per_s"] for r in runs]):9.0f}/s  '
              f'p50 {med([r["latency"]["p50_ms"] for r in runs]):7.2f}  p99 {med([r["latency"]["p99_ms"] for r in runs]):7.2f} ms  '
              f'server CPU {med(cpu):.1f} µs/{"delivery" if scenario == "ws-fanout" else "join"}')
EOF
