#!/usr/bin/env python3
"""How much of the Belady gap can per-class hit densities close? (docs/policies.md §8, N4)

A study tool, not a policy: it replays a Mooncake trace flat (one lookup per block access, insert
on a miss) under LHD-style eviction (Beckmann et al., NSDI'18): sample `--samples` resident blocks,
evict the one with the lowest hit density for its class at its age. A block's class comes from
what an engine knows when the block is accessed (`--features`):

  basic:  the conversation turn of its request (1..5+), whether it is the request's last block,
          the log10 bucket of its previous reuse gap (or none), whether it is the root block.
  rich:   basic with turns 1..9+ and the request's length in 16-block buckets (0..4+).
  engine: basic with what an engine knows once a request is served: how many of its blocks were
          new (log2 buckets 0, 1, 2-3, 4-7, 8+) and its output length (tokens, buckets <4, <16,
          <64, <256, 256+).

Hit densities come from the per-class distribution of the reuse distance (accesses until the
block's next access, or never), either
  oracle: measured over the whole trace first: the densities a learner could at best converge
          to (an optimistic estimate for any online policy ranking blocks by these features), or
  online: learnt while replaying from a history of every access, window 8 x capacity (longer
          gaps count as never), recomputed every 1,024 accesses.
  first-half: as oracle, measured over the first half of the trace only (reuses within it): do
          the densities of one half hold in the other?
Each run also reports its hit ratio over the second half of the accesses alone, where
first-half densities are out of sample.

It prints Belady's hit ratio, the best of libCacheSim's 17 policies from issue #15 and the
fraction of the gap between them each run closes. Pure Python; about 10 s per capacity and mode.
Usage: belady_gap_study.py --trace ../shared/data/conversation_trace.jsonl [--capacity 1828,3656]
       [--features basic|rich|engine] [--train oracle|online|first-half|both|all]
       [--samples 32]
"""
import argparse
import collections
import heapq
import json
import math
import random

# Best of libCacheSim's 17 policies at 1 / 2 / 5 / 10 / 20 / 40 % of the conversation trace's
# unique blocks (issue #15).
BEST_OF_17 = {1828: 0.0755, 3656: 0.1129, 9140: 0.2101, 18279: 0.2882, 36558: 0.3446,
              73116: 0.3604}
AGE_BUCKETS = 20  # log2 buckets of age and distance; bucket AGE_BUCKETS: never reused


def bucket(a):
    return min(AGE_BUCKETS - 1, a.bit_length())


def load(path, features):
    """Block ids in access order and each access's class."""
    rows = [json.loads(line) for line in open(path)]
    reqs = [row["hash_ids"] for row in rows]
    owner = {}  # block -> the request that first accessed it
    turn = []
    for r, ids in enumerate(reqs):
        deepest = max((i for i, b in enumerate(ids) if b in owner), default=-1)
        t = 1
        if deepest > 0:  # a continuation shares all of its parent but the parent's last block
            p = owner[ids[deepest]]
            if deepest >= len(reqs[p]) - 2:
                t = turn[p] + 1
        turn.append(t)
        for b in ids:
            owner.setdefault(b, r)
    blocks, classes, last = [], [], {}
    for r, ids in enumerate(reqs):
        new = min(4, sum(b not in last for b in ids).bit_length())
        out = min(4, rows[r].get("output_length", 0).bit_length() // 2)
        for i, b in enumerate(ids):
            gap = len(blocks) - last[b] if b in last else None
            last[b] = len(blocks)
            gap_class = 0 if gap is None else 1 + min(5, int(math.log10(gap)))
            tip = i == len(ids) - 1
            if features == "basic":
                c = (min(turn[r], 5), tip, gap_class, i == 0)
            elif features == "rich":
                c = (min(turn[r], 9), tip, gap_class, i == 0, min(len(ids) // 16, 4))
            else:
                c = (min(turn[r], 5), tip, gap_class, i == 0, new, out)
            blocks.append(b)
            classes.append(c)
    return blocks, classes


def densities(hist):
    """Hit density by age bucket for one class: the best over horizons of hits per block-time
    spent, among blocks that reached that age (distances within a bucket taken at its middle)."""
    row = []
    for a in range(AGE_BUCKETS):
        best, hits, spent = 0.0, 0.0, 0.0
        for e in range(a, AGE_BUCKETS):
            hits += hist[e]
            spent += hist[e] * (1.5 * 2**e - 2**a if e > a else 0.5 * 2**a + 1)
            alive = sum(hist[e + 1:])
            total = spent + alive * (2 ** (e + 1) - 2**a)
            if total > 0:
                best = max(best, hits / total)
        row.append(best)
    return row


def belady(blocks, capacity, second_half=False):
    nxt, seen = [0] * len(blocks), {}
    for i in range(len(blocks) - 1, -1, -1):
        nxt[i] = seen.get(blocks[i], math.inf)
        seen[blocks[i]] = i
    resident, heap, due, hits = set(), [], {}, [0, 0]
    half = len(blocks) // 2
    for i, b in enumerate(blocks):
        if b in resident:
            hits[i >= half] += 1
        else:
            if len(resident) >= capacity:
                while True:
                    neg, v = heapq.heappop(heap)
                    if v in resident and due[v] == -neg:
                        break
                resident.discard(v)
            resident.add(b)
        due[b] = nxt[i]
        heapq.heappush(heap, (-nxt[i], b))
    if second_half:
        return sum(hits) / len(blocks), hits[1] / (len(blocks) - half)
    return sum(hits) / len(blocks)


def measured(blocks, classes, end):
    """Each class's densities from the reuse distances of accesses [0, end), reuses after end
    counting as never."""
    hists = collections.defaultdict(lambda: [0.0] * (AGE_BUCKETS + 1))
    seen = {}
    for i in range(end - 1, -1, -1):
        d = seen.get(blocks[i])
        hists[classes[i]][AGE_BUCKETS if d is None else bucket(d - i)] += 1
        seen[blocks[i]] = i
    return {c: densities(h) for c, h in hists.items()}


def lhd(blocks, classes, capacity, train, samples, seed=1):
    rng = random.Random(seed)
    hists = collections.defaultdict(lambda: [0.0] * (AGE_BUCKETS + 1))
    table = {}
    if train in ("oracle", "first-half"):
        table = measured(blocks, classes, len(blocks) if train == "oracle" else len(blocks) // 2)
    window = 8 * capacity
    history, order = {}, collections.deque()  # block -> (time, class) of its last access
    where, resident, hits = {}, [], [0, 0]  # block -> (time, class); resident: sampling array
    half = len(blocks) // 2
    for i, b in enumerate(blocks):
        if train == "online":
            if b in history and i - history[b][0] <= window:
                hists[history[b][1]][bucket(i - history[b][0])] += 1
            history[b] = (i, classes[i])
            order.append((i, b))
            while order[0][0] < i - window:
                t, old = order.popleft()
                if history.get(old, (None,))[0] == t:
                    hists[history.pop(old)[1]][AGE_BUCKETS] += 1
            if i % 1024 == 0:
                table = {c: densities(h) for c, h in hists.items()}
        if b in where:
            hits[i >= half] += 1
        elif len(resident) >= capacity:
            worst, at = math.inf, 0
            for _ in range(samples):
                j = rng.randrange(len(resident))
                t, c = where[resident[j]]
                row = table.get(c)
                v = row[bucket(i - t)] if row else 1.0 / (1 + i - t)  # unknown class: LRU
                if v < worst:
                    worst, at = v, j
            del where[resident[at]]
            resident[at] = resident[-1]
            resident.pop()
        if b not in where:
            resident.append(b)
        where[b] = (i, classes[i])
    return sum(hits) / len(blocks), hits[1] / (len(blocks) - half)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--capacity", default="1828,3656", help="comma-separated block counts")
    ap.add_argument("--features", choices=["basic", "rich", "engine"], default="basic")
    ap.add_argument("--train", choices=["oracle", "online", "first-half", "both", "all"],
                    default="both")
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    blocks, classes = load(args.trace, args.features)
    modes = {"both": ["oracle", "online"], "all": ["oracle", "first-half", "online"]}.get(
        args.train, [args.train])
    print("capacity  belady (2nd half)  best-of-17  " +
          "  ".join(f"{m:>10} gap    (2nd half)" for m in modes))
    for cap in map(int, args.capacity.split(",")):
        (opt, opt2), base = belady(blocks, cap, second_half=True), BEST_OF_17.get(cap)
        cells = []
        for m in modes:
            h, h2 = lhd(blocks, classes, cap, m, args.samples)
            frac = f"{100 * (h - base) / (opt - base):5.1f}%" if base is not None else "  n/a"
            cells.append(f"{h:10.4f} {frac} ({h2:.4f})")
        print(f"{cap:8d}  {opt:.4f} ({opt2:.4f})  {base if base is not None else 'n/a':>10}  " +
              "  ".join(cells))


if __name__ == "__main__":
    main()
