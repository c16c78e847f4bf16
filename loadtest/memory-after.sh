#!/usr/bin/env bash
# Memory after a load (issue #16: "after the load stops and actors
# passivate, RSS back within 25 % of where it started"), SQLite. The mix
# for LOAD seconds (120), then IDLE seconds (150) with the actors' and the
# hubs' idle timeouts at 30 s, so that no actor and no hub is left; then the
# same database under a fresh server, read 20 s after its start. Prints
# the server's RSS at each point — split into anonymous pages (the heap,
# threads' stacks) and pages of files (the binary's own, some 22 MiB) — and
# jemalloc's figures, and the ratios.
#
#   cargo build --release -p turnout -p turnout-loadtest
#   loadtest/memory-after.sh                      # about 5 minutes
#   BIN=/tmp/turnout-a loadtest/memory-after.sh   # another build
#
# SERVER_ENV adds settings for the server (e.g. MALLOC_CONF=tcache:false).
# With gdb (and leave to attach to the server): STATS=1 has jemalloc print
# its figures at the end of the idle time (malloc_stats_print, into the
# server's log, kept as DATA/loaded.log) and sums them per size class —
# which sizes of objects hold partly empty pages; FLUSH=1 first has every
# thread of the server hand its cache back (thread.idle), to see what the
# threads' caches held. SMAPS=1 keeps /proc/<server>/smaps at each point
# (DATA/smaps-*), mapping by mapping.
source "$(dirname "$0")/lib.sh"
KEY=memory-bench-key-memory-bench-key-01
PORT=18161
data=$(mktemp -d)
memory() {
  local metrics
  metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics") ||
    { echo "the server on port $PORT does not answer; its log is in $data" >&2; return 1; }
  awk '
    /^turnout_process_resident_bytes / {rss = $2}
    /^turnout_process_resident_anonymous_bytes / {anon = $2}
    /^turnout_heap_allocated_bytes / {alloc = $2}
    /^turnout_heap_active_bytes / {active = $2}
    /^turnout_heap_resident_bytes / {res = $2}
    /^turnout_heap_metadata_bytes / {meta = $2}
    END {printf "%.1f %.1f %.1f %.1f %.1f %.1f %.1f", rss / 1048576, anon / 1048576, (rss - anon) / 1048576,
      alloc / 1e6, active / 1e6, res / 1e6, meta / 1e6}' <<<"$metrics"
}
show() { # LABEL "RSS ANONYMOUS FILES ALLOCATED ACTIVE RESIDENT METADATA"
  read -r rss anon file alloc active res meta <<<"$2"
  if [ -n "${SMAPS:-}" ]; then cp "/proc/$pid/smaps" "$data/smaps-${1// /-}"; fi
  printf '%-28s RSS %6.1f MiB (anonymous %5.1f, files %5.1f)   heap: allocated %5.1f MB, active %5.1f, resident %5.1f, of it metadata %4.1f\n' \
    "$1" "$rss" "$anon" "$file" "$alloc" "$active" "$res" "$meta"
}
idle=(TURNOUT_ACTORS__IDLE_TIMEOUT_SECS=30 TURNOUT_REALTIME__HUB_IDLE_SECS=30 ${SERVER_ENV:-})
start_turnout "$data" "${idle[@]}"
await_ready
sleep 5
start=$(memory)
show "at start" "$start"
target/release/turnout-loadtest mixed --target "http://127.0.0.1:$PORT" --jwt-key "$KEY" \
  --events 200 --capacity 100 --duration "${LOAD:-120}" --join-rate 400 --read-rate 1500 \
  --subscribers 2000 --server-pid "$pid" --json "$data/r.json" >"$data/tool.log" 2>&1 || true
report_line "$data/r.json" "the mix"
end=$(memory)
show "end of the load" "$end"
sleep "${IDLE:-150}"
after=$(memory)
show "${IDLE:-150} s after" "$after"
curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^turnout_(live_actors|ws_hubs|recs_catalog|db_connections)' || true
echo "threads: $(cat /proc/"$pid"/task/*/comm | sort | uniq -c | xargs)"
if [ -n "${FLUSH:-}" ]; then
  gdb -p "$pid" -batch -ex 'thread apply all call (int) mallctl("thread.idle", 0, 0, 0, 0)' >/dev/null 2>&1 ||
    echo "gdb could not attach to the server" >&2
  sleep 15
  flushed=$(memory)
  show "every thread's cache flushed" "$flushed"
fi
if [ -n "${STATS:-}" ]; then
  gdb -p "$pid" -batch -ex 'call (void) malloc_stats_print(0, 0, "Jadxleh")' >/dev/null 2>&1 ||
    echo "gdb could not attach to the server" >&2
  loadtest/jemalloc-bins.py "$data/log" || true
fi
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
mv "$data/log" "$data/loaded.log"
start_turnout "$data" "${idle[@]}"
await_ready 60
sleep 20
fresh=$(memory)
show "fresh server, same data" "$fresh"
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
ratios() { # LABEL START AFTER FRESH
  awk -v l="$1" -v s="$2" -v a="$3" -v f="$4" \
    'BEGIN {if (s > 0 && f > 0) printf "%-10s after / start %.2f   after / fresh %.2f   fresh / start %.2f\n", l, a / s, a / f, f / s}'
}
read -r s_rss s_anon _ <<<"$start"
read -r a_rss a_anon _ <<<"$after"
read -r f_rss f_anon _ <<<"$fresh"
ratios RSS "$s_rss" "$a_rss" "$f_rss"
ratios anonymous "$s_anon" "$a_anon" "$f_anon"
echo "data and logs: $data"
