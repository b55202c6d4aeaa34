"""The kvtier Python module on the emulated device: lifecycle with byte checks, bad input, GIL.

Run by ctest (python_tests) with PYTHONPATH at the built module; or by hand:
  PYTHONPATH=build/default/python python3 -m pytest test/python
"""
import threading
import time

import numpy as np
import pytest

import kvtier
from conftest import check_stats_dict

LAYERS, SEGS, TPB, SLOTS, SEG_BYTES = 4, 2, 16, 16, 512


def pattern(key, layer, seg, nbytes=SEG_BYTES):
    """What "prefill" writes into a block's segment: bytes derived from its key."""
    seed = (key.hi ^ key.lo ^ (layer * 2 + seg + 1) * 0x9E3779B97F4A7C15) & (2**64 - 1)
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def make_cache(**overrides):
    args = dict(tokens_per_block=TPB, num_slots=SLOTS, num_layers=LAYERS, segments_per_layer=SEGS,
                bytes_per_block=SEG_BYTES, backend="emulated",
                host_capacity_bytes=SLOTS * LAYERS * SEGS * SEG_BYTES)
    args.update(overrides)
    return kvtier.Cache.create(kvtier.Options(**args))


def prompt_keys(seed, blocks=4, salt="py-test"):
    tokens = [seed * 100000 + i for i in range(blocks * TPB)]
    return kvtier.Hasher(model_id=salt).chain_tokens(tokens, TPB)


def request(cache, keys):
    """One engine step with byte verification; returns the match's per-tier counts."""
    match = cache.match(keys)
    counts = {t: match.blocks_in(t) for t in (kvtier.Tier.DEVICE, kvtier.Tier.HOST,
                                               kvtier.Tier.DISK)}
    assert sum(counts.values()) == len(match)
    lease = cache.allocate_device(len(keys))
    xfer = cache.load(match, lease)
    assert xfer.blocks == len(match)
    for layer in range(cache.num_layers):
        xfer.wait_layer(layer)
        assert xfer.layer_ready_event(layer) == 0  # no CUDA event on the emulated device
        for b in range(xfer.blocks):
            for s in range(SEGS):
                np.testing.assert_array_equal(lease.block(b, layer, s), pattern(keys[b], layer, s))
    xfer.wait()
    assert xfer.done and xfer.poll() and xfer.error is None
    for b in range(xfer.blocks, len(keys)):
        for layer in range(LAYERS):
            for s in range(SEGS):
                if s == 0:
                    lease.block(b, layer, s)[:] = pattern(keys[b], layer, s)  # through the view
                else:
                    lease.write_block(b, layer, s, pattern(keys[b], layer, s))
    cache.commit(keys, lease)
    cache.release(lease)
    cache.check_invariants()
    return counts


def test_hasher_matches_chain():
    h = kvtier.Hasher(model_id="m", tenant="t")
    tokens = list(range(3 * TPB))
    keys = h.chain_tokens(tokens, TPB)
    assert len(keys) == 3
    assert h.chain(None, tokens[:TPB]) == keys[0]
    assert h.chain(keys[0], tokens[TPB:2 * TPB]) == keys[1]
    assert h.chain_tokens(np.arange(3 * TPB, dtype=np.int32), TPB) == keys
    assert kvtier.Hasher(model_id="other").chain_tokens(tokens, TPB)[0] != keys[0]
    assert len({keys[0], keys[0], keys[1]}) == 2  # hashable
    assert len(keys[0].hex()) == 32


def test_lifecycle_device_host_hits_and_stats():
    with make_cache() as cache:
        keys = prompt_keys(1)
        assert request(cache, keys)[kvtier.Tier.DEVICE] == 0
        assert request(cache, keys)[kvtier.Tier.DEVICE] == 4
        hog = cache.allocate_device(SLOTS)  # evicts the 4 blocks down to the host
        cache.release(hog)
        assert request(cache, keys)[kvtier.Tier.HOST] == 4  # promoted, bytes verified
        cache.hint(keys[:2], [1.0, 2.0])
        st = cache.stats()
        assert st["match_calls"] == 3
        assert st["blocks_queried"] == 12 and st["blocks_missed"] == 4
        assert st["device"]["hits"] == 4 and st["host"]["hits"] == 4
        assert st["promotions"] == 4 and st["bytes_h2d"] == 4 * cache.block_bytes
        assert st["leases_live"] == 0
        assert st["hit_ratio"] == pytest.approx(8 / 12)
        assert st["host"]["promotions"] == 0 and st["device"]["promotions"] == 4
        assert st["load_latency"]["count"] == 3
    assert cache.closed


def test_stats_have_every_field(stats_fields):
    """stats() has every counter, gauge and histogram of kvtier/stats.h (read from the header)."""
    with make_cache() as cache:
        request(cache, prompt_keys(11))
        check_stats_dict(cache.stats(), stats_fields)


def test_kv_events():
    keys = prompt_keys(7)
    with make_cache() as cache:  # off by default
        request(cache, keys)
        assert cache.take_events() == []
        assert cache.stats()["events_dropped"] == 0
    with make_cache(events_capacity=3) as cache:
        request(cache, keys)  # four blocks stored on the device, room for three events
        first = cache.take_events(max_events=1)
        events = first + cache.take_events()
        assert [e.seq for e in events] == [0, 1, 2]
        assert all(e.type == "stored" and e.tier == kvtier.Tier.DEVICE for e in events)
        assert [e.key for e in events] == keys[:3]
        assert events[0].parent == kvtier.BlockKey() and events[1].parent == keys[0]
        assert events[0].tokens_per_block == TPB
        assert "stored" in repr(events[0])
        assert cache.stats()["events_dropped"] == 1
        assert cache.take_events() == []
        with pytest.raises(TypeError):
            cache.take_events(max_events=-1)
    with pytest.raises(ValueError):
        make_cache(events_capacity=(1 << 24) + 1)


def test_management_calls():
    keys = prompt_keys(8)
    with make_cache(events_capacity=64) as cache:
        request(cache, keys)  # on the device
        assert cache.pin(keys, 60) == {"done": 4, "not_found": 0, "busy": 0,
                                       "kept_for_children": 0}
        for bad in (0, -1, 86401, float("inf"), float("nan")):
            with pytest.raises(ValueError):
                cache.pin(keys, bad)
        assert cache.unpin(keys)["done"] == 4
        assert cache.unpin(keys)["not_found"] == 4
        cache.hint(keys, [90.0] * 4, duration=1.5)
        with pytest.raises(ValueError):
            cache.hint(keys, [90.0] * 4, duration=0)
        with pytest.raises(ValueError):
            cache.hint(keys, [90.0] * 3, duration=1)
        xfer = cache.prefetch(keys)  # on the device already: nothing to read
        xfer.wait()
        assert xfer.blocks == 4 and xfer.blocks_promoted == 0
        with pytest.raises(IndexError):
            xfer.wait_layer(0)  # no layers
        with pytest.raises(ValueError):
            cache.prefetch([kvtier.BlockKey()])  # the root key
        cache.take_events()
        assert cache.clear(kvtier.Tier.DEVICE)["done"] == 4
        assert [(e.type, e.tier) for e in cache.take_events()] == [
            ("all_cleared", kvtier.Tier.DEVICE)]
        request(cache, keys)  # computed again
        with pytest.raises(ValueError):
            cache.remove([kvtier.BlockKey()])
        assert cache.remove(keys)["done"] == 4
        assert cache.remove(keys)["not_found"] == 4
        assert request(cache, keys)[kvtier.Tier.DEVICE] == 0
    with make_cache(host_capacity_bytes=0) as cache:
        with pytest.raises(kvtier.Error) as e:
            cache.prefetch(keys)
        assert e.value.code == "FAILED_PRECONDITION"


def test_grow_and_slots():
    cache = make_cache()
    lease = cache.allocate_device(2)
    cache.grow(lease, 2)
    assert len(lease) == 4 and len(set(lease.slots)) == 4
    assert lease.block_address(3, 1, 1) == cache.slot_address(lease.slots[3], 1, 1)
    kv = cache.kv(1, 1)
    assert kv.shape == (SLOTS, SEG_BYTES)
    lease.block(3, 1, 1)[:] = 7
    assert (kv[lease.slots[3]] == 7).all()  # the same memory
    cache.close()


def test_engine_owned_buffers_and_dtype():
    tensors = [[np.zeros((SLOTS, 64), dtype=np.float16) for _ in range(SEGS)]
               for _ in range(LAYERS)]
    cache = kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, layers=tensors, dtype="float16",
                                               backend="emulated", tokens_per_block=TPB))
    assert cache.block_bytes == LAYERS * SEGS * 128
    lease = cache.allocate_device(1)
    view = lease.block(0, 2, 1)
    assert view.dtype == np.float16 and view.shape == (64,)
    lease.write_block(0, 2, 1, np.full(64, 1.5, dtype=np.float16))
    assert (tensors[2][1][lease.slots[0]] == 1.5).all()
    with pytest.raises(TypeError):
        lease.write_block(0, 2, 1, np.zeros(64, dtype=np.float32))  # dtype mismatch
    with pytest.raises(TypeError):
        lease.write_block(0, 2, 1, np.zeros(128, dtype=np.uint8))  # same bytes, other dtype
    with pytest.raises(ValueError):
        lease.write_block(0, 2, 1, np.zeros(63, dtype=np.float16))  # wrong size
    with pytest.raises(ValueError):
        lease.write_block(0, 2, 1, np.zeros((64, 2), dtype=np.float16)[:, 0])  # not contiguous
    cache.release(lease)
    cache.close()


def test_raw_segments_are_addresses_only():
    """kvtier.Segment (an int address, as tensor.data_ptr() on CUDA) is never viewed as numpy."""
    k = np.zeros((SLOTS, 64), dtype=np.uint8)
    v = np.zeros((SLOTS, 64), dtype=np.uint8)  # kept alive by this test, addressed raw
    cache = kvtier.Cache.create(kvtier.Options(
        num_slots=SLOTS, backend="emulated",
        layers=[[k, kvtier.Segment(base=v.ctypes.data, bytes_per_block=64)]]))
    lease = cache.allocate_device(1)
    lease.block(0, 0, 0)[:] = 1  # the buffer: viewable
    with pytest.raises(kvtier.Error) as e:
        lease.block(0, 0, 1)
    assert e.value.code == "FAILED_PRECONDITION"
    with pytest.raises(kvtier.Error):
        lease.write_block(0, 0, 1, np.zeros(64, dtype=np.uint8))
    assert lease.block_address(0, 0, 1) == v.ctypes.data + 64 * lease.slots[0]
    cache.release(lease)
    cache.close()

    meta = kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, num_layers=2, segments_per_layer=1,
                                              bytes_per_block=64, backend="metadata_only"))
    lease = meta.allocate_device(1)
    with pytest.raises(kvtier.Error):
        lease.block(0, 0, 0)
    with pytest.raises(kvtier.Error):
        meta.kv(0, 0)
    meta.release(lease)
    meta.close()


def test_disk_warm_restart(tmp_path):
    opts = dict(disk_reset_on_mismatch=True, disk_allow_buffered=True)
    disk_bytes = 64 * (LAYERS * SEGS * SEG_BYTES + (64 << 10))
    keys = prompt_keys(2)
    args = dict(tokens_per_block=TPB, num_slots=SLOTS, num_layers=LAYERS, segments_per_layer=SEGS,
                bytes_per_block=SEG_BYTES, backend="emulated",
                host_capacity_bytes=SLOTS * LAYERS * SEGS * SEG_BYTES, **opts)
    with kvtier.Cache.open(kvtier.Options(**args), str(tmp_path), disk_bytes) as cache:
        request(cache, keys)
    with kvtier.Cache.open(kvtier.Options(**args), str(tmp_path), disk_bytes) as cache:
        assert request(cache, keys)[kvtier.Tier.DISK] == 4


def test_bad_options():
    with pytest.raises(TypeError):
        kvtier.Options(no_such_option=1)
    with pytest.raises(TypeError):
        kvtier.Options(num_slots="many")
    with pytest.raises(ValueError):
        make_cache(num_slots=0)
    with pytest.raises(ValueError):
        make_cache(backend="tpu")
    with pytest.raises(ValueError) as e:  # an unknown policy name is a bad option value
        make_cache(host_policy="no-such-policy")
    assert e.value.code == "INVALID_ARGUMENT" and "no-such-policy" in str(e.value)
    with pytest.raises(ValueError):
        make_cache(host_capacity_bytes=1)
    with pytest.raises(ValueError):
        make_cache(bytes_per_block=510, dtype="float32")  # 4 does not divide 510
    with pytest.raises(TypeError):
        make_cache(dtype="no-such-dtype")
    with pytest.raises(ValueError):  # a buffer that is not num_slots equal blocks
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, layers=[[bytearray(SLOTS * 8 + 1)]]))
    with pytest.raises(BufferError):  # read-only
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, layers=[[bytes(SLOTS * 8)]]))
    with pytest.raises(TypeError):
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, layers=[[42]]))
    with pytest.raises(KeyError):  # ENOENT: kNotFound
        kvtier.Cache.open(kvtier.Options(num_slots=SLOTS, num_layers=1, bytes_per_block=64,
                                         host_capacity_bytes=1 << 20),
                          "/nonexistent/kvtier", 1 << 20)
    with pytest.raises((kvtier.Error, ValueError)):  # no CUDA backend in this build
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, backend="cuda",
                                           layers=[[kvtier.Segment(0x1000, 64)]]))


def test_table_options_are_keywords():
    """Every option of the shared table is a keyword (path with '.' as '_'), read back as set."""
    o = kvtier.Options(remote_scope="py-test", remote_timeout_ms=250, remote_publish="write-back",
                       remote_password="", remote_ttl_seconds=60, cuda_device=-1,
                       cuda_copy_method="memcpy_async", disk_queue_depth=8,
                       host_policy_params={"a": "1"}, demote_on_evict=False)
    assert (o.remote_scope, o.remote_timeout_ms, o.remote_publish) == ("py-test", 250, "write-back")
    assert (o.remote_ttl_seconds, o.cuda_copy_method, o.disk_queue_depth) == (60, "memcpy_async", 8)
    assert o.host_policy_params == {"a": "1"} and o.demote_on_evict is False
    assert (o.remote_nodes, o.remote_connect_timeout_ms, o.backend) == ("", 500, "auto")  # defaults
    o.remote_match_budget_us = 100
    assert o.remote_match_budget_us == 100
    with pytest.raises(ValueError) as e:  # a value the table rejects names the path
        kvtier.Options(remote_publish="x")
    assert "Options.remote.publish: 'x' is not write-through, write-back or never" in str(e.value)
    with pytest.raises(ValueError) as e:
        kvtier.Options(remote_threads=-1)
    assert "Options.remote.threads" in str(e.value)
    with pytest.raises(ValueError):
        kvtier.Options(disk_files=2**32)
    with pytest.raises(TypeError):
        kvtier.Options(remote_timeout_ms="fast")
    with pytest.raises(TypeError):
        kvtier.Options(remote_nodes=7)
    with pytest.raises(TypeError):
        kvtier.Options(remote_timeout_ms=1.5)
    with pytest.raises(TypeError):
        kvtier.Options(remote_nodez="127.0.0.1:1")


def test_shard_identity_keywords():
    """The shard identity (ShardIdentity) is set through the table's keywords and validated."""
    o = kvtier.Options(shard_tp_rank=1, shard_tp_size=2, shard_pp_rank=0, shard_pp_size=1,
                       shard_dtype="bfloat16", shard_format="vllm-flash-nhd",
                       shard_replicated=True, remote_publish="never")
    assert (o.shard_tp_rank, o.shard_tp_size, o.shard_dtype) == (1, 2, "bfloat16")
    assert (o.shard_format, o.shard_replicated, o.remote_publish) == ("vllm-flash-nhd", True,
                                                                      "never")
    with pytest.raises(ValueError) as e:  # checked when the cache is built
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, num_layers=1, bytes_per_block=64,
                                           shard_tp_rank=2, shard_tp_size=2))
    assert "Options.shard.tp_rank" in str(e.value)


def test_remote_options_reach_the_cache():
    """The remote tier's options are applied at create: validated, then used (no server here)."""
    with pytest.raises(ValueError) as e:  # validated before any connection
        make_cache(remote_nodes="127.0.0.1:1", remote_threads=0)
    assert "Options.remote.threads" in str(e.value)
    with pytest.raises(ValueError) as e:
        make_cache(remote_nodes="127.0.0.1:1", remote_scope="has space")
    assert "Options.remote.scope" in str(e.value)
    start = time.monotonic()
    with pytest.raises((kvtier.Error, ValueError)) as e:  # nothing listens on port 1
        make_cache(remote_nodes="127.0.0.1:1", remote_connect_timeout_ms=100, remote_timeout_ms=100)
    assert "Options.remote.nodes" in str(e.value)
    assert time.monotonic() - start < 10


def test_bad_calls():
    cache, other = make_cache(), make_cache()
    keys = prompt_keys(3)
    with pytest.raises(ValueError):
        kvtier.Hasher().chain_tokens(list(range(TPB + 1)), TPB)
    with pytest.raises(TypeError):
        kvtier.Hasher().chain_tokens(["a"] * TPB, TPB)
    with pytest.raises(TypeError):
        kvtier.Hasher().chain_tokens([2**40] * TPB, TPB)  # not an int32
    with pytest.raises(ValueError):
        cache.allocate_device(0)
    with pytest.raises(ValueError):
        cache.allocate_device(SLOTS + 1)
    with pytest.raises(TypeError):
        cache.allocate_device(-1)
    with pytest.raises(ValueError):
        cache.hint(keys, [1.0])
    with pytest.raises(TypeError):
        cache.match([1, 2])
    lease = cache.allocate_device(4)
    with pytest.raises(IndexError):
        lease.block(4, 0, 0)
    with pytest.raises(IndexError):
        lease.block(0, LAYERS, 0)
    with pytest.raises(IndexError):
        lease.block(0, 0, SEGS)
    with pytest.raises(IndexError):
        cache.slot_address(SLOTS, 0, 0)
    with pytest.raises(ValueError):
        cache.commit(keys + keys[:1], lease)  # more keys than slots
    xfer = cache.load(cache.match(keys), lease)
    with pytest.raises(IndexError):
        xfer.wait_layer(LAYERS)
    foreign = other.allocate_device(1)
    with pytest.raises(kvtier.Error) as e:
        cache.commit(keys[:1], foreign)
    assert e.value.code == "FAILED_PRECONDITION"
    with pytest.raises(kvtier.Error):
        cache.release(foreign)
    for b in range(4):
        for layer in range(LAYERS):
            for s in range(SEGS):
                lease.write_block(b, layer, s, pattern(keys[b], layer, s))
    cache.commit(keys, lease)
    second = cache.allocate_device(1)
    shared_before = cache.stats()["blocks_commit_shared"]
    cache.commit(keys[:1], second)  # on the device from the first lease: that copy is kept
    assert cache.stats()["blocks_commit_shared"] == shared_before + 1
    del second  # dropping a lease releases it
    m = cache.match(keys)
    third = cache.allocate_device(4, match=m)  # the matched device blocks are shared at once
    assert third.shared == 4
    assert third.slots == lease.slots
    with pytest.raises(kvtier.Error):  # cached blocks are read-only
        third.write_block(0, 0, 0, pattern(keys[0], 0, 0))
    with pytest.raises(ValueError):
        cache.allocate_device(3, match=m)  # the match has more blocks than slots asked
    cache.release(third)
    cache.release(lease)
    assert lease.released
    with pytest.raises(kvtier.Error):
        cache.release(lease)  # twice
    with pytest.raises(kvtier.Error):
        lease.block(0, 0, 0)
    with pytest.raises(kvtier.Error):
        lease.slots

    # after close: the cache, a live lease and a transfer all raise; nothing crashes
    live = cache.allocate_device(4)
    xfer = cache.load(cache.match(keys), live)
    view = live.block(0, 0, 0)
    cache.close()
    cache.close()  # idempotent
    for call in (lambda: cache.match(keys), lambda: cache.allocate_device(1), cache.stats,
                 lambda: cache.hint(keys, [1.0] * 4), cache.check_invariants,
                 lambda: live.block(0, 0, 0), lambda: live.slots, lambda: cache.release(live),
                 lambda: cache.commit(keys, live), xfer.wait, lambda: xfer.wait_layer(0),
                 lambda: xfer.done):
        with pytest.raises(kvtier.Error) as e:
            call()
        assert e.value.code == "FAILED_PRECONDITION" and "closed" in str(e.value)
    assert view.sum() >= 0  # a view taken before close still points at live memory
    assert other.stats()["leases_live"] == 1  # the other cache is unaffected
    other.release(foreign)
    other.close()


def ran_inside(call):
    """Whether another Python thread ran while call() blocked, decided without timing.

    The switch interval is raised far past the test's length, so this thread hands the GIL over
    only where it blocks with the GIL released: a probe thread woken just before call() can then
    see `phase` == "inside" only if call() released the GIL. If it did but the probe got no CPU
    in time, the probe sees "after": False, and the caller tries again (a held GIL never passes).
    """
    import sys
    phase = ["before"]
    seen = []
    armed = threading.Event()

    def probe():
        armed.wait()
        seen.append(phase[0])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t = threading.Thread(target=probe)
        t.start()
        phase[0] = "inside"
        armed.set()  # wakes the probe; it needs the GIL, which only a blocking call gives up
        call()
        phase[0] = "after"
    finally:
        sys.setswitchinterval(old)
    t.join()
    return seen == ["inside"]


def test_gil_released_during_wait():
    """A second Python thread runs while this one is blocked in Transfer.wait()."""
    big = 256 << 10  # 32 blocks x 8 segments x 256 KiB = 64 MiB to copy: milliseconds
    cache = make_cache(num_slots=32, bytes_per_block=big, host_capacity_bytes=32 * LAYERS * SEGS * big)
    keys = prompt_keys(4, blocks=32)
    lease = cache.allocate_device(32)
    cache.commit(keys, lease)  # contents do not matter here
    cache.release(lease)
    cache.release(cache.allocate_device(32))  # all 32 blocks demoted to the host
    # With the GIL released, a round fails only if the probe got no CPU during the whole wait;
    # with it held, every round fails.
    for _ in range(50):
        lease = cache.allocate_device(32)
        xfer = cache.load(cache.match(keys), lease)
        assert xfer.blocks_promoted == 32
        inside = ran_inside(xfer.wait)
        cache.release(lease)
        cache.release(cache.allocate_device(32))  # demote again for the next round
        if inside:
            break
    assert inside, "no other Python thread ran while wait() blocked: the GIL was held"
    cache.close()


def test_gil_released_while_blocked_in_close():
    """close() waits for a transfer waited on by another thread: both must finish."""
    cache = make_cache()
    keys = prompt_keys(5)
    request(cache, keys)
    cache.release(cache.allocate_device(SLOTS))
    lease = cache.allocate_device(4)
    xfer = cache.load(cache.match(keys), lease)
    errors = []

    def waiter():
        try:
            for _ in range(100):
                xfer.wait()
        except kvtier.Error:
            pass  # closed meanwhile
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    cache.close()  # must not deadlock with threads inside wait()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert not errors


# ---- Regression #17: hostile callers ----

def run_isolated(code):
    """Runs `code` in a fresh interpreter (the module on the same path); returns its stdout."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_regression_17_dtype_must_be_numeric():
    """An object (or any non-numeric) dtype would make block views follow KV bytes as pointers."""
    for dtype in ("object", "U4", "S4", "datetime64[s]", "V4", "f2,f2", "(2,)f2"):
        with pytest.raises(ValueError) as e:
            make_cache(dtype=dtype)
        assert e.value.code == "INVALID_ARGUMENT" and "numeric" in str(e.value), dtype
    with pytest.raises(ValueError):  # the engine's own buffers: the same rule
        kvtier.Cache.create(kvtier.Options(num_slots=SLOTS, tokens_per_block=TPB,
                                           layers=[[np.empty((SLOTS, 8), dtype=object)]]))
    for dtype in ("bool", "int8", "uint16", "float16", "float64", "complex64"):
        with make_cache(dtype=dtype) as cache:
            assert cache.dtype == np.dtype(dtype)
            lease = cache.allocate_device(1)
            assert lease.block(0, 0, 0).dtype == np.dtype(dtype)
            cache.release(lease)


def test_regression_17_giant_layout_is_memory_error():
    """A layout larger than the machine is MemoryError before any memory is touched.

    Each 256 MiB tensor fits alone; together they are twice the physical memory. Run apart, with
    an address-space limit as a safety net: without the total check the tensors would be filled
    until that limit (or, without it, the OOM killer) stops them.
    """
    out = run_isolated("""
import os, resource, numpy, kvtier
phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
vm_kib = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1])
resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (2 << 30), resource.RLIM_INFINITY))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seg = 256 << 20
try:
    kvtier.Cache.create(kvtier.Options(num_slots=16, bytes_per_block=seg // 16, segments_per_layer=2,
                                       num_layers=phys // (2 * seg) + 1, backend="emulated"))
    print("created")
except MemoryError as e:
    print("MemoryError:", e)
print("rss_growth_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before)
""")
    assert "MemoryError: Options: num_layers=" in out and "machine's memory" in out, out
    growth = int(out.split("rss_growth_kib")[1])
    assert growth < 64 << 10, out  # KiB: nothing was filled


def test_regression_17_kv_memory_is_allocated_lazily():
    """A 1 GiB layout costs no resident memory until blocks are written (zero pages)."""
    out = run_isolated("""
import resource, numpy as np, kvtier
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = kvtier.Cache.create(kvtier.Options(num_slots=64, bytes_per_block=8 << 20, num_layers=1,
                                           segments_per_layer=2, backend="emulated",
                                           host_capacity_bytes=2 * (16 << 20)))
lease = cache.allocate_device(1)
assert not lease.block(0, 0, 1).any()  # reads as zeros
lease.write_block(0, 0, 0, np.full(8 << 20, 7, dtype=np.uint8))
assert (lease.block(0, 0, 0) == 7).all()
print("rss_growth_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before)
cache.release(lease)
cache.close()
""")
    growth = int(out.split("rss_growth_kib")[1])
    assert growth < 256 << 10, out  # KiB: the blocks touched, not the 1 GiB mapped


def test_regression_17_cached_blocks_are_read_only():
    """Lease blocks a Load shared (or copied in) and committed blocks hold cached keys: writing
    one would change the block every later request loads."""
    with make_cache() as cache:
        keys = prompt_keys(7)
        request(cache, keys)  # computes and commits the 4 blocks
        garbage = np.zeros(SEG_BYTES, dtype=np.uint8)
        for evict in (False, True):  # shared on the device; copied in from the host
            if evict:
                cache.release(cache.allocate_device(SLOTS))  # demote the 4 blocks to the host
            lease = cache.allocate_device(len(keys) + 1)
            xfer = cache.load(cache.match(keys), lease)
            assert xfer.blocks == len(keys) and xfer.blocks_promoted == (len(keys) if evict else 0)
            xfer.wait()
            for b in range(xfer.blocks):
                with pytest.raises(kvtier.Error) as e:
                    lease.write_block(b, 1, 1, garbage)
                assert e.value.code == "FAILED_PRECONDITION" and "cached" in str(e.value)
                view = lease.block(b, 1, 1)
                assert not view.flags.writeable
                with pytest.raises(ValueError):
                    view[:] = 0
            lease.write_block(len(keys), 1, 1, garbage)  # the block past them is the engine's
            assert lease.block(len(keys), 1, 1).flags.writeable
            cache.release(lease)
            request(cache, keys)  # every byte still what was committed
        # committed blocks: the same rule, on the lease that computed them
        other = prompt_keys(8, blocks=2)
        lease = cache.allocate_device(3)
        for b in range(2):
            for layer in range(LAYERS):
                for s in range(SEGS):
                    lease.write_block(b, layer, s, pattern(other[b], layer, s))
        cache.commit(other, lease)
        with pytest.raises(kvtier.Error) as e:
            lease.write_block(1, 0, 0, garbage)
        assert e.value.code == "FAILED_PRECONDITION"
        assert not lease.block(0, 0, 0).flags.writeable and lease.block(2, 0, 0).flags.writeable
        lease.write_block(2, 0, 0, garbage)
        cache.release(lease)
        request(cache, other)
        cache.check_invariants()


def test_regression_17_chain_tokens_refuses_floats():
    """Float tokens were truncated (1.7 hashed as token 1): only integers are token ids."""
    h = kvtier.Hasher(model_id="m")
    ref = h.chain_tokens(list(range(TPB)), TPB)
    for bad in (np.arange(TPB, dtype=np.float32), np.arange(TPB, dtype=np.float16),
                np.arange(TPB, dtype=np.float64) + 0.5, np.ones(TPB, dtype=bool),
                [np.float32(i) for i in range(TPB)], [1.5] * TPB, "a" * TPB):
        with pytest.raises(TypeError):
            h.chain_tokens(bad, TPB)
    with pytest.raises(TypeError):
        h.chain(None, np.arange(TPB, dtype=np.float32))
    with pytest.raises(TypeError):
        h.chain_tokens(np.array([2**31] * TPB, dtype=np.uint32), TPB)  # not an int32
    with pytest.raises(ValueError):
        h.chain_tokens(np.zeros((2, TPB), dtype=np.int64), TPB)
    for dtype in (np.int8, np.int16, np.int64, np.uint8, np.uint32, np.uint64):  # exact
        assert h.chain_tokens(np.arange(TPB, dtype=dtype), TPB) == ref
        assert h.chain(None, np.arange(TPB, dtype=dtype)) == ref[0]
    assert h.chain_tokens(np.arange(2 * TPB, dtype=np.int32)[::2], TPB) == \
        h.chain_tokens(list(range(0, 2 * TPB, 2)), TPB)  # strided int32: the checked path


def test_chain_tokens_accepts_torch_tensors():
    """Token ids as torch tensors (Debian's python3-torch; skipped without it)."""
    torch = pytest.importorskip("torch")
    h = kvtier.Hasher(model_id="m")
    ref = h.chain_tokens(list(range(2 * TPB)), TPB)
    assert h.chain_tokens(torch.arange(2 * TPB), TPB) == ref  # int64
    assert h.chain_tokens(torch.arange(2 * TPB, dtype=torch.int32), TPB) == ref
    assert h.chain_tokens(np.arange(2 * TPB, dtype=np.int64), TPB) == ref
    assert h.chain(None, torch.arange(TPB)) == ref[0]
    with pytest.raises(TypeError):
        h.chain_tokens(torch.arange(2 * TPB, dtype=torch.float32), TPB)
    with pytest.raises(TypeError):
        h.chain_tokens(torch.full((TPB,), 2**40), TPB)  # not an int32


def test_tenant_shares_and_wipe_on_free():
    """host_tenant_shares and set_tenant reach the cache; bad names and shares raise ValueError."""
    cache = make_cache(host_tenant_shares={"a": "0.5", "b": "0.5"}, host_wipe_on_free=True)
    keys = prompt_keys(7)
    lease = cache.allocate_device(len(keys))
    cache.set_tenant(lease, "a")
    cache.set_tenant(lease, "")  # the default tenant
    with pytest.raises(ValueError):
        cache.set_tenant(lease, "c")
    cache.set_tenant(lease, "b")
    for b in range(len(keys)):
        for layer in range(LAYERS):
            for s in range(SEGS):
                lease.write_block(b, layer, s, pattern(keys[b], layer, s))
    cache.commit(keys, lease)
    cache.release(lease)
    assert cache.remove(keys)["done"] == len(keys)
    cache.check_invariants()
    with pytest.raises(ValueError):
        make_cache(host_tenant_shares={"a": "0.7", "b": "0.4"})


def test_codec_roundtrip_bounds_and_errors():
    """kvtier.codec_roundtrip: int8 within s/2 per group, none byte-exact, bad input raises."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 128)).astype(np.float32)
    for role in ("k", "v"):
        y = kvtier.codec_roundtrip("int8", 32, x, role)
        assert y.shape == x.shape and y.dtype == x.dtype
        # The widest group spans at most the whole tensor's range.
        assert np.abs(y - x).max() <= (x.max() - x.min()) / 255 / 2 * 1.02
    assert np.array_equal(kvtier.codec_roundtrip("none", 32, x, "v"), x)
    h = x.astype(np.float16)
    assert kvtier.codec_roundtrip("fp8_e4m3", 32, h, "v").dtype == np.float16
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    back = kvtier.codec_roundtrip("int4", 32, bf16, "k")
    assert back.dtype == np.uint16
    assert kvtier.codec_encoded_bytes("int8", 32, x, "v") < x.nbytes // 3
    with pytest.raises(ValueError):
        kvtier.codec_roundtrip("int8", 3, x, "v")  # not a power of two
    with pytest.raises(ValueError):
        kvtier.codec_roundtrip("int3", 32, x, "v")
    with pytest.raises(ValueError):
        kvtier.codec_roundtrip("int8", 32, x.astype(np.int32), "v")


def test_cache_with_host_codec():
    """host_codec with segment_roles and shard_dtype: host round trips are counted lossy."""
    cache = make_cache(host_codec="int8", host_codec_group_size=32, shard_dtype="float16",
                       segment_roles=["k", "v"][:SEGS])
    assert cache.stats()["codec_lossy_blocks_loaded"] == 0
    with pytest.raises(ValueError):
        make_cache(host_codec="int8", segment_roles=["k", "v"][:SEGS])  # no shard_dtype
    with pytest.raises(ValueError):
        make_cache(host_codec="int8", shard_dtype="float16")  # no roles
