#!/usr/bin/env bash
# Every load in one go, each on a fresh server, and one table: the
# measuring sticks, Turnout on SQLite and on Postgres, and the classic
# design, side by side in one session — the table at the top of
# docs/BENCHMARKS.md.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/bench.sh            # needs Postgres at 127.0.0.1:5432 (user postgres), Redis at
#                                # 127.0.0.1:6379 and pgbench
#
# Turnout on Postgres runs as a cluster node does, with Redis carrying the
# changes (REDIS_URL to use another; REDIS_URL= runs it without): without
# Redis a Postgres node cannot hear another node's changes, so it reads the
# listing from the database on every request.
#
# BIN names another build of the server to run (an A/B of two builds in one
# session); the table then names it instead of the commit.
#
# On Postgres the database and Redis work in processes of their own: the
# tool reads their CPU over the server's own window (`--companion`), the
# table shows it beside the server's, and Turnout on Postgres is held
# against the sticks by the two together: each stick's storage is inside
# its own figure, as SQLite is inside Turnout's.
#
# The hot and spread loads run ROUNDS times (3), the systems in turn, in
# reverse order every other round; each Turnout row is the round whose
# ratio to the stick's CPU is the median, its ratios taken against the
# sticks of that round (all of a load's runs within a few minutes, and
# neither side always first).
#
# Loads: hot (hot-join: 20,000 users through 1,000 connections, one event of
# capacity 1,000); spread (spread-join: 400 joins/s over 200 events of
# capacity 100); reads (2,000 reads/s — an event's details, one in four the
# listing — plus 20 joins/s; the HTTP stick and Turnout on SQLite take
# turns READS_PAIRS times (3), and the table shows the median pair); mix (400 joins/s, 1,500 reads/s and 2,000
# subscribers over 200 events, MIX_SECS seconds; the ten-minute run is its
# own command in docs/BENCHMARKS.md); fan-out (10,000 WebSocket clients on
# one venue, 60 updates: ten were too few to tell builds apart; the stick
# and Turnout take turns FANOUT_PAIRS times (7), and the table shows the
# pair whose ratio is the median, since from one pair to the next each
# side moves by ±10 % on this machine: with three pairs the median itself
# was 1.25 and 1.06 within half an hour); classic
# (pgbench on the stored-procedure design, best of 8 and 16 clients).
#
# Three sticks for the joins: the HTTP stick holds memberships in memory
# only; the durable stick (`http-stick --durable`) also appends each new
# one to a file and fsyncs it, in groups, before answering: a durable join
# at its plainest, to hold spread joins (one commit each) against; the
# SQLite stick (`http-stick --sqlite`) commits instead, in groups, the five
# records the one-transaction rule asks of a join (fact, membership,
# counts, answer, outbox row) to SQLite with Turnout's settings: that rule
# at its plainest on SQLite, with nothing else of Turnout's.
source "$(dirname "$0")/lib.sh"
ulimit -n "$(ulimit -Hn)"
KEY=bench-key-bench-key-bench-key-0123
PORT=18161
PG=postgres://postgres@127.0.0.1:5432
REDIS=${REDIS_URL-redis://127.0.0.1:6379}
out=$(mktemp -d)

# turnout <sqlite|postgres>: a fresh server on a fresh database.
turnout() {
  local data more=()
  data=$(mktemp -d)
  if [ "$1" = postgres ]; then
    dropdb -h 127.0.0.1 -U postgres --if-exists turnout_bench
    createdb -h 127.0.0.1 -U postgres turnout_bench
    more=(TURNOUT_DATABASE_URL=$PG/turnout_bench)
    if [ -n "$REDIS" ]; then
      redis-cli -u "$REDIS" del turnout:bench >/dev/null
      more+=(TURNOUT_REDIS_URL="$REDIS" TURNOUT_REALTIME__REDIS_CHANNEL=turnout:bench)
    fi
  fi
  start_turnout "$data" "${more[@]}"
  await_ready && return 0
  echo "bench: turnout on $1 did not become ready; its log:" >&2
  tail -20 "$data/log" >&2
  return 1
}

stick() {
  target/release/"$1" --bind 127.0.0.1:$PORT "${@:2}" >/dev/null 2>&1 &
  pid=$!
  await_answer
}

# load <load> <system> <scenario and its arguments…>: runs the tool against
# the server just started, keeps its report (on Postgres with the CPU of
# the database and Redis), and stops the server.
load() {
  local name=$1 system=$2 companions=()
  shift 2
  echo "bench: $name on $system" >&2
  if [[ $system == *postgres* ]]; then companions=(--companion postgres --companion redis-server); fi
  # A failed check exits 1 and still writes its report: the table says
  # which. No report at all is a failed run, named below the table.
  target/release/turnout-loadtest "$@" --target http://127.0.0.1:$PORT --jwt-key $KEY \
    --server-pid "$pid" "${companions[@]}" --json "$out/$name.$system.json" >"$out/$name.$system.log" 2>&1 || true
  if [ ! -s "$out/$name.$system.json" ]; then
    echo "$name on $system" >>"$out/no-report"
    echo "bench: $name on $system wrote no report:" >&2
    tail -5 "$out/$name.$system.log" >&2
  fi
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}

hot=(hot-join --users 20000 --concurrency 1000 --capacity 1000)
spread=(spread-join --events 200 --capacity 100 --users 8000 --rate 400)
reads=(mixed --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every 4)
mix=(mixed --events 200 --capacity 100 --duration "${MIX_SECS:-30}" --join-rate 400 --read-rate 1500 --subscribers 2000)
fanout=(ws-fanout --clients 10000 --rounds 60)

# on <system> <load> <round>: one run of a join load on a fresh server.
on() {
  local system=$1 name=$2 round=$3 args
  if [ "$name" = hot ]; then args=("${hot[@]}"); else args=("${spread[@]}"); fi
  case $system in
    stick) stick http-stick --jwt-key $KEY ;;
    "durable stick") stick http-stick --jwt-key $KEY --durable "$out/joins.$name.$round" ;;
    "sqlite stick") stick http-stick --jwt-key $KEY --sqlite "$out/joins-$name-$round.db" ;;
    "turnout sqlite") turnout sqlite ;;
    "turnout postgres") turnout postgres ;;
  esac
  load "$name~$round" "$system" "${args[@]}"
}
systems=(stick "durable stick" "sqlite stick" "turnout sqlite" "turnout postgres")
for round in $(seq 1 "${ROUNDS:-3}"); do
  order=("${systems[@]}")
  if ((round % 2 == 0)); then order=(); for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done; fi
  for name in hot spread; do
    for system in "${order[@]}"; do on "$system" $name "$round"; done
  done
done
for db in sqlite postgres; do
  turnout $db; load mix "turnout $db" "${mix[@]}"
done
for pair in $(seq 1 "${READS_PAIRS:-3}"); do
  order=(stick "turnout sqlite")
  if ((pair % 2 == 0)); then order=("turnout sqlite" stick); fi
  for system in "${order[@]}"; do
    if [ "$system" = stick ]; then stick http-stick --jwt-key $KEY; else turnout sqlite; fi
    load "reads~$pair" "$system" "${reads[@]}"
  done
done
for pair in $(seq 1 "${FANOUT_PAIRS:-7}"); do
  stick ws-stick; load "fan-out~$pair" stick "${fanout[@]}"
  turnout sqlite; load "fan-out~$pair" "turnout sqlite" "${fanout[@]}"
done
CLIENTS="8 16" SECONDS_EACH=15 loadtest/classic-bench.sh >"$out/classic.txt" 2>&1 || true

python3 - "$out" "${BIN:-$(git rev-parse --short HEAD)}" <<'PY'
import datetime, glob, json, os, re, sys
import dataclasses
from dataclasses import dataclass, field
out, commit = sys.argv[1], sys.argv[2]
order = ["hot", "spread", "reads", "mix", "fan-out"]
floors = ["durable stick", "sqlite stick"]

@dataclass
class Row:
    """One report of the tool: a load on one system."""
    load: str
    system: str
    ok_per_s: float  # what was answered 2xx: fast errors are not speed
    errors: float    # the share answered otherwise
    p99: float
    cpu: float | None  # the server's CPU per request answered, µs
    per: str           # what a request is ("join", "delivery", …)
    db: float | None   # the database's and Redis's CPU per request, µs (Postgres)
    failed: list = field(default_factory=list)
    run: int = 1       # which of the load's runs this is
    runs: int = 1      # of how many

    def key(self):
        return (order.index(self.load), self.system != "stick", self.system)

    def cost(self):
        """What a request cost the machine: the server and, on Postgres,
        the processes it works through (a stick's storage is in its own)."""
        return self.cpu + (self.db or 0) if self.cpu else None

def per_request(d, name):
    detail = next((c["detail"] for c in d["checks"] if c["name"].startswith(name)), "")
    m = re.match(r"([\d.]+) µs per (\w+)", detail)
    return (float(m.group(1)), m.group(2)) if m else (None, "")

# (load, system) -> {run: Row}: a load run several times (rounds, pairs)
# is named load~run.
runs = {}
for path in glob.glob(os.path.join(out, "*.json")):
    load, system = os.path.basename(path)[:-5].split(".", 1)
    load, _, run = load.partition("~")
    d = json.load(open(path))
    cpu, per = per_request(d, "server CPU")
    db, _ = per_request(d, "companion CPU")
    runs.setdefault((load, system), {})[int(run or 1)] = Row(
        load, system,
        ok_per_s=d["ok_per_s"], errors=d["error_rate"], p99=d["latency"]["p99_ms"],
        cpu=cpu, per=per, db=db,
        failed=[c["name"] for c in d["checks"] if not c["passed"]], run=int(run or 1))

def median_run(ratios):
    """The run whose ratio is the median: of an even count, the upper
    middle one, which flatters Turnout less."""
    by_ratio = sorted(ratios, key=ratios.get)
    return by_ratio[len(by_ratio) // 2]

# Each row is one run: for a system held against the stick, the run whose
# ratio to the stick of the same run is the median; for a stick, the run
# the median Turnout row of its load was held against. Every run's failed
# checks are shown.
rows, ratios_of, chosen = [], {}, {}
for (load, system), each in runs.items():
    stick = runs.get((load, "stick"), {})
    ratios = {n: each[n].cost() / stick[n].cpu for n in each
              if n in stick and each[n].cost() and stick[n].cpu}
    if "stick" not in system and ratios:
        chosen[(load, system)] = median_run(ratios)
        ratios_of[(load, system)] = ratios
for (load, system), each in runs.items():
    run = chosen.get((load, system)) or chosen.get((load, "turnout sqlite")) or min(each)
    run = run if run in each else min(each)
    failed = sorted({name for row in each.values() for name in row.failed})
    rows.append(dataclasses.replace(each[run], failed=failed, runs=len(each)))

print(f"Turnout bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, at {commit}\n")
print("| load | system | 2xx/s | non-2xx | p99 | server CPU per request | database and Redis CPU per request | × the stick's CPU | × the durable stick's | × the SQLite stick's | throughput ÷ the stick's | checks |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in sorted(rows, key=Row.key):
    run = row.run
    stick = runs.get((row.load, "stick"), {}).get(run)
    if row.system == "stick":
        times = share = "1"
    else:
        times = f"{row.cost() / stick.cpu:.2f}" if stick and stick.cpu and row.cost() else "—"
        if len(ratios_of.get((row.load, row.system), {})) > 1:
            times += " (the median of " + ", ".join(f"{r:.2f}" for _, r in sorted(ratios_of[(row.load, row.system)].items())) + ")"
        share = f"{row.ok_per_s / stick.ok_per_s:.2f}" if stick and stick.ok_per_s and row.load == "hot" else "—"
    def against(floor):
        base = runs.get((row.load, floor), {}).get(run)
        if "stick" in row.system or not base or not base.cpu or not row.cost():
            return "—"
        return f"{row.cost() / base.cpu:.2f}"
    times_floors = " | ".join(against(floor) for floor in floors)
    cpu_text = f"{row.cpu:.{2 if row.cpu < 10 else 1}f} µs per {row.per}" if row.cpu else "—"
    verdict = "all pass" if not row.failed else "FAILED: " + ", ".join(row.failed)
    db_text = f"{row.db:.1f} µs" if row.db is not None else ("in the server" if "sqlite" in row.system else "—")
    system = f"{row.system} (run {row.run} of {row.runs})" if row.runs > 1 or row.run > 1 else row.system
    print(f"| {row.load} | {system} | {row.ok_per_s:,.0f} | {row.errors:.2%} | {row.p99:.1f} ms | {cpu_text} | {db_text} | {times} | {times_floors} | {share} | {verdict} |")
fanout = {system: each for (load, system), each in runs.items() if load == "fan-out"}
if fanout:
    print("\nfan-out, server CPU per delivery run by run: " + "; ".join(
        f"{system} " + ", ".join(f"{row.cpu:.2f}" if row.cpu else "—" for _, row in sorted(each.items())) + " µs"
        for system, each in sorted(fanout.items())))
idle = {}
for path in glob.glob(os.path.join(out, "fan-out~1.*.json")):
    d = json.load(open(path))
    idle[os.path.basename(path)[len("fan-out~1."):-5]] = next((c["detail"] for c in d["checks"] if "per idle connection" in c["name"]), "?")
if idle:
    print("\nserver memory per idle WebSocket connection (fan-out): " + "; ".join(f"{system} {detail}" for system, detail in sorted(idle.items())))
classic = open(os.path.join(out, "classic.txt")).read()
results = [(float(m.group(2)), int(m.group(1))) for m in re.finditer(r"clients (\d+): ([\d.]+) joins/s", classic)]
if results:
    best = max(results)
    shown = next((row for row in rows if row.load == "hot" and row.system == "stick"), None)
    ratio = f"; ÷ the stick's throughput (the run the table shows): {best[0] / shown.ok_per_s:.2f}" if shown and shown.ok_per_s else ""
    print(f"\nclassic design at its best (pgbench, {best[1]} clients): {best[0]:,.0f} joins/s{ratio}")
else:
    print("\nclassic design: no result (classic-bench.sh failed):\n" + classic[-500:])
missing = os.path.join(out, "no-report")
if os.path.exists(missing):
    print("\nNO REPORT (the tool failed; its output was shown as it ran): " + "; ".join(open(missing).read().split("\n")[:-1]))
PY
rm -rf "$out"
