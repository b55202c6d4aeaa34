"""bench/sample_spread.py's arithmetic: the gap to Belady, the spread, the shortfalls."""
import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "sample_spread.py"
_spec = importlib.util.spec_from_file_location("sample_spread", _PATH)
spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spread)


def test_gap_closed_is_the_fraction_of_the_way_to_belady():
    assert spread.gap_closed(0.10, 0.05, 0.25) == pytest.approx(0.25)
    assert spread.gap_closed(0.05, 0.05, 0.25) == 0


def test_spread_is_lowest_median_highest():
    assert spread.spread([3, 1, 2, 5]) == (1, 2.5, 5)


def test_shortfalls_count_samples_below_the_goal_per_capacity():
    # Two capacities, three samples. Exact: 99 < 100 is short, 100 is not.
    assert spread.shortfalls([[99, 7], [100, 6], [101, 8]], [100, 7], exact=True) == [1, 1]
    # Published ratios have four decimals: 0.07549 rounds to 0.0755 and meets it, 0.07544 not.
    assert spread.shortfalls([[0.07549], [0.07544]], [0.0755], exact=False) == [1]
