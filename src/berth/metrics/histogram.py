"""Fixed log-spaced latency buckets, so histograms from any server and any bucket merge by
adding counts, and p50/p95/p99 come from the merged counts. Pure.

Bucket 0 holds everything up to 1 ms (nginx logs ``$request_time`` in whole milliseconds);
bucket ``i`` holds ``(BOUNDS_US[i-1], BOUNDS_US[i]]``, each bound 2^(1/4) times the one before
(a relative resolution of 19%); the last bucket is open-ended (over ~65 s).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

STEPS_PER_DOUBLING = 4
_FIRST_US = 1000
_DOUBLINGS = 16  # 1 ms * 2^16 = 65.5 s: nginx's proxy timeouts end well before
BOUNDS_US: tuple[int, ...] = tuple(
    round(_FIRST_US * 2 ** (i / STEPS_PER_DOUBLING))
    for i in range(_DOUBLINGS * STEPS_PER_DOUBLING + 1)
)
OVERFLOW = len(BOUNDS_US)  # index of the open-ended bucket
BUCKETS = OVERFLOW + 1

Counts = dict[int, int]  # bucket index -> count (sparse: most buckets stay empty)


def bucket_of(latency_us: int) -> int:
    """The index of the bucket that holds ``latency_us``."""
    return bisect.bisect_left(BOUNDS_US, max(0, latency_us))


def upper_bound_ms(index: int) -> float | None:
    """The largest latency bucket ``index`` holds, in ms (None: the open-ended bucket)."""
    if index >= OVERFLOW:
        return None
    return BOUNDS_US[index] / 1000.0


def lower_bound_ms(index: int) -> float:
    return 0.0 if index == 0 else BOUNDS_US[index - 1] / 1000.0


def merge(into: Counts, other: Mapping[int, int]) -> None:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count


def merged(histograms: Iterable[Mapping[int, int]]) -> Counts:
    out: Counts = {}
    for hist in histograms:
        merge(out, hist)
    return out


def quantile_ms(counts: Mapping[int, int], q: float) -> float | None:
    """The upper bound of the bucket that holds the q-quantile: the true value lies in that
    bucket, so this overstates it by at most one bucket's width. None without any count; the
    open-ended bucket reports its lower bound."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], not {q!r}")
    total = sum(counts.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            bound = upper_bound_ms(index)
            return bound if bound is not None else lower_bound_ms(index)
    return lower_bound_ms(max(counts))


def encode(counts: Mapping[int, int]) -> str:
    """``index:count`` pairs, comma separated, for one text column."""
    return ",".join(f"{i}:{c}" for i, c in sorted(counts.items()) if c)


def decode(text: str) -> Counts:
    out: Counts = {}
    if not text:
        return out
    for pair in text.split(","):
        index, _, count = pair.partition(":")
        i, c = int(index), int(count)
        if not 0 <= i < BUCKETS or c < 0:
            raise ValueError(f"bad histogram pair {pair!r}")
        out[i] = out.get(i, 0) + c
    return out
