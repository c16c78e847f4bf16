#!/usr/bin/env python3
"""jemalloc's statistics (malloc_stats_print with the options "Jadxleh")
from a server's log: per size class, the bytes
live objects take against the slabs' bytes, worst first — which sizes of
objects hold partly empty pages."""
import json
import sys

text = open(sys.argv[1]).read()
start = text.rfind('{"jemalloc"')
if start < 0:
    sys.exit(f"no jemalloc statistics in {sys.argv[1]}")
stats, _ = json.JSONDecoder().raw_decode(text[start:])
sizes = [b["size"] for b in stats["jemalloc"]["arenas"]["bin"]]
slab_bytes = [b["slab_size"] for b in stats["jemalloc"]["arenas"]["bin"]]
merged = stats["jemalloc"]["stats.arenas"]["merged"]["bins"]
rows = []
for size, slab, b in zip(sizes, slab_bytes, merged):
    live = b["curregs"] * size
    held = b["curslabs"] * slab
    rows.append((held - live, size, live, held, b["curslabs"]))
rows.sort(reverse=True)
g = stats["jemalloc"]["stats"]
cached = stats["jemalloc"]["stats.arenas"]["merged"]["tcache_bytes"]
print(f'allocated {g["allocated"] / 1e6:.1f} MB (threads\' caches included: {cached / 1e6:.1f} MB), '
      f'active {g["active"] / 1e6:.1f} MB, metadata {g["metadata"] / 1e6:.1f} MB, '
      f'resident {g["resident"] / 1e6:.1f} MB')
print(f'{"size":>6} {"live MB":>8} {"slabs MB":>9} {"empty MB":>9} {"slabs":>6}')
for empty, size, live, held, n in rows[:12]:
    print(f'{size:6} {live / 1e6:8.2f} {held / 1e6:9.2f} {empty / 1e6:9.2f} {n:6}')
print(f'all small sizes: {sum(r[0] for r in rows) / 1e6:.2f} MB of slabs empty')
