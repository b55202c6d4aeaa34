#!/usr/bin/env python3
"""engine_loop: a toy inference engine's KV-cache loop on kvtier's Python module.

Replays a Mooncake-format trace (JSON lines with `hash_ids`, one id per 512-token block) or, when
there is none, a synthetic multi-turn chat workload. Each request follows docs/integration.md:
hash block keys, match, allocate device slots, load (waiting layer by layer, as attention would),
verify every loaded byte, "compute" the blocks not loaded (a pattern derived from the block's key),
commit, release. Exit status 1 if any loaded byte differs from what was committed under its key.

  PYTHONPATH=build/default/python python3 examples/engine_loop.py --requests 300
"""
import argparse
import json
import sys
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:
    print("skipped: numpy is not installed (apt-get install python3-numpy)")
    sys.exit(77)
import kvtier

TOKENS_PER_BLOCK = 512  # Mooncake's block size
DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/data/conversation_trace.jsonl"


def requests(args):
    """hash_ids of each request, from the trace or a synthetic chat workload."""
    if args.trace.exists():
        with open(args.trace) as f:
            for i, line in enumerate(f):
                if i >= args.requests:
                    return
                yield json.loads(line)["hash_ids"]
        return
    rng = np.random.default_rng(7)
    histories, next_id = {}, 1000
    for _ in range(args.requests):  # 4-block system prompt, 40 users, 2 new blocks per turn
        user = int(rng.integers(40))
        history = histories.setdefault(user, [])
        if len(history) > 60:
            history.clear()
        history += [next_id, next_id + 1]
        next_id += 2
        yield [0, 1, 2, 3] + history


def pattern(key, layers, segments, seg_bytes):
    """What "prefill" writes for a block: bytes determined by its key, per layer and segment."""
    rng = np.random.default_rng([key.hi, key.lo])
    return rng.integers(0, 256, (layers, segments, seg_bytes), dtype=np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--requests", type=int, default=1 << 62)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--segment-bytes", type=int, default=256, help="bytes of K (or V) per block")
    p.add_argument("--device-blocks", type=int, default=512)
    p.add_argument("--host-blocks", type=int, default=2048)
    p.add_argument("--disk-dir", help="add a disk tier in this (existing) directory")
    p.add_argument("--disk-blocks", type=int, default=8192)
    args = p.parse_args()

    L, S, B = args.layers, 2, args.segment_bytes
    opts = kvtier.Options(tokens_per_block=TOKENS_PER_BLOCK, num_slots=args.device_blocks,
                          num_layers=L, segments_per_layer=S, bytes_per_block=B,
                          backend="emulated", host_capacity_bytes=args.host_blocks * L * S * B)
    if args.disk_dir:
        opts.disk_directory, opts.disk_allow_buffered = args.disk_dir, True
        opts.disk_capacity_bytes = args.disk_blocks * (L * S * B + (64 << 10))
        opts.disk_reset_on_mismatch = True
    cache = kvtier.Cache.create(opts)
    kv = [[cache.kv(l, s) for s in range(S)] for l in range(L)]  # the "engine's" KV tensors
    hasher = kvtier.Hasher(model_id="toy-engine")
    tiers = {t: 0 for t in (kvtier.Tier.DEVICE, kvtier.Tier.HOST, kvtier.Tier.DISK)}
    n_requests = n_blocks = loaded_blocks = mismatched = 0
    load_seconds, loading_requests = 0.0, 0

    for hash_ids in requests(args):
        ids = np.asarray(hash_ids, dtype=np.int64) & 0x7FFFFFFF
        keys = hasher.chain_tokens(np.repeat(ids, TOKENS_PER_BLOCK).astype(np.int32),
                                   TOKENS_PER_BLOCK)
        if len(keys) > args.device_blocks:
            keys = keys[:args.device_blocks]  # the engine could not hold more anyway
        expected = np.stack([pattern(k, L, S, B) for k in keys])  # [block, layer, segment, byte]
        match = cache.match(keys)
        for t in tiers:
            tiers[t] += match.blocks_in(t)
        lease = cache.allocate_device(len(keys))
        t0 = time.perf_counter()
        xfer = cache.load(match, lease)
        latency = time.perf_counter() - t0  # load latency: the call plus the layer waits
        slots = np.asarray(lease.slots)  # final once load() returned
        loaded = xfer.blocks
        for l in range(L):  # attention on layer l may start once its bytes arrived
            t0 = time.perf_counter()
            xfer.wait_layer(l)
            latency += time.perf_counter() - t0
            for s in range(S):
                got = kv[l][s][slots[:loaded]]
                mismatched += int(np.count_nonzero(got != expected[:loaded, l, s]))
        xfer.wait()
        if loaded:
            load_seconds += latency
            loading_requests += 1
        for l in range(L):  # prefill the rest
            for s in range(S):
                kv[l][s][slots[loaded:]] = expected[loaded:, l, s]
        cache.commit(keys, lease)
        cache.release(lease)
        n_requests += 1
        n_blocks += len(keys)
        loaded_blocks += loaded

    cache.check_invariants()
    st = cache.stats()
    source = args.trace if args.trace.exists() else "synthetic chats"
    print(f"kvtier engine_loop: {n_requests} requests from {source}, {L} layers, "
          f"{L * S * B} B blocks, device {args.device_blocks} / host {args.host_blocks} blocks"
          + (f" / disk in {args.disk_dir}" if args.disk_dir else ""))
    rows = [
        ("prefix hit ratio", f"{st['hit_ratio']:.3f}"),
        ("blocks requested", n_blocks),
        ("tokens not recomputed", loaded_blocks * TOKENS_PER_BLOCK),
        ("hits on device", tiers[kvtier.Tier.DEVICE]),
        ("hits on host", tiers[kvtier.Tier.HOST]),
        ("hits on disk", tiers[kvtier.Tier.DISK]),
        ("bytes host->device", st["bytes_h2d"]),
        ("bytes device->host", st["bytes_d2h"]),
        ("bytes disk read / written", f"{st['bytes_disk_read']} / {st['bytes_disk_written']}"),
        ("avg load latency (us)", f"{1e6 * load_seconds / max(loading_requests, 1):.1f}"),
        ("mismatched bytes", mismatched),
    ]
    for name, value in rows:
        print(f"  {name:<32} {value:>14}")
    cache.close()
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
