"""Latency histograms: fixed buckets, merged by adding, quantiles within one bucket."""

from __future__ import annotations

import random

import pytest

from berth.metrics import histogram


def test_bucket_edges_hold_what_they_say() -> None:
    assert histogram.bucket_of(0) == 0
    assert histogram.bucket_of(1000) == 0  # "0.001" s: the first bucket
    assert histogram.bucket_of(1001) == 1
    for i, bound in enumerate(histogram.BOUNDS_US):
        assert histogram.bucket_of(bound) == i
        assert histogram.bucket_of(bound + 1) == i + 1
    assert histogram.bucket_of(10**9) == histogram.OVERFLOW
    ratios = [b / a for a, b in zip(histogram.BOUNDS_US, histogram.BOUNDS_US[1:], strict=False)]
    assert max(ratios) < 1.2  # a 19% resolution everywhere


def test_quantiles_from_merged_histograms_bound_the_true_value() -> None:
    rng = random.Random(7)
    latencies = [int(rng.lognormvariate(9, 1.2)) for _ in range(5000)]  # ~8 ms median
    parts: list[histogram.Counts] = [{}, {}, {}]
    for n, value in enumerate(latencies):
        index = histogram.bucket_of(value)
        parts[n % 3][index] = parts[n % 3].get(index, 0) + 1
    merged = histogram.merged(parts)
    ordered = sorted(latencies)
    for q in (0.5, 0.95, 0.99):
        true_ms = ordered[int(q * len(ordered)) - 1] / 1000
        got = histogram.quantile_ms(merged, q)
        assert got is not None
        # The reported bound is the top of the bucket holding the true value.
        assert true_ms <= got < true_ms * 1.2 + 1e-9, (q, true_ms, got)


def test_encode_decode_round_trip_and_refusals() -> None:
    counts = {0: 3, 7: 1, histogram.OVERFLOW: 2}
    assert histogram.decode(histogram.encode(counts)) == counts
    assert histogram.decode("") == {}
    assert histogram.quantile_ms({}, 0.5) is None
    assert histogram.quantile_ms({histogram.OVERFLOW: 1}, 0.99) == histogram.BOUNDS_US[-1] / 1000
    for bad in ("x:1", f"{histogram.BUCKETS}:1", "3:-1"):
        with pytest.raises(ValueError):
            histogram.decode(bad)
    with pytest.raises(ValueError):
        histogram.quantile_ms(counts, 0.0)
