#!/usr/bin/env python3
"""Summarizes a dhat-heap.json (examples/heap_profile.rs): the heap still held when the profiler
stopped, by the innermost frame of keypooler's own code (or imbl's, redb's) that allocated it.

    python3 scripts/dhat_sites.py dhat-heap.json [KEYS]
"""
import json
import re
import sys
from collections import defaultdict

OURS = re.compile(r"(keypooler::[\w:<>]+|imbl::[\w:]+|redb::[\w:]+|bytes::[\w:]+)")


def site(frames, table):
    names = [table[f] for f in frames]
    ours = [n for n in names if "keypooler::" in n]
    # The allocating frame closest to the allocator, then keypooler's frame that asked for it.
    inner = next((OURS.search(n).group(1) for n in names if OURS.search(n)), "?")
    outer = OURS.search(ours[0]).group(1) if ours else "?"
    return inner if inner == outer else f"{outer} -> {inner}"


def main():
    data = json.load(open(sys.argv[1]))
    keys = int(sys.argv[2]) if len(sys.argv) > 2 else None
    table = data["ftbl"]
    sites = defaultdict(lambda: [0, 0])
    for pp in data["pps"]:
        held = sites[site(pp["fs"], table)]
        held[0] += pp["eb"]
        held[1] += pp["ebk"]
    total = sum(b for b, _ in sites.values())
    print(f"{'bytes':>12} {'blocks':>9} {'B/key':>7}  site")
    for name, (b, blocks) in sorted(sites.items(), key=lambda s: -s[1][0]):
        if b == 0:
            continue
        per_key = f"{b / keys:7.1f}" if keys else ""
        print(f"{b:>12} {blocks:>9} {per_key}  {name}")
    print(f"{total:>12} total" + (f", {total / keys:.1f} B/key" if keys else ""))


main()
