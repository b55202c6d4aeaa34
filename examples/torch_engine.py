#!/usr/bin/env python3
"""torch_engine: a small decoder-only model whose engine owns its paged KV pool, with kvtier as
its KV connector, checked against a full recompute on every request.

The engine is its own (as vLLM's is): a paged KV pool per layer, a block allocator, a device
prefix cache keyed by kvtier block keys with LRU reuse of free cached blocks. kvtier is reached
only through `KvtierConnector`, whose methods follow the names and call order of vLLM's
KVConnectorBase_V1 (scheduler side: get_num_new_matched_tokens, update_state_after_alloc,
build_connector_meta, request_finished; worker side: start_load_kv, wait_for_layer_load,
save_kv_layer, wait_for_save, get_finished). The model: random weights (fixed seed), GQA, RoPE,
RMSNorm, SiLU MLP, fp32 on the CPU.

It replays the shared Mooncake trace (each hash id mapped to a fixed block of token ids) on one
or two engine instances. Instance A runs host and disk tiers and restarts half-way (a warm
restart from its disk directory, with an empty engine prefix cache). With a Redis Cluster (found
on PATH, started here), instance B serves every other request and shares blocks through the
remote tier. For every request the logits of the tokens it computed must equal a full recompute
without any cache (max |diff| <= 1e-4); it prints the tokens not recomputed, per tier.

With --codec (int8, int4, fp8_e4m3: Options.host.codec, docs/compression.md) the blocks below the
engine's pool are stored quantised, so reused KV is no longer exact: the run then measures what the
codec costs instead of asserting equality. Against the full recompute (the uncompressed run) it
prints the error of the reused K and V (every position the request did not compute), of each
layer's attention output and of the last token's logits, and how often the last token's top-1
token is the same. --kv-dtype stores the engine's pool (and so kvtier's blocks) in float16 or
bfloat16, as engines do; the reference then rounds its KV the same way.

  PYTHONPATH=build/default/python /usr/bin/python3 examples/torch_engine.py --requests 300
  PYTHONPATH=build/default/python /usr/bin/python3 examples/torch_engine.py --requests 300 \
      --tokens-per-block 16 --kv-dtype float16 --codec int8
Exit status: 0 when every request matched (with --codec: when the run completed), 1 otherwise, 77
when torch or numpy is missing.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"skipped: {e.name} is not installed (apt-get install python3-torch python3-numpy)")
    sys.exit(77)
import kvtier

HERE = Path(__file__).resolve().parent
DEFAULT_TRACE = HERE.parents[1] / "shared/data/conversation_trace.jsonl"


# ---- the model ----

class Model:
    """Decoder-only transformer: GQA attention with RoPE, RMSNorm, SiLU MLP; fp32."""

    def __init__(self, seed=0, vocab=512, dim=64, layers=2, q_heads=4, kv_heads=2, head_dim=16,
                 ffn=128):
        g = torch.Generator().manual_seed(seed)

        def w(rows, cols):
            return torch.randn(rows, cols, generator=g) / math.sqrt(rows)

        self.vocab, self.layers = vocab, layers
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, head_dim
        self.embed = torch.randn(vocab, dim, generator=g)
        self.blocks = [dict(wq=w(dim, q_heads * head_dim), wk=w(dim, kv_heads * head_dim),
                            wv=w(dim, kv_heads * head_dim), wo=w(q_heads * head_dim, dim),
                            w1=w(dim, ffn), w2=w(ffn, dim)) for _ in range(layers)]
        self.out = w(dim, vocab)
        self.inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))

    @staticmethod
    def norm(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def rope(self, x, pos):
        angles = pos.float()[:, None] * self.inv_freq[None, :]  # [T, head_dim / 2]
        cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    def forward(self, tokens, start, kv, wait_layer=lambda l: None, after_layer=lambda l: None,
                attention=None):
        """Logits of `tokens` at positions [start, start + len). `kv` holds every position before
        (kv.read) and takes the new ones (kv.write), layer by layer. `attention`: a list that
        receives each layer's attention output ([len, q_heads * head_dim])."""
        n = len(tokens)
        pos = torch.arange(start, start + n)
        x = self.embed[tokens]
        groups = self.q_heads // self.kv_heads
        for l, b in enumerate(self.blocks):
            h = self.norm(x)
            q = self.rope((h @ b["wq"]).view(n, self.q_heads, self.head_dim), pos)
            k = self.rope((h @ b["wk"]).view(n, self.kv_heads, self.head_dim), pos)
            v = (h @ b["wv"]).view(n, self.kv_heads, self.head_dim)
            wait_layer(l)  # the blocks loaded into the pool for this layer have arrived
            kv.write(l, start, k, v)
            after_layer(l)  # this layer's new KV is complete in the pool
            keys, values = kv.read(l, start + n)  # [start + n, kv_heads, head_dim]
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
            scores = torch.einsum("thd,shd->hts", q, keys) / math.sqrt(self.head_dim)
            causal = torch.arange(start + n)[None, :] > pos[:, None]
            scores = scores.masked_fill(causal[None], float("-inf"))
            attn = torch.einsum("hts,shd->thd", scores.softmax(-1), values).reshape(n, -1)
            if attention is not None:
                attention.append(attn)
            x = x + attn @ b["wo"]
            x = x + torch.nn.functional.silu(self.norm(x) @ b["w1"]) @ b["w2"]
        return self.norm(x) @ self.out


class ContiguousKv:
    """The reference: every position's KV in plain tensors (no paging, no cache), rounded to the
    pool's dtype as the pool rounds it."""

    def __init__(self, layers, dtype=torch.float32):
        self.k, self.v, self.dtype = [None] * layers, [None] * layers, dtype

    def write(self, l, start, k, v):
        assert start == 0
        self.k[l], self.v[l] = k.to(self.dtype).float(), v.to(self.dtype).float()

    def read(self, l, end):
        return self.k[l][:end], self.v[l][:end]


# ---- the engine: its own paged KV pool, allocator and prefix cache ----

class PagedKv:
    """One request's view of the pool: position p lives in block table[p // tpb], row p % tpb."""

    def __init__(self, pool, table):
        self.pool, self.table = pool, torch.tensor(table, dtype=torch.int64)

    def _at(self, begin, end):
        pos = torch.arange(begin, end)
        return self.table[pos // self.pool.tpb], pos % self.pool.tpb

    def write(self, l, start, k, v):
        blocks, rows = self._at(start, start + len(k))
        self.pool.k[l][blocks, rows] = k.to(self.pool.dtype)
        self.pool.v[l][blocks, rows] = v.to(self.pool.dtype)

    def read(self, l, end):
        blocks, rows = self._at(0, end)
        return self.pool.k[l][blocks, rows].float(), self.pool.v[l][blocks, rows].float()


class BlockPool:
    """The engine's GPU block pool ("device": CPU tensors here) and its prefix cache: full blocks
    stay cached under their key after their request ends, reused LRU-first when blocks run out."""

    def __init__(self, model, num_blocks, tpb, dtype=torch.float32):
        shape = (num_blocks, tpb, model.kv_heads, model.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(model.layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(model.layers)]
        self.tpb, self.num_blocks, self.dtype = tpb, num_blocks, dtype
        self.reset()

    def reset(self):
        """An engine restart: the prefix cache is empty."""
        self.free = list(range(self.num_blocks - 1, -1, -1))
        self.refs = [0] * self.num_blocks
        self.cached, self.key_of, self.lru = {}, {}, OrderedDict()

    def match(self, keys):
        blocks = []
        for k in keys:
            b = self.cached.get(k)
            if b is None:
                break
            blocks.append(b)
        for b in blocks:
            self.refs[b] += 1
            self.lru.pop(b, None)
        return blocks

    def allocate(self, n):
        out = []
        for _ in range(n):
            if self.free:
                b = self.free.pop()
            else:
                b, _ = self.lru.popitem(last=False)  # evict the least recently used cached block
                del self.cached[self.key_of.pop(b)]
            self.refs[b] = 1
            out.append(b)
        return out

    def release(self, table, keys):
        """The request ended: its blocks hold valid KV for `keys` and become cached."""
        for b, k in zip(table, keys):
            if k not in self.cached and b not in self.key_of:
                self.cached[k], self.key_of[b] = b, k
            self.refs[b] -= 1
            if self.refs[b] == 0:
                if b in self.key_of:
                    self.lru[b] = None
                else:
                    self.free.append(b)


# ---- the connector: vLLM's KVConnectorBase_V1 call order, kvtier underneath ----

class KvtierConnector:
    """Scheduler side and worker side of one engine instance's KV connector."""

    def __init__(self, pool, options):
        self.pool = pool
        self.conn = kvtier.Connector(options)
        self.meta = None
        self.loading = {}   # request id -> Transfer (worker side)
        self.saving = {}    # request id -> Store (worker side)

    # -- scheduler side --
    def get_num_new_matched_tokens(self, req, num_computed_blocks):
        """Blocks past the engine's own prefix hits that kvtier can load. The last block is never
        offered: the engine recomputes it for the logits (as vLLM recomputes the last token).
        None: the remote tier's answer is not in yet, ask again next step."""
        found = self.conn.lookup(req.keys[:-1], num_computed_blocks, wait_for_store=False)
        if found.pending:
            return None, None
        return found.blocks, list(found.tiers)

    def update_state_after_alloc(self, req, new_blocks, num_external):
        req.load_blocks = new_blocks[:num_external]

    def build_connector_meta(self, req):
        self.meta = dict(req_id=req.id, keys=req.keys, first=req.first,
                         load_blocks=req.load_blocks, table=req.table)
        return self.meta

    def request_finished(self, req):
        """True: the blocks are still being saved; the engine frees them after get_finished."""
        return req.id in self.saving

    # -- worker side --
    def start_load_kv(self, meta):
        n = len(meta["load_blocks"])
        if n == 0:
            return 0
        xfer = self.conn.load(meta["keys"][:meta["first"] + n], meta["first"], meta["load_blocks"],
                              request_id=meta["req_id"])
        self.loading[meta["req_id"]] = xfer
        return xfer.blocks  # known at once: fewer when blocks were evicted since the lookup

    def wait_for_layer_load(self, req_id, layer):
        xfer = self.loading.get(req_id)
        if xfer is not None:
            xfer.wait_layer(layer)

    def start_save(self, meta, first_new):
        self.saving[meta["req_id"]] = self.conn.begin_store(
            meta["keys"], first_new, meta["table"][first_new:], request_id=meta["req_id"])

    def save_kv_layer(self, req_id, layer):
        self.saving[req_id].save_layer(layer)  # emulated device: the bytes are complete now

    def wait_for_save(self):
        for store in self.saving.values():
            store.wait()

    def get_finished(self):
        """(finished sending, finished receiving, failed loads): request ids."""
        sending, receiving, failed = set(), set(), set()
        for f in self.conn.take_finished():
            request_id, kind, ok = f.request_id, f.kind, f.ok
            if kind == "store":
                sending.add(request_id)
                self.saving.pop(request_id, None)
            else:
                receiving.add(request_id)
                self.loading.pop(request_id, None)
                if not ok:
                    failed.add(request_id)
        return sending, receiving, failed

    def close(self):
        self.loading.clear()
        self.saving.clear()
        self.conn.close()


# ---- the replay ----

class Request:
    def __init__(self, rid, tokens, keys):
        self.id, self.tokens, self.keys = rid, tokens, keys
        self.first, self.load_blocks, self.table = 0, [], []


class Instance:
    def __init__(self, name, model, args, workdir, remote_nodes):
        self.name, self.model, self.args = name, model, args
        self.pool = BlockPool(model, args.engine_blocks, args.tokens_per_block,
                              getattr(torch, args.kv_dtype))
        self.disk = workdir / f"disk-{name}"
        self.disk.mkdir(parents=True, exist_ok=True)
        self.remote_nodes = remote_nodes
        self.connector = KvtierConnector(self.pool, self.options())

    def options(self):
        a = self.args
        # The engine's own tensors are kvtier's layout: [blocks, tokens, kv_heads, head_dim] each.
        layers = [[self.pool.k[l], self.pool.v[l]] for l in range(self.model.layers)]
        block_bytes = sum(t.numel() * t.element_size() for layer in layers for t in layer)
        block_bytes //= a.engine_blocks
        slot = block_bytes + 2 * 4096  # a host slot with a disk tier: block and trailer, aligned
        o = kvtier.Options(tokens_per_block=a.tokens_per_block, num_slots=a.engine_blocks,
                           layers=layers, backend="emulated",
                           host_capacity_bytes=a.host_blocks * slot,
                           disk_directory=str(self.disk), disk_capacity_bytes=a.disk_blocks * slot,
                           disk_allow_buffered=True)
        if self.remote_nodes:
            o.remote_nodes, o.remote_scope = self.remote_nodes, f"torch-engine-{os.getpid()}"
        if a.codec != "none":  # the host tier's codec; disk and remote store its encoded blocks
            o.host_codec, o.host_codec_group_size = a.codec, a.codec_group_size
            o.shard_dtype, o.segment_roles = a.kv_dtype, ["k", "v"]  # what the codec reads
        return o

    def restart(self):
        """Process restart: the connector closes (its host blocks go down to disk) and reopens on
        the same directory; the engine's prefix cache starts empty."""
        self.connector.close()
        self.pool.reset()
        self.connector = KvtierConnector(self.pool, self.options())

    def serve(self, req, counts, accuracy):
        tpb, c = self.args.tokens_per_block, self.connector
        # Scheduler: the engine's own prefix hits, then kvtier's (asked again while pending).
        hits = self.pool.match(req.keys[:-1])
        req.first = len(hits)
        external, tiers = c.get_num_new_matched_tokens(req, req.first)
        while external is None:
            time.sleep(0.0002)
            external, tiers = c.get_num_new_matched_tokens(req, req.first)
        new = self.pool.allocate(len(req.keys) - req.first)
        req.table = hits + new
        c.update_state_after_alloc(req, new, external)
        meta = c.build_connector_meta(req)
        # Worker: load, then the forward pass from the first block not loaded, saving each layer.
        loaded = c.start_load_kv(meta)
        start = req.first + loaded
        if self.args.sabotage and loaded:
            c.loading[req.id].wait()
            for l in range(self.model.layers):
                self.pool.k[l][req.table[req.first:start]] += 1e-2
        c.start_save(meta, start)
        kv, attention = PagedKv(self.pool, req.table), []
        logits = self.model.forward(req.tokens[start * tpb:], start * tpb, kv,
                                    wait_layer=lambda l: c.wait_for_layer_load(req.id, l),
                                    after_layer=lambda l: c.save_kv_layer(req.id, l),
                                    attention=attention)
        c.wait_for_save()
        xfer = c.loading.get(req.id)
        if xfer is not None:
            try:
                xfer.wait()
            except kvtier.Error:
                pass
        sending, receiving, failed = c.get_finished()
        assert req.id in sending, "the store was not reported finished"
        if req.id in failed:  # the loaded blocks are misses: recompute them
            counts["failed loads"] += 1
            start, attention = req.first, []
            logits = self.model.forward(req.tokens[start * tpb:], start * tpb, kv,
                                        attention=attention)
            loaded = 0
        c.request_finished(req)
        self.pool.release(req.table, req.keys)
        # Check against a full recompute without any cache.
        ref_kv, ref_attention = ContiguousKv(self.model.layers, self.pool.dtype), []
        ref = self.model.forward(req.tokens, 0, ref_kv, attention=ref_attention)
        diff = float((logits - ref[start * tpb:]).abs().max())
        if start > 0:
            accuracy.add(kv, ref_kv, start * tpb, attention, ref_attention, logits, ref)
        counts["engine device"] += req.first * tpb
        for t in tiers[:loaded]:
            counts[str(t).split(".")[-1].lower()] += tpb
        counts["computed"] += (len(req.keys) - start) * tpb
        return diff


class Accuracy:
    """What reusing cached KV costs against the full recompute, over the requests that reused any
    (exactly 0 without a codec): the reused K and V (positions [0, reused)), each layer's attention
    output and the last token's logits of the tokens computed."""

    def __init__(self, layers):
        self.requests, self.top1 = 0, 0
        self.kv = {n: dict(max=0.0, abs=0.0, ref=0.0, count=0) for n in ("K", "V")}
        self.attention = [dict(max=0.0, sq=0.0, ref_sq=0.0) for _ in range(layers)]
        self.logit_max, self.logit_sum = 0.0, 0.0

    def add(self, kv, ref_kv, reused, attention, ref_attention, logits, ref_logits):
        self.requests += 1
        for l in range(len(self.attention)):
            k, v = kv.read(l, reused)
            for name, got, want in (("K", k, ref_kv.k[l][:reused]), ("V", v, ref_kv.v[l][:reused])):
                d, acc = (got - want).abs(), self.kv[name]
                acc["max"] = max(acc["max"], float(d.max()))
                acc["abs"] += float(d.sum())
                acc["ref"] += float(want.abs().sum())
                acc["count"] += d.numel()
            got, want = attention[l], ref_attention[l][reused:]
            acc = self.attention[l]
            acc["max"] = max(acc["max"], float((got - want).abs().max()))
            acc["sq"] += float((got - want).pow(2).sum())
            acc["ref_sq"] += float(want.pow(2).sum())
        d = float((logits[-1] - ref_logits[-1]).abs().max())
        self.logit_max, self.logit_sum = max(self.logit_max, d), self.logit_sum + d
        self.top1 += int(logits[-1].argmax() == ref_logits[-1].argmax())

    def top1_percent(self):
        return 100.0 * self.top1 / self.requests if self.requests else 100.0

    def report(self):
        n = max(self.requests, 1)
        print(f"  accuracy over the {self.requests} requests that reused KV, vs a full recompute:")
        for name, a in self.kv.items():
            c = max(a["count"], 1)
            print(f"    reused {name}: max |err| {a['max']:.3g}, mean |err| {a['abs'] / c:.3g} "
                  f"(mean |{name}| {a['ref'] / c:.3g})")
        for l, a in enumerate(self.attention):
            rel = math.sqrt(a["sq"] / a["ref_sq"]) if a["ref_sq"] else 0.0
            print(f"    attention output, layer {l}: max |err| {a['max']:.3g}, "
                  f"relative L2 error {rel:.3g}")
        print(f"    last-token logits: max |err| {self.logit_max:.3g}, "
              f"mean of max |err| {self.logit_sum / n:.3g}")
        print(f"    last-token top-1 agreement: {self.top1}/{self.requests} "
              f"({self.top1_percent():.2f} %)")


def start_redis(workdir):
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return None
    script = HERE / "local_redis_cluster.sh"
    out = subprocess.run(["bash", str(script), "start", str(workdir / "redis")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--requests", type=int, default=1 << 62)
    p.add_argument("--tokens-per-block", type=int, default=4)
    p.add_argument("--engine-blocks", type=int, default=320, help="the engine's own block pool")
    p.add_argument("--host-blocks", type=int, default=1024)
    p.add_argument("--disk-blocks", type=int, default=16384)
    p.add_argument("--remote", choices=["auto", "on", "off"], default="auto",
                   help="the remote tier on a local Redis Cluster (auto: when redis is installed)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--kv-dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="the engine's KV pool dtype (and so kvtier's blocks)")
    p.add_argument("--codec", choices=["none", "int8", "int4", "fp8_e4m3"], default="none",
                   help="Options.host.codec: measure its error instead of asserting equality")
    p.add_argument("--codec-group-size", type=int, default=64)
    p.add_argument("--min-top1", type=float, default=0.0,
                   help="with --codec: exit 1 when the last-token top-1 agreement (%%) is lower")
    p.add_argument("--sabotage", action="store_true",
                   help="perturb every loaded block before use: the check must then fail (exit 1)")
    args = p.parse_args()
    if not args.trace.exists():
        print(f"no trace at {args.trace}")
        return 2
    torch.set_num_threads(1)
    model = Model()
    tpb = args.tokens_per_block
    hasher = kvtier.Hasher(model_id="torch-engine")
    block_tokens = {}

    def tokens_of(hash_id):  # a fixed token block for each hash id
        t = block_tokens.get(hash_id)
        if t is None:
            g = torch.Generator().manual_seed(hash_id)
            t = block_tokens[hash_id] = torch.randint(model.vocab, (tpb,), generator=g)
        return t

    with open(args.trace) as f:
        trace = [json.loads(line)["hash_ids"] for _, line in zip(range(args.requests), f)]
    workdir = Path(tempfile.mkdtemp(prefix="torch_engine."))
    nodes = None
    try:
        if args.remote != "off":
            nodes = start_redis(workdir)
            if nodes is None and args.remote == "on":
                print("--remote on: redis-server and redis-cli are not installed")
                return 2
        instances = [Instance("A", model, args, workdir, nodes)]
        if nodes:
            instances.append(Instance("B", model, args, workdir, nodes))
        counts = {k: 0 for k in ("engine device", "host", "disk", "remote", "computed",
                                 "failed loads")}
        worst, bad, t0 = 0.0, 0, time.perf_counter()
        accuracy = Accuracy(model.layers)
        for i, hash_ids in enumerate(trace):
            if i == len(trace) // 2:
                instances[0].restart()
            inst = instances[i % len(instances)]
            tokens = torch.cat([tokens_of(h) for h in hash_ids])
            keys = hasher.chain_tokens(tokens.numpy().astype(np.int32), tpb)
            diff = inst.serve(Request(i + 1, tokens, keys), counts, accuracy)
            worst = max(worst, diff)
            if args.codec == "none" and not diff <= args.tolerance:
                bad += 1
                print(f"request {i}: max |logits - recompute| = {diff:.3g}")
        elapsed = time.perf_counter() - t0
        for inst in instances:
            inst.connector.conn.check_invariants()
        total = sum(v for k, v in counts.items() if k != "failed loads")
        print(f"torch_engine: {len(trace)} requests from {args.trace.name} on "
              f"{len(instances)} instance(s) (A restarted at request {len(trace) // 2}), "
              f"{tpb} tokens per block, {elapsed:.1f} s")
        print(f"  {'tokens':<34} {total:>12}")
        for k in ("engine device", "host", "disk", "remote"):
            print(f"  {'not recomputed: ' + k:<34} {counts[k]:>12}")
        print(f"  {'computed':<34} {counts['computed']:>12}")
        print(f"  {'failed loads (recomputed)':<34} {counts['failed loads']:>12}")
        print(f"  {'max |logits - full recompute|':<34} {worst:>12.3g}")
        print(f"  {'requests over tolerance':<34} {bad:>12}")
        if args.codec != "none":
            print(f"  codec {args.codec} (group {args.codec_group_size}), pool {args.kv_dtype}")
        accuracy.report()
        for inst in instances:
            inst.connector.close()
        if args.codec != "none" and accuracy.top1_percent() < args.min_top1:
            print(f"top-1 agreement {accuracy.top1_percent():.2f} % < --min-top1 {args.min_top1}")
            return 1
        return 1 if bad else 0
    finally:
        if nodes:
            subprocess.run(["bash", str(HERE / "local_redis_cluster.sh"), "stop",
                            str(workdir / "redis")], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
