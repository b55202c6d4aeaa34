#!/usr/bin/env python3
"""Median bandwidth of kvtier vs a baseline tool, per (block size, depth, op), and their ratio.

Reads lines "<bytes> <depth> <op> <tool> <bytes/s>" (several repetitions per point), as written
by bench/disk_vs_fio.sh (baseline fio) and bench/remote_vs_redis_benchmark.sh (baseline redis).
With --ceiling NAME, lines "<bytes> 0 ceiling NAME <bytes/s>" give a per-size ceiling (the disk
tier's checksum on one core), printed as a last column.
"""
import argparse
import statistics

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("raw")
parser.add_argument("--baseline", required=True, help="the baseline tool's name in the lines")
parser.add_argument("--depth-name", default="depth", help="the depth column's header")
parser.add_argument("--ceiling", help="the tool whose 'ceiling' lines give a column per size")
parser.add_argument("--also", help="a second baseline tool: its median and kvtier's ratio to it")
args = parser.parse_args()

rows, ceiling = {}, {}
with open(args.raw) as f:
    for line in f:
        size, depth, op, tool, bw = line.split()
        if op == "ceiling":
            ceiling.setdefault(int(size), []).append(float(bw))
            continue
        rows.setdefault((int(size), int(depth), op), {}).setdefault(tool, []).append(float(bw))
base = f"{args.baseline} GB/s"
also = f"{args.also} GB/s" if args.also else ""
print(f"{'block':>8} {args.depth_name:>5} {'op':>5} {base:>20} {'kvtier GB/s':>11} "
      f"{'kvtier/' + args.baseline:>14}" +
      (f" {also:>14} {'kvtier/' + args.also:>15}" if args.also else "") +
      (f" {args.ceiling + ' GB/s':>16}" if args.ceiling else ""))
for (size, depth, op), t in sorted(rows.items()):
    b, k = statistics.median(t.get(args.baseline, [0])), statistics.median(t.get("kvtier", [0]))
    a = statistics.median(t.get(args.also, [0])) if args.also else 0
    print(f"{size >> 10:>6}Ki {depth:>5} {op.lower():>5} {b / 1e9:>20.2f} {k / 1e9:>11.2f} "
          f"{k / b if b else 0:>14.2f}" +
          (f" {a / 1e9:>14.2f} {k / a if a else 0:>15.2f}" if args.also else "") +
          (f" {statistics.median(ceiling.get(size, [0])) / 1e9:>16.2f}" if args.ceiling else ""))
