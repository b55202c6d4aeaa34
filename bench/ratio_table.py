#!/usr/bin/env python3
"""Median bandwidth of kvtier vs a baseline tool, per (block size, depth, op), and their ratio.

Reads lines "<bytes> <depth> <op> <tool> <bytes/s>" (several repetitions per point), as written
by bench/disk_vs_fio.sh (baseline fio) and bench/remote_vs_redis_benchmark.sh (baseline redis).
"""
import argparse
import statistics

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("raw")
parser.add_argument("--baseline", required=True, help="the baseline tool's name in the lines")
parser.add_argument("--depth-name", default="depth", help="the depth column's header")
args = parser.parse_args()

rows = {}
with open(args.raw) as f:
    for line in f:
        size, depth, op, tool, bw = line.split()
        rows.setdefault((int(size), int(depth), op), {}).setdefault(tool, []).append(float(bw))
base = f"{args.baseline} GB/s"
print(f"{'block':>8} {args.depth_name:>5} {'op':>5} {base:>20} {'kvtier GB/s':>11} "
      f"{'kvtier/' + args.baseline:>14}")
for (size, depth, op), t in sorted(rows.items()):
    b, k = statistics.median(t.get(args.baseline, [0])), statistics.median(t.get("kvtier", [0]))
    print(f"{size >> 10:>6}Ki {depth:>5} {op.lower():>5} {b / 1e9:>20.2f} {k / 1e9:>11.2f} "
          f"{k / b if b else 0:>14.2f}")
