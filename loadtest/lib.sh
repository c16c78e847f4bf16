# Sourced by the benchmark scripts: what each of them does the same way.
#
# - Stops on the first error, and whatever stops the script stops the
#   servers it started.
# - BIN (another build of the server, for an A/B) may be given relative to
#   where the script was started from; the script then runs from the repo.
# - start_turnout DATA [VAR=value…]: Turnout on SQLite in DATA, on $PORT,
#   with the abuse limits off (one machine sends the whole load) and $KEY
#   as its signing key, logging to DATA/log; its pid in $pid.
# - await_ready [SECONDS]: until Turnout on $PORT says ready, for at most
#   SECONDS (10; more for a server under valgrind or on a large database);
#   await_answer: until anything on $PORT answers (the sticks have no
#   /ready).
# - db_cpu: the CPU ticks of every process named DB_PROCESS (e.g.
#   postgres), what the database spends beside the server; 0 without one.
# - report_line JSON LABEL: the load tool's report in one line, or the
#   tool's own log when it wrote no report.
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
if [ -n "${BIN:-}" ]; then BIN=$(realpath "$BIN"); fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start_turnout() {
  local data=$1
  shift
  env TURNOUT_JWT_SECRETS="$KEY" TURNOUT_LOG_LEVEL=warn TURNOUT_DATA_DIR="$data" \
    TURNOUT_DATABASE_URL="sqlite://$data/turnout.db?mode=rwc" \
    TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 \
    TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP=0 "$@" \
    "${BIN:-target/release/turnout}" --bind "127.0.0.1:$PORT" >"$data/log" 2>&1 &
  pid=$!
}

await_ready() {
  for _ in $(seq 1 $((${1:-10} * 10))); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && return 0; sleep 0.1; done
  echo "nothing ready on port $PORT" >&2
  return 1
}

await_answer() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0; sleep 0.1; done
  echo "nothing answers on port $PORT" >&2
  return 1
}

db_cpu() {
  if [ -z "${DB_PROCESS:-}" ]; then echo 0; return; fi
  for p in $(pgrep -x "$DB_PROCESS"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done \
    | awk '{n += $1} END {print n + 0}'
}

report_line() {
  local json=$1 label=$2
  if [ ! -s "$json" ]; then
    echo "$label: no report; the tool's log:"
    tail -5 "$(dirname "$json")/tool.log" 2>/dev/null || true
    return 0
  fi
  python3 - "$json" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = "; ".join(f'{c["name"]}: {c["detail"]}' for c in d["checks"] if "CPU" in c["name"])
failed = [c["name"] for c in d["checks"] if not c["passed"]]
print(f'{sys.argv[2]}  {d["ok_per_s"]:6.0f} 2xx/s  non-2xx {d["error_rate"]:.2%}  p50 {d["latency"]["p50_ms"]:.2f}  p99 {d["latency"]["p99_ms"]:.2f} ms  {cpu}  {"FAILED " + ",".join(failed) if failed else "all checks pass"}')
PY
}
