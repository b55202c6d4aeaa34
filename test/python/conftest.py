"""Shared by the test files: the fields of kvtier/stats.h, read from the header itself."""
import pathlib
import re

import pytest

STATS_H = pathlib.Path(__file__).resolve().parents[2] / "include" / "kvtier" / "stats.h"


def stats_header_fields():
    """{struct name: [field names]} for TierStats, RemoteStats and CacheStats."""
    text = STATS_H.read_text()
    out = {}
    for struct in ("TierStats", "RemoteStats", "CacheStats"):
        body = re.search(r"struct %s \{(.*?)\n\};" % struct, text, re.S).group(1)
        out[struct] = re.findall(
            r"^\s+(?:uint64_t|bool|TierStats|RemoteStats|LatencyHistogram)\s+(\w+)", body, re.M)
    return out


@pytest.fixture
def stats_fields():
    return stats_header_fields()


def check_stats_dict(stats, fields):
    """`stats` (a stats() dict) has every field of the header, and nothing unknown but hit_ratio."""
    assert set(stats) == set(fields["CacheStats"]) | {"hit_ratio"}
    for tier in ("device", "host", "disk"):
        assert set(stats[tier]) == set(fields["TierStats"]), tier
    assert set(stats["remote"]) == set(fields["RemoteStats"])
    histograms = [k for k, v in stats.items() if isinstance(v, dict) and "buckets" in v]
    assert len(histograms) == 6, histograms
    for name in histograms:
        h = stats[name]
        assert len(h["buckets"]) == 25 and sum(h["buckets"]) == h["count"], name
        assert h["sum_nanos"] >= 0
