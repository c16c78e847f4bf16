#!/usr/bin/env bash
# Turnout's fan-out against the bare-broadcast measuring stick
# (src/bin/ws-stick.rs: after the handshake, one thread writes each update's
# frame bytes to every socket), side by side in one session: the same
# ws-fanout load (CLIENTS clients on one venue, ROUNDS joins) on fresh
# servers — the stick, then Turnout on SQLite (each binary of BINS, for an
# A/B of two builds) — PAIRS times, interleaved. PAUSE_MS idles that long
# before each update, as a venue's screens do between updates. At the end,
# each build's CPU per delivery over the stick's in the same pair, and the
# median of those ratios: from one pair to the next each side moves by
# ±10 % on this shared machine, more than a change to the hub does.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/fanout-ab.sh
#   BINS="/tmp/turnout-before target/release/turnout" loadtest/fanout-ab.sh
source "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)"   # 10,000 sockets on each side
KEY=stick-bench-key-stick-bench-key-0123
runs=$(mktemp)
# lib.sh's trap (the servers stop with the script), and the runs' list too.
trap 'rm -f "$runs"; kill $(jobs -p) 2>/dev/null || true' EXIT
PORT=18152
CLIENTS=${CLIENTS:-10000}

load() {
  local name=$1 pid=$2 data=$3
  target/release/turnout-loadtest ws-fanout --target http://127.0.0.1:$PORT --jwt-key $KEY \
    --server-pid "$pid" --clients "$CLIENTS" --rounds "${ROUNDS:-10}" --pause-ms "${PAUSE_MS:-0}" \
    --json "$data/r.json" >/dev/null 2>&1 || true
  python3 - "$data/r.json" "$name" "$runs" "${4:-$name}" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
# The server's and the tool's CPU per delivery. It comes in 10 ms ticks, so
# its second decimal means something from ROUNDS=60 (a tick is 0.017 µs
# per delivery there), not at 10.
cpu = [re.match(r"[\d.]+", c["detail"]).group(0) for c in d["checks"] if "CPU" in c["name"]]
idle = [c["detail"].split(" per")[0] for c in d["checks"] if "per idle connection" in c["name"]]
failed = [c["name"] for c in d["checks"] if not c["passed"]]
with open(sys.argv[3], "a") as runs:
    runs.write(f"{cpu[0]} {sys.argv[4]}\n")
print(f'{sys.argv[2]:<16} p50 {d["latency"]["p50_ms"]:6.1f}  p99 {d["latency"]["p99_ms"]:6.1f} ms  server {cpu[0]:>6} µs / tool {cpu[1]:>6} µs per delivery  idle {idle[0] if idle else "?":>9} per connection  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for pair in $(seq 1 "${PAIRS:-3}"); do
  data=$(mktemp -d)
  target/release/ws-stick --bind 127.0.0.1:$PORT >"$data/log" 2>&1 &
  pid=$!
  await_answer
  load stick $pid "$data"; rm -rf "$data"

  for bin in ${BINS:-target/release/turnout}; do
    data=$(mktemp -d)
    BIN=$bin start_turnout "$data"
    await_ready
    load "$(basename "$bin")" $pid "$data" "$bin"; rm -rf "$data"
  done
done

python3 - "$runs" <<'PY'
import statistics, sys
ratios, stick = {}, None
for line in open(sys.argv[1]):
    cpu, name = line.rstrip("\n").split(" ", 1)
    if name == "stick":
        stick = float(cpu)
    elif stick:  # a pair whose stick measured no CPU at all has no ratio
        ratios.setdefault(name, []).append(float(cpu) / stick)
for name, each in ratios.items():
    print(f"{name:<16} × the stick, pair by pair: {', '.join(f'{r:.2f}' for r in each)}; median {statistics.median(each):.2f}")
PY
