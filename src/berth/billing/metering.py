"""Metering: from the run intervals that agents record to hourly usage records.

Only OBSERVED running time is billed. Each agent records, per instance, when it saw the container
start running and when it saw it stop (``stopped_at=None`` while it still runs). Because the
intervals carry the agents' own timestamps, it does not matter whether the controller was up while
they ran: after an outage the controller meters the missed hours from the same intervals.

Exactness: every timestamp is quantised once to integer milliseconds (:func:`periods.to_ms`), and
from then on only integers are added and split, so the usage of all hour pieces of an interval sums
to exactly its length. Overlapping or repeated intervals of one instance (an agent re-reporting
after a restart) are merged first, so no millisecond is counted twice.

Exactly once: :func:`hourly_usage` is deterministic. Only closed hours (``hour_end <= now``) are
metered, and re-running it over the same hour gives identical records with the same idempotency
key ``usage:{tenant}:{app}:{size}:{hour_start}``, so the store keeps the first and ignores the
rest. ``now`` must be a time up to which the agents' records are complete (for several agents, the
smallest "reported through" watermark), otherwise a late report could change a metered hour.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from berth.billing.keys import check_ref
from berth.billing.periods import HOUR_MS, HOUR_SECONDS, MS_PER_SECOND, check_hour_aligned, to_ms
from berth.billing.plans import InstanceSize
from berth.errors import InvalidInput


@dataclass(frozen=True)
class RunInterval:
    """One observed run of an instance, in unix seconds; ``stopped_at=None`` means still running."""

    instance_id: str
    app_id: str
    tenant_id: str
    size: InstanceSize
    started_at: float
    stopped_at: float | None = None

    def __post_init__(self) -> None:
        check_ref("instance", self.instance_id)
        check_ref("app", self.app_id)
        check_ref("tenant", self.tenant_id)
        if not isinstance(self.size, InstanceSize):
            raise InvalidInput("interval size must be an InstanceSize", code="invalid_interval")
        _check_time("started_at", self.started_at)
        if self.stopped_at is not None:
            _check_time("stopped_at", self.stopped_at)
            if self.stopped_at < self.started_at:
                raise InvalidInput(
                    f"instance {self.instance_id} stopped before it started",
                    code="invalid_interval",
                )


@dataclass(frozen=True)
class UsageRecord:
    """Instance-milliseconds of one size that one app of one tenant ran within one UTC hour."""

    tenant_id: str
    app_id: str
    size: InstanceSize
    hour_start: int
    instance_ms: int

    @property
    def key(self) -> str:
        """The idempotency key: one record per tenant, app, size and hour, ever."""
        return usage_key(self.tenant_id, self.app_id, self.size, self.hour_start)

    @property
    def instance_seconds(self) -> Fraction:
        return Fraction(self.instance_ms, MS_PER_SECOND)

    @property
    def instance_hours(self) -> Fraction:
        return Fraction(self.instance_ms, HOUR_MS)


def usage_key(tenant_id: str, app_id: str, size: InstanceSize, hour_start: int) -> str:
    return f"usage:{tenant_id}:{app_id}:{size}:{hour_start}"


def closed_window(metered_until: int, now: float) -> tuple[int, int]:
    """The hours to meter next: from the cursor ``metered_until`` to the last closed hour boundary.

    Empty (``start == end``) when no new hour has closed; after an outage it spans all missed hours.
    """
    check_hour_aligned("metered_until", metered_until)
    last_boundary = (to_ms(now) // HOUR_MS) * HOUR_SECONDS
    return metered_until, max(metered_until, last_boundary)


def hourly_usage(
    intervals: Iterable[RunInterval], window_start: int, window_end: int, now: float
) -> list[UsageRecord]:
    """Usage records for every closed hour in ``[window_start, window_end)``.

    The window must be hour-aligned and closed (``window_end <= now``). Still-running intervals, and
    intervals whose recorded stop lies after ``now``, are cut at ``now``. Records are sorted by
    hour, tenant, app and size; hours in which nothing ran yield no record.
    """
    check_hour_aligned("window_start", window_start)
    check_hour_aligned("window_end", window_end)
    now_ms = to_ms(now)
    if window_end < window_start:
        raise InvalidInput("window_end is before window_start", code="invalid_window")
    if window_end * MS_PER_SECOND > now_ms:
        raise InvalidInput(
            "the window includes an hour that has not closed yet", code="invalid_window"
        )
    owners, spans = _spans_by_instance(intervals, now_ms)
    totals: dict[tuple[str, str, InstanceSize, int], int] = defaultdict(int)
    for instance_id, instance_spans in spans.items():
        tenant_id, app_id, size = owners[instance_id]
        for start, end in _merge(instance_spans):
            clipped = (
                max(start, window_start * MS_PER_SECOND),
                min(end, window_end * MS_PER_SECOND),
            )
            for hour_start, ms in _split_by_hour(*clipped):
                totals[(tenant_id, app_id, size, hour_start)] += ms
    return [
        UsageRecord(tenant_id, app_id, size, hour_start, ms)
        for (tenant_id, app_id, size, hour_start), ms in sorted(totals.items(), key=_record_order)
    ]


_Owner = tuple[str, str, InstanceSize]
_Span = tuple[int, int]


def _spans_by_instance(
    intervals: Iterable[RunInterval], now_ms: int
) -> tuple[dict[str, _Owner], dict[str, list[_Span]]]:
    """Millisecond spans per instance id, cut at ``now``; an instance keeps one owner and size."""
    owners: dict[str, _Owner] = {}
    spans: dict[str, list[_Span]] = defaultdict(list)
    for interval in intervals:
        owner = (interval.tenant_id, interval.app_id, interval.size)
        if owners.setdefault(interval.instance_id, owner) != owner:
            raise InvalidInput(
                f"instance {interval.instance_id} is recorded with two owners or sizes",
                code="invalid_interval",
            )
        start = to_ms(interval.started_at)
        stop = now_ms if interval.stopped_at is None else min(to_ms(interval.stopped_at), now_ms)
        if start < stop:
            spans[interval.instance_id].append((start, stop))
    return owners, spans


def _merge(spans: list[_Span]) -> list[_Span]:
    """Union of half-open spans: overlapping or touching spans become one."""
    merged: list[_Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _split_by_hour(start_ms: int, end_ms: int) -> Iterable[tuple[int, int]]:
    """(hour_start in seconds, milliseconds) per UTC hour that ``[start_ms, end_ms)`` touches."""
    cursor = start_ms
    while cursor < end_ms:
        hour_index = cursor // HOUR_MS
        piece_end = min(end_ms, (hour_index + 1) * HOUR_MS)
        yield hour_index * HOUR_SECONDS, piece_end - cursor
        cursor = piece_end


def _record_order(
    item: tuple[tuple[str, str, InstanceSize, int], int],
) -> tuple[int, str, str, InstanceSize]:
    (tenant_id, app_id, size, hour_start), _ = item
    return hour_start, tenant_id, app_id, size


def _check_time(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(
            f"{name} must be a finite unix time, got {value!r}", code="invalid_interval"
        )
