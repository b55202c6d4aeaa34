"""bench/belady_gap_study.py on hand-made traces: its Belady, its request classes, its LHD replay."""
import importlib.util
import json
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "belady_gap_study.py"
_spec = importlib.util.spec_from_file_location("belady_gap_study", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


@pytest.fixture
def trace(tmp_path):
    def write(requests, outputs=None):
        path = tmp_path / "trace.jsonl"
        outputs = outputs or [1] * len(requests)
        path.write_text("".join(json.dumps({"timestamp": 0, "output_length": out,
                                            "hash_ids": ids}) + "\n"
                                for ids, out in zip(requests, outputs)))
        return str(path)
    return write


def test_belady_by_hand():
    # Capacity 2 over 1 2 3 1 2 3: misses 1 2 3 (evicts 2: next use at 4, 1's at 3), hits 1,
    # misses 2 (evicts 1: never used again), hits 3. 2 hits of 6.
    assert study.belady([1, 2, 3, 1, 2, 3], 2) == pytest.approx(2 / 6)
    # Large enough to hold everything: every reuse hits.
    assert study.belady([1, 2, 3, 1, 2, 3], 3) == pytest.approx(3 / 6)
    # Its two hits at capacity 2 are both in the second half (accesses 3..5).
    assert study.belady([1, 2, 3, 1, 2, 3], 2, second_half=True) == pytest.approx((2 / 6, 2 / 3))


def test_classes_follow_conversation_turns(trace):
    # r0 and r1 share only the root (a new conversation each); r2 continues r0 (it shares all of
    # r0 but r0's last, partial block); r3 continues r2; r4 branches from the middle of r2.
    path = trace([[0, 1, 2, 3], [0, 4, 5], [0, 1, 2, 6, 7], [0, 1, 2, 6, 8], [0, 1, 9]])
    blocks, classes = study.load(path, "basic")
    assert blocks == [0, 1, 2, 3, 0, 4, 5, 0, 1, 2, 6, 7, 0, 1, 2, 6, 8, 0, 1, 9]
    turns = [c[0] for c in classes]
    assert turns == [1] * 4 + [1] * 3 + [2] * 5 + [3] * 5 + [1] * 3
    tips = [i for i, c in enumerate(classes) if c[1]]
    assert tips == [3, 6, 11, 16, 19]
    roots = [i for i, c in enumerate(classes) if c[3]]
    assert roots == [0, 4, 7, 12, 17]
    # Previous reuse gap, log10-bucketed (0: never seen): block 1 at access 8 was last at 1.
    assert classes[8][2] == 1 + 0 and classes[13][2] == 1 + 0 and classes[1][2] == 0
    rich = study.load(path, "rich")[1]
    assert [c[:4] for c in rich] == classes and all(c[4] == 0 for c in rich)


def test_lhd_never_beats_belady_and_keeps_the_hot_block(trace):
    # Many one-shot conversations around a hot root: an LHD that knows the distributions keeps
    # the root resident (its class is reused at distance 1..4), and no policy beats Belady.
    requests = [[0] + [1000 + 3 * r + k for k in range(3)] for r in range(200)]
    blocks, classes = study.load(trace(requests), "basic")
    opt = study.belady(blocks, 2)
    assert opt == pytest.approx(199 / 800)
    for train in ("oracle", "online"):
        hit = study.lhd(blocks, classes, 2, train, samples=64)[0]
        assert hit <= opt
    assert study.lhd(blocks, classes, 2, "oracle", samples=64)[0] == pytest.approx(opt)


def test_engine_classes_count_new_blocks_and_output_length(trace):
    # r0: 4 new blocks (log2 bucket 3), 300 output tokens (bucket 4: 256+); r1 continues it with 2
    # new blocks (bucket 2) and 5 tokens (bucket 1: 4..15); r2 repeats r1: no new block.
    path = trace([[0, 1, 2, 3], [0, 1, 2, 4, 5], [0, 1, 2, 4, 5]], outputs=[300, 5, 0])
    blocks, classes = study.load(path, "engine")
    assert [c[4:] for c in classes] == [(3, 4)] * 4 + [(2, 1)] * 5 + [(0, 0)] * 5
    assert [c[:4] for c in classes] == study.load(path, "basic")[1]


def test_measured_densities_see_only_the_accesses_before_the_end():
    # Block 1 is reused at distance 2, but only the whole trace sees it: over the first two
    # accesses nothing returns, so class "a" has no density at any age.
    blocks, classes = [1, 2, 1, 2], ["a"] * 4
    assert max(study.measured(blocks, classes, 2)["a"]) == 0
    whole = study.measured(blocks, classes, 4)["a"]
    assert whole[study.bucket(1)] > 0 and whole[study.bucket(2)] > 0
