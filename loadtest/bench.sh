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
# On Postgres the database works in processes of its own, so the table has
# their CPU too, per request, over the tool's whole run (setup included):
# on SQLite the database is inside the server's figure.
#
# Loads: hot (hot-join: 20,000 users through 1,000 connections, one event of
# capacity 1,000); spread (spread-join: 400 joins/s over 200 events of
# capacity 100); reads (2,000 reads/s — an event's details, one in four the
# listing — plus 20 joins/s); mix (400 joins/s, 1,500 reads/s and 2,000
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
# the server just started, keeps its report (and, on Postgres, the
# database's CPU), and stops the server.
load() {
  local name=$1 system=$2 before
  shift 2
  echo "bench: $name on $system" >&2
  before=$(DB_PROCESS=postgres db_cpu)
  # A failed check exits 1 and still writes its report: the table says
  # which. No report at all is a failed run, named below the table.
  target/release/turnout-loadtest "$@" --target http://127.0.0.1:$PORT --jwt-key $KEY \
    --server-pid "$pid" --json "$out/$name.$system.json" >"$out/$name.$system.log" 2>&1 || true
  if [ ! -s "$out/$name.$system.json" ]; then
    echo "$name on $system" >>"$out/no-report"
    echo "bench: $name on $system wrote no report:" >&2
    tail -5 "$out/$name.$system.log" >&2
  fi
  if [[ $system == *postgres* ]]; then echo $(($(DB_PROCESS=postgres db_cpu) - before)) >"$out/$name.$system.db"; fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

hot=(hot-join --users 20000 --concurrency 1000 --capacity 1000)
spread=(spread-join --events 200 --capacity 100 --users 8000 --rate 400)
reads=(mixed --events 200 --capacity 100 --duration 20 --join-rate 20 --read-rate 2000 --subscribers 0 --list-every 4)
mix=(mixed --events 200 --capacity 100 --duration "${MIX_SECS:-30}" --join-rate 400 --read-rate 1500 --subscribers 2000)
fanout=(ws-fanout --clients 10000 --rounds 60)

stick http-stick --jwt-key $KEY; load hot stick "${hot[@]}"
stick http-stick --jwt-key $KEY --durable "$out/joins.hot"; load hot "durable stick" "${hot[@]}"
stick http-stick --jwt-key $KEY; load spread stick "${spread[@]}"
stick http-stick --jwt-key $KEY --durable "$out/joins.spread"; load spread "durable stick" "${spread[@]}"
stick http-stick --jwt-key $KEY --sqlite "$out/joins-hot.db"; load hot "sqlite stick" "${hot[@]}"
stick http-stick --jwt-key $KEY --sqlite "$out/joins-spread.db"; load spread "sqlite stick" "${spread[@]}"
for db in sqlite postgres; do
  turnout $db; load hot "turnout $db" "${hot[@]}"
  turnout $db; load spread "turnout $db" "${spread[@]}"
  turnout $db; load mix "turnout $db" "${mix[@]}"
done
turnout sqlite; load reads "turnout sqlite" "${reads[@]}"
for pair in $(seq 1 "${FANOUT_PAIRS:-7}"); do
  stick ws-stick; load "fan-out~$pair" stick "${fanout[@]}"
  turnout sqlite; load "fan-out~$pair" "turnout sqlite" "${fanout[@]}"
done
CLIENTS="8 16" SECONDS_EACH=15 loadtest/classic-bench.sh >"$out/classic.txt" 2>&1 || true

python3 - "$out" "${BIN:-$(git rev-parse --short HEAD)}" "$(getconf CLK_TCK)" <<'PY'
import datetime, glob, json, os, re, sys
import dataclasses
from dataclasses import dataclass, field
out, commit, ticks = sys.argv[1], sys.argv[2], int(sys.argv[3])
order = ["hot", "spread", "reads", "mix", "fan-out"]

@dataclass
class Row:
    """One report of the tool: a load on one system."""
    load: str
    system: str
    ok_per_s: float  # what was answered 2xx: fast errors are not speed
    errors: float    # the share answered otherwise
    p99: float
    cpu: float | None  # the server's CPU per request, µs
    per: str           # what a request is ("join", "delivery", …)
    db: float | None   # the database's CPU per request, µs (Postgres)
    failed: list = field(default_factory=list)

    def key(self):
        return (order.index(self.load), self.system != "stick", self.system)

rows, fanout_rows = [], {}
for path in glob.glob(os.path.join(out, "*.json")):
    load, system = os.path.basename(path)[:-5].split(".", 1)
    load, _, pair = load.partition("~")
    d = json.load(open(path))
    server = next((c["detail"] for c in d["checks"] if c["name"].startswith("server CPU")), "")
    m = re.match(r"([\d.]+) µs per (\w+)", server)
    db_path = path[:-5] + ".db"
    row = Row(
        load, system,
        ok_per_s=d["ok_per_s"], errors=d["error_rate"], p99=d["latency"]["p99_ms"],
        cpu=float(m.group(1)) if m else None, per=m.group(2) if m else "",
        db=int(open(db_path).read()) / ticks * 1e6 / max(d["requests"], 1) if os.path.exists(db_path) else None,
        failed=[c["name"] for c in d["checks"] if not c["passed"]])
    if pair:
        fanout_rows.setdefault(system, {})[int(pair)] = row
    else:
        rows.append(row)
# The fan-out's pairs: the table shows the pair whose ratio is the median
# (the lower of the two middle ones for an even count), with every
# pair's failed checks.
turnout_pairs, stick_pairs = fanout_rows.get("turnout sqlite", {}), fanout_rows.get("stick", {})
fanout_ratios = {n: turnout_pairs[n].cpu / stick_pairs[n].cpu for n in sorted(turnout_pairs)
                 if n in stick_pairs and turnout_pairs[n].cpu and stick_pairs[n].cpu}
if fanout_ratios:
    by_ratio = sorted(fanout_ratios, key=fanout_ratios.get)
    median = by_ratio[(len(by_ratio) - 1) // 2]
    for each in fanout_rows.values():
        failed = sorted({name for row in each.values() for name in row.failed})
        rows.append(dataclasses.replace(each[median], failed=failed))
# What each Turnout row is held against, by load: the stick, and the
# sticks in the table's further columns.
sticks = {row.load: row for row in rows if row.system == "stick"}
floors = ["durable stick", "sqlite stick"]
floor_cpu = {(row.system, row.load): row.cpu for row in rows if row.system in floors}
print(f"Turnout bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, at {commit}\n")
print("| load | system | 2xx/s | non-2xx | p99 | server CPU per request | × the stick's CPU | × the durable stick's | × the SQLite stick's | throughput ÷ the stick's | database CPU per request | checks |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in sorted(rows, key=Row.key):
    stick = sticks.get(row.load)
    if row.system == "stick":
        times = share = "1"
    else:
        times = f"{row.cpu / stick.cpu:.2f}" if stick and stick.cpu and row.cpu else "—"
        if row.load == "fan-out" and fanout_ratios:
            times += " (the median pair)"
        share = f"{row.ok_per_s / stick.ok_per_s:.2f}" if stick and stick.ok_per_s and row.load == "hot" else "—"
    times_floors = " | ".join(
        f"{row.cpu / floor_cpu[(floor, row.load)]:.2f}"
        if floor_cpu.get((floor, row.load)) and row.cpu and "stick" not in row.system else "—"
        for floor in floors)
    cpu_text = f"{row.cpu:.{2 if row.cpu < 10 else 1}f} µs per {row.per}" if row.cpu else "—"
    verdict = "all pass" if not row.failed else "FAILED: " + ", ".join(row.failed)
    db_text = f"{row.db:.1f} µs" if row.db is not None else ("in the server" if "sqlite" in row.system else "—")
    print(f"| {row.load} | {row.system} | {row.ok_per_s:,.0f} | {row.errors:.2%} | {row.p99:.1f} ms | {cpu_text} | {times} | {times_floors} | {share} | {db_text} | {verdict} |")
if fanout_rows:
    print("\nfan-out, server CPU per delivery pair by pair: " + "; ".join(
        f"{system} " + ", ".join(f"{row.cpu:.2f}" if row.cpu else "—" for _, row in sorted(each.items())) + " µs"
        for system, each in sorted(fanout_rows.items()))
        + "; Turnout × the stick: " + ", ".join(f"{r:.2f}" for r in fanout_ratios.values()))
idle = {}
for path in glob.glob(os.path.join(out, "fan-out~1.*.json")):
    d = json.load(open(path))
    idle[os.path.basename(path)[len("fan-out~1."):-5]] = next((c["detail"] for c in d["checks"] if "per idle connection" in c["name"]), "?")
if idle:
    print("\nserver memory per idle WebSocket connection (fan-out): " + "; ".join(f"{system} {detail}" for system, detail in sorted(idle.items())))
classic = open(os.path.join(out, "classic.txt")).read()
best = max((float(m.group(2)), int(m.group(1))) for m in re.finditer(r"clients (\d+): ([\d.]+) joins/s", classic)) if "joins/s" in classic else None
if best:
    hot_stick = sticks.get("hot")
    ratio = f"; ÷ the stick's throughput: {best[0] / hot_stick.ok_per_s:.2f}" if hot_stick and hot_stick.ok_per_s else ""
    print(f"\nclassic design at its best (pgbench, {best[1]} clients): {best[0]:,.0f} joins/s{ratio}")
else:
    print("\nclassic design: no result (classic-bench.sh failed):\n" + classic[-500:])
missing = os.path.join(out, "no-report")
if os.path.exists(missing):
    print("\nNO REPORT (the tool failed; its output was shown as it ran): " + "; ".join(open(missing).read().split("\n")[:-1]))
PY
rm -rf "$out"
