"""kvtier.Connector (connector mode) on the emulated device: the engine owns its blocks (numpy
arrays or torch tensors as KV memory), kvtier stores them and loads them back byte-exact; bad
input; take_finished; stats; close.

Run by ctest (python_tests) with PYTHONPATH at the built module; or by hand:
  PYTHONPATH=build/default/python /usr/bin/python3 -m pytest test/python/test_connector.py
"""
import gc

import numpy as np
import pytest

import kvtier
from conftest import check_stats_dict

LAYERS, SEGS, TPB, SLOTS, SEG_BYTES = 3, 2, 16, 16, 256


def pattern(key, layer, seg, nbytes=SEG_BYTES):
    """What the engine's forward pass writes into a block's segment: bytes derived from its key."""
    seed = (key.hi ^ key.lo ^ (layer * 2 + seg + 1) * 0x9E3779B97F4A7C15) & (2**64 - 1)
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def numpy_kv():
    return [[np.zeros((SLOTS, SEG_BYTES), dtype=np.uint8) for _ in range(SEGS)]
            for _ in range(LAYERS)]


def make_connector(kv, **overrides):
    args = dict(tokens_per_block=TPB, num_slots=SLOTS, layers=kv, backend="emulated",
                host_capacity_bytes=SLOTS * LAYERS * SEGS * SEG_BYTES)
    args.update(overrides)
    return kvtier.Connector(kvtier.Options(**args))


def prompt_keys(seed, blocks=4):
    tokens = [seed * 100000 + i for i in range(blocks * TPB)]
    return kvtier.Hasher(model_id="py-connector").chain_tokens(tokens, TPB)


def block_bytes(kv, layer, seg, block):
    """The bytes of one block's segment, whatever kv holds (numpy arrays or torch tensors)."""
    t = kv[layer][seg]
    a = t.numpy() if hasattr(t, "numpy") and not isinstance(t, np.ndarray) else t
    return a[block].reshape(-1).view(np.uint8)


def compute(kv, keys, blocks):
    """The engine computes keys[i] into its block blocks[i]."""
    for key, b in zip(keys, blocks):
        for layer in range(LAYERS):
            for seg in range(SEGS):
                block_bytes(kv, layer, seg, b)[:] = pattern(key, layer, seg)


def bad_blocks(kv, keys, blocks, layers=range(LAYERS)):
    """Blocks whose bytes differ from what keys[i] holds."""
    return [b for key, b in zip(keys, blocks)
            if any(not np.array_equal(block_bytes(kv, layer, seg, b), pattern(key, layer, seg))
                   for layer in layers for seg in range(SEGS))]


def scribble(kv):
    for layer in kv:
        for t in layer:
            block_bytes_all = t.numpy() if not isinstance(t, np.ndarray) else t
            block_bytes_all.reshape(-1).view(np.uint8)[:] = 0xEE


def store_load_round_trip(c, kv, ids):
    """Store 4 blocks from engine blocks 0..3, load 3 of them back into other blocks; `ids` turns a
    list of block ids into the type under test."""
    keys = prompt_keys(1)
    compute(kv, keys, [0, 1, 2, 3])
    st = c.store(keys, 0, ids([0, 1, 2, 3]), request_id=1)
    st.wait()
    assert (st.blocks, st.unstored, st.layers_saved) == (4, 0, LAYERS)
    assert st.poll() and st.done and st.error is None
    found = c.lookup(keys)
    assert found.blocks == 4 and not found.pending
    assert found.tiers == [kvtier.Tier.HOST] * 4
    assert c.lookup(keys, first=1, touch=False).blocks == 3

    scribble(kv)
    dst = [9, 3, 12]  # the engine holds keys[0]; kvtier brings keys[1:] into these
    xfer = c.load(keys, 1, ids(dst), request_id=2)
    assert isinstance(xfer, kvtier.Transfer) and xfer.blocks == 3
    for layer in range(LAYERS):
        xfer.wait_layer(layer)
        assert bad_blocks(kv, keys[1:], dst, layers=[layer]) == []
    xfer.wait()
    assert xfer.poll() and xfer.done and xfer.error is None
    assert bad_blocks(kv, keys[1:], dst) == []
    done = c.take_finished()
    assert [tuple(f) for f in done] == [(1, "store", True, "", 4), (2, "load", True, "", 3)]
    assert done[0].code == "OK" and done[1].kind == "load"
    assert done[1].blocks_loaded == 3 and xfer.blocks_loaded == 3
    assert c.take_finished() == []  # each reported once
    assert c.stats()["blocks_stored"] == 4
    c.check_invariants()


@pytest.mark.parametrize("ids", [list, tuple, lambda v: np.array(v, dtype=np.int64),
                                 lambda v: np.array(v, dtype=np.uint32),
                                 lambda v: np.array(v, dtype=np.int16)],
                         ids=["list", "tuple", "int64", "uint32", "int16"])
def test_store_then_load_byte_exact_numpy(ids):
    kv = numpy_kv()
    with make_connector(kv) as c:
        store_load_round_trip(c, kv, ids)
        assert c.stats()["device"]["used_blocks"] == 0  # the engine's device is not a tier
    assert c.closed


def test_kvtier_allocates_the_kv_memory_when_not_given():
    c = kvtier.Connector.create(kvtier.Options(
        tokens_per_block=TPB, num_slots=SLOTS, num_layers=LAYERS, segments_per_layer=SEGS,
        bytes_per_block=SEG_BYTES, backend="emulated", host_capacity_bytes=1 << 20))
    kv = [[c.kv(layer, seg) for seg in range(SEGS)] for layer in range(LAYERS)]
    assert kv[0][0].shape == (SLOTS, SEG_BYTES) and c.block_bytes == LAYERS * SEGS * SEG_BYTES
    store_load_round_trip(c, kv, list)
    c.close()


def test_layer_wise_store_and_abandoned_store():
    kv = numpy_kv()
    c = make_connector(kv)
    keys = prompt_keys(2)
    compute(kv, keys, [4, 5, 6, 7])
    st = c.begin_store(keys, 0, [4, 5, 6, 7], request_id=7)
    assert st.blocks == 4 and st.layers_saved == 0 and not st.poll()
    with pytest.raises(kvtier.Error) as e:
        st.save_layer(1)  # layers in order
    assert e.value.code == "FAILED_PRECONDITION"
    with pytest.raises(kvtier.Error) as e:
        st.wait()  # nothing would finish it
    assert e.value.code == "FAILED_PRECONDITION"
    for layer in range(LAYERS):
        st.save_layer(layer)
        assert st.layers_saved == layer + 1
    with pytest.raises(IndexError):
        st.save_layer(LAYERS)
    st.wait()
    st.save_all()  # nothing left: fine

    other = prompt_keys(3, blocks=2)
    compute(kv, other, [0, 1])
    abandoned = c.begin_store(other, 0, [0, 1], request_id=8)
    abandoned.save_layer(0)
    del abandoned  # layers left unsaved: abandoned, nothing stored
    gc.collect()
    done = {f.request_id: f for f in c.take_finished()}
    assert done[7].ok and done[7].blocks == 4
    assert not done[8].ok and done[8].code == "CANCELLED" and done[8].message
    assert c.lookup(other).blocks == 0
    assert c.stats()["host"]["used_blocks"] == 4
    c.check_invariants()
    c.close()


def test_bad_input_raises_and_the_connector_stays_usable():
    kv = numpy_kv()
    c = make_connector(kv)
    keys = prompt_keys(4)
    compute(kv, keys, [0, 1, 2, 3])
    c.store(keys, 0, [0, 1, 2, 3]).wait()
    before = c.stats()
    for dst, exc in (([4, 5], ValueError),                 # one short
                     ([4, 5, 6, SLOTS], ValueError),       # past the pool
                     ([4, 5, 5, 6], ValueError),           # repeated
                     ([4, 5, 6, -1], ValueError),          # not a block id
                     ([4, 5, 6, 2**32], ValueError),
                     (np.array([4, 5, 6, -7], dtype=np.int8), ValueError),
                     (np.array([[4, 5], [6, 7]]), ValueError),  # 2-D
                     ([4.0, 5, 6, 7], TypeError),
                     ([True, 5, 6, 7], TypeError),
                     (np.array([4, 5, 6, 7], dtype=np.float32), TypeError),
                     ("abcd", TypeError),
                     (7, TypeError)):
        with pytest.raises(exc):
            c.load(keys, 0, dst)
    with pytest.raises(ValueError):
        c.lookup(keys, first=5)  # past the keys
    with pytest.raises(ValueError):
        c.lookup([kvtier.BlockKey(0, 0)])  # the root key
    with pytest.raises(TypeError):
        c.lookup([1, 2])
    with pytest.raises(ValueError):
        c.store(prompt_keys(5), 0, [8, 9, 10, 11], ready_event=1)  # no events on emulated
    with pytest.raises(ValueError):
        c.hint(keys, [1.0])
    with pytest.raises(TypeError):
        c.store(keys, 0, [0, 1, 2, 3], ready_event=-1)

    # a block a store in flight reads is no load target until the store ends
    other = prompt_keys(6, blocks=2)
    compute(kv, other, [8, 9])
    busy = c.begin_store(other, 0, [8, 9])
    with pytest.raises(kvtier.Error) as e:
        c.load(keys, 0, [10, 9, 11, 12])
    assert e.value.code == "FAILED_PRECONDITION"
    c.check_invariants()
    busy.save_all()
    busy.wait()

    after = c.stats()
    assert after["match_calls"] == before["match_calls"]
    assert after["blocks_stored"] == before["blocks_stored"] + 2
    scribble(kv)
    xfer = c.load(keys, 0, [10, 9, 11, 12])
    xfer.wait()
    assert bad_blocks(kv, keys, [10, 9, 11, 12]) == []
    c.check_invariants()
    c.close()


def test_bad_options():
    kv = numpy_kv()
    with pytest.raises(ValueError):
        make_connector(kv, device_capacity_slots=4)  # the device is the engine's
    with pytest.raises(ValueError):
        make_connector(kv, host_capacity_bytes=0)  # loads and stores pass through the host
    with pytest.raises(ValueError):
        make_connector(kv, num_slots=SLOTS + 1)
    with pytest.raises(TypeError):
        kvtier.Connector(kvtier.Options(num_slots=SLOTS, layers=[[object()]],
                                        host_capacity_bytes=1 << 20))


def test_after_close_every_call_raises():
    kv = numpy_kv()
    c = make_connector(kv)
    keys = prompt_keys(7)
    compute(kv, keys, [0, 1, 2, 3])
    c.store(keys, 0, [0, 1, 2, 3]).wait()
    xfer = c.load(keys, 0, [4, 5, 6, 7], request_id=3)
    live = c.begin_store(prompt_keys(8), 0, [8, 9, 10, 11], request_id=4)
    c.close()  # abandons `live` (layers unsaved), waits for the load
    c.close()  # idempotent
    assert c.closed
    for call in (lambda: c.lookup(keys), lambda: c.load(keys, 0, [4, 5, 6, 7]),
                 lambda: c.store(keys, 0, [0, 1, 2, 3]), lambda: c.begin_store(keys, 0, [0, 1, 2, 3]),
                 c.take_finished, lambda: c.hint(keys, [1.0] * 4), c.stats, c.check_invariants,
                 xfer.wait, lambda: xfer.wait_layer(0), xfer.poll, lambda: xfer.blocks,
                 live.wait, live.poll, lambda: live.save_layer(0), live.save_all,
                 lambda: live.blocks, lambda: live.layers_saved):
        with pytest.raises(kvtier.Error) as e:
            call()
        assert e.value.code == "FAILED_PRECONDITION" and "connector is closed" in str(e.value)
    assert c.kv(0, 0).shape == (SLOTS, SEG_BYTES)  # the engine's memory is still there


def test_stats_have_every_field(stats_fields):
    with make_connector(numpy_kv()) as c:
        st = c.stats()
        check_stats_dict(st, stats_fields)
        assert st["blocks_stored"] == 0 and st["blocks_store_skipped"] == 0
        assert len(kvtier.LATENCY_BUCKET_UPPER_BOUNDS_NANOS) == 24
        assert kvtier.LATENCY_BUCKET_UPPER_BOUNDS_NANOS[0] == 1000
        keys = prompt_keys(9)
        c.store(keys, 0, [0, 1, 2, 3]).wait()
        c.store(keys, 0, [4, 5, 6, 7]).wait()  # cached already: skipped
        st = c.stats()
        assert st["blocks_stored"] == 4 and st["blocks_store_skipped"] == 4
    assert kvtier.Tier.REMOTE.value == 3


def test_gil_released_during_store_and_load_waits():
    """Another Python thread runs while this one is blocked in Store.wait() or Transfer.wait()."""
    import threading
    import time
    big = 256 << 10  # 16 blocks x 6 segments x 256 KiB = 24 MiB per copy: milliseconds
    kv = [[np.zeros((SLOTS, big), dtype=np.uint8) for _ in range(SEGS)] for _ in range(LAYERS)]
    c = make_connector(kv, host_capacity_bytes=2 * SLOTS * LAYERS * SEGS * big)
    stamps, stop = [], threading.Event()

    def spin():
        while not stop.is_set():
            stamps.append(time.monotonic())

    t = threading.Thread(target=spin)
    t.start()
    inside = {"store": 0, "load": 0}
    deadline = time.monotonic() + 20  # a loaded machine may not schedule the spinner every round
    seed = 100
    while time.monotonic() < deadline and not all(inside.values()):
        seed += 1
        keys = prompt_keys(seed, blocks=SLOTS // 2)
        st = c.store(keys, 0, list(range(SLOTS // 2)))
        t0 = time.monotonic()
        st.wait()
        t1 = time.monotonic()
        inside["store"] += sum(1 for s in list(stamps) if t0 < s < t1)
        xfer = c.load(keys, 0, list(range(SLOTS // 2, SLOTS)))
        t0 = time.monotonic()
        xfer.wait()
        t1 = time.monotonic()
        inside["load"] += sum(1 for s in list(stamps) if t0 < s < t1)
    stop.set()
    t.join()
    assert all(inside.values()), f"the GIL was held through a wait: {inside}"
    c.close()


# ---- torch tensors (Debian's python3-torch; skipped without it) ----

def test_torch_tensors_as_kv_memory_and_block_ids():
    torch = pytest.importorskip("torch")
    # [num_slots, tokens, heads * dim] in float16: 8 x 16 x 2 bytes = SEG_BYTES per block
    kv = [[torch.zeros((SLOTS, 8, 16), dtype=torch.float16) for _ in range(SEGS)]
          for _ in range(LAYERS)]
    c = make_connector(kv, dtype="float16")
    addr = kv[1][1].data_ptr()
    assert c.slot_address(3, 1, 1) == addr + 3 * SEG_BYTES
    view = c.kv(1, 1)  # the tensor's memory, as numpy
    view[2, :] = 1.5
    assert bool((kv[1][1][2] == 1.5).all())
    for ids in (lambda v: torch.tensor(v, dtype=torch.int64),
                lambda v: torch.tensor(v, dtype=torch.int32)):
        store_load_round_trip(c, kv, ids)
        c.close()
        c = make_connector(kv, dtype="float16")
    # the connector keeps the tensors alive: the Python names may go
    tensors_alive = [[c.kv(layer, seg) for seg in range(SEGS)] for layer in range(LAYERS)]
    del kv
    gc.collect()
    store_load_round_trip(c, tensors_alive, list)
    c.close()

    with pytest.raises(TypeError):
        make_connector(numpy_kv()).load(prompt_keys(1), 0, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(TypeError):
        make_connector(numpy_kv()).load(prompt_keys(1), 0, torch.tensor([True] * 4))


def test_torch_tensor_layouts():
    torch = pytest.importorskip("torch")

    def opts(layers, **kw):
        return kvtier.Options(num_slots=SLOTS, layers=layers, backend="emulated",
                              host_capacity_bytes=1 << 20, **kw)

    # K and V interleaved per block ([num_slots, 2, ...], as FlashInfer): kv[:, 0] is strided by
    # slot, each slot's elements contiguous
    both = torch.zeros((SLOTS, 2, 128), dtype=torch.uint8)
    c = kvtier.Connector(opts([[both[:, 0], both[:, 1]]]))
    assert c.slot_address(5, 0, 1) == both.data_ptr() + 5 * 256 + 128
    assert c.kv(0, 1).strides == (256, 1)
    c.close()
    with pytest.raises(ValueError) as e:  # slots are not the first dimension
        kvtier.Connector(opts([[torch.zeros((128, SLOTS), dtype=torch.uint8).t()]]))
    assert "not contiguous" in str(e.value)
    with pytest.raises(ValueError) as e:
        kvtier.Connector(opts([[torch.zeros((SLOTS, 8, 16))[:, :, ::2]]]))  # gaps in each slot
    assert "not contiguous" in str(e.value)
    with pytest.raises(ValueError) as e:
        kvtier.Connector(opts([[torch.zeros((SLOTS + 1, 8))]]))
    assert "first dimension" in str(e.value)
    with pytest.raises(ValueError):
        kvtier.Connector(opts([[torch.zeros(())]]))  # 0-dimensional
    # the same rules for a Cache
    cache = kvtier.Cache.create(opts([[torch.zeros((SLOTS, 64), dtype=torch.uint8)]]))
    lease = cache.allocate_device(1)
    lease.write_block(0, 0, 0, np.full(64, 3, dtype=np.uint8))
    cache.release(lease)
    cache.close()


class FakeCudaTensor:
    """The attributes kvtier reads from a torch CUDA tensor (no GPU needed)."""

    class device:  # noqa: N801 - torch's spelling
        type = "cuda"

    def __init__(self, base, shape, esize=2):
        self.base, self.shape, self.esize = base, shape, esize

    def data_ptr(self):
        return self.base

    def element_size(self):
        return self.esize

    def numel(self):
        return int(np.prod(self.shape))

    def is_contiguous(self):
        return True

    def stride(self):
        return tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))


def test_cuda_tensors_are_raw_addresses():
    k, v = FakeCudaTensor(0x7f0000000000, (SLOTS, 8, 16)), FakeCudaTensor(0x7f0001000000, (SLOTS, 8, 16))
    with pytest.raises(ValueError) as e:  # the emulated device would read them as host memory
        kvtier.Connector(kvtier.Options(num_slots=SLOTS, layers=[[k, v]], backend="emulated",
                                        host_capacity_bytes=1 << 20))
    assert "CUDA tensor" in str(e.value)
    c = kvtier.Connector(kvtier.Options(num_slots=SLOTS, layers=[[k, v]], backend="metadata_only",
                                        host_capacity_bytes=1 << 20))
    assert c.slot_address(3, 0, 1) == 0x7f0001000000 + 3 * SEG_BYTES
    with pytest.raises(kvtier.Error):
        c.kv(0, 0)  # device memory: addresses only
    c.close()
    with pytest.raises((kvtier.Error, ValueError)):  # auto means cuda: fake addresses are refused
        kvtier.Connector(kvtier.Options(num_slots=SLOTS, layers=[[k, v]],
                                        host_capacity_bytes=1 << 20))

