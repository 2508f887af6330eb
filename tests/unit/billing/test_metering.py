"""Metering: observed run intervals split exactly into hourly usage records."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.billing.metering import (
    RunInterval,
    UsageRecord,
    closed_window,
    hourly_usage,
)
from berth.billing.periods import HOUR_MS
from berth.errors import InvalidInput

from .factories import HOUR, LARGE, MEDIUM, SMALL, T0, run


def ms_by_hour(records: list[UsageRecord]) -> dict[int, int]:
    return {r.hour_start - T0: r.instance_ms for r in records}


def test_a_run_inside_one_hour_is_one_record() -> None:
    records = hourly_usage([run(T0 + 600, T0 + 1500)], T0, T0 + HOUR, now=T0 + HOUR)
    assert records == [UsageRecord("acme", "web", SMALL, T0, 900_000)]
    assert records[0].instance_seconds == 900
    assert records[0].instance_hours == Fraction(1, 4)


def test_a_run_is_split_on_hour_boundaries() -> None:
    interval = run(T0 + 1800, T0 + 2 * HOUR + 900)  # 00:30 -> 02:15
    records = hourly_usage([interval], T0, T0 + 3 * HOUR, now=T0 + 3 * HOUR)
    assert ms_by_hour(records) == {0: 1_800_000, HOUR: 3_600_000, 2 * HOUR: 900_000}


def test_a_run_from_boundary_to_boundary_fills_exactly_one_hour() -> None:
    records = hourly_usage([run(T0 + HOUR, T0 + 2 * HOUR)], T0, T0 + 3 * HOUR, now=T0 + 3 * HOUR)
    assert ms_by_hour(records) == {HOUR: HOUR_MS}


def test_only_the_window_is_metered() -> None:
    interval = run(T0, T0 + 5 * HOUR)
    records = hourly_usage([interval], T0 + HOUR, T0 + 3 * HOUR, now=T0 + 6 * HOUR)
    assert ms_by_hour(records) == {HOUR: HOUR_MS, 2 * HOUR: HOUR_MS}


def test_an_empty_window_yields_nothing() -> None:
    assert hourly_usage([run(T0, None)], T0 + HOUR, T0 + HOUR, now=T0 + 2 * HOUR) == []


def test_a_still_running_instance_is_cut_at_now() -> None:
    records = hourly_usage([run(T0 + 1800, None)], T0, T0 + HOUR, now=T0 + HOUR + 10)
    assert ms_by_hour(records) == {0: 1_800_000}


def test_a_stop_recorded_after_now_is_cut_at_now() -> None:
    # An agent clock slightly ahead of the controller's: nothing after ``now`` is counted.
    records = hourly_usage([run(T0, T0 + HOUR + 30)], T0, T0 + HOUR, now=T0 + HOUR)
    assert ms_by_hour(records) == {0: HOUR_MS}


def test_a_run_starting_after_now_is_ignored() -> None:
    assert hourly_usage([run(T0 + 2 * HOUR, None)], T0, T0 + HOUR, now=T0 + HOUR + 5) == []


def test_overlapping_runs_of_one_instance_are_counted_once() -> None:
    intervals = [
        run(T0, T0 + 2 * HOUR),
        run(T0 + HOUR, T0 + 3 * HOUR),  # overlaps the first
        run(T0 + 1800, T0 + 2700),  # inside the first
        run(T0, T0 + 2 * HOUR),  # re-reported by a restarted agent
    ]
    records = hourly_usage(intervals, T0, T0 + 4 * HOUR, now=T0 + 4 * HOUR)
    assert ms_by_hour(records) == {0: HOUR_MS, HOUR: HOUR_MS, 2 * HOUR: HOUR_MS}


def test_two_instances_of_one_app_and_size_add_up() -> None:
    intervals = [run(T0, T0 + HOUR, instance="i1"), run(T0, T0 + HOUR, instance="i2")]
    records = hourly_usage(intervals, T0, T0 + HOUR, now=T0 + HOUR)
    assert records == [UsageRecord("acme", "web", SMALL, T0, 2 * HOUR_MS)]


def test_records_are_kept_apart_by_tenant_app_and_size_and_sorted() -> None:
    intervals = [
        run(T0 + HOUR, T0 + 2 * HOUR, instance="i4", tenant="zeta", app="api", size=SMALL),
        run(T0, T0 + 2 * HOUR, instance="i1", app="web", size=MEDIUM),
        run(T0, T0 + HOUR, instance="i2", app="web", size=SMALL),
        run(T0, T0 + HOUR, instance="i3", app="api", size=LARGE),
    ]
    records = hourly_usage(intervals, T0, T0 + 2 * HOUR, now=T0 + 2 * HOUR)
    assert [(r.hour_start - T0, r.tenant_id, r.app_id, str(r.size)) for r in records] == [
        (0, "acme", "api", "2048M-2cpu"),
        (0, "acme", "web", "256M-0.5cpu"),
        (0, "acme", "web", "512M-1cpu"),
        (HOUR, "acme", "web", "512M-1cpu"),
        (HOUR, "zeta", "api", "256M-0.5cpu"),
    ]


def test_the_idempotency_key_names_tenant_app_size_and_hour() -> None:
    record = UsageRecord("acme", "web", SMALL, T0, 1)
    assert record.key == f"usage:acme:web:256M-0.5cpu:{T0}"


def test_times_are_quantised_to_milliseconds() -> None:
    # 0.0004 s rounds to 0 ms; 0.0016 s to 2 ms; the split stays in whole milliseconds.
    records = hourly_usage([run(T0 + 0.0004, T0 + 10.0016)], T0, T0 + HOUR, now=T0 + HOUR)
    assert ms_by_hour(records) == {0: 10_002}


def test_an_instance_cannot_change_owner_or_size() -> None:
    intervals = [run(T0, T0 + 60, size=SMALL), run(T0 + 120, T0 + 180, size=MEDIUM)]
    with pytest.raises(InvalidInput, match="two owners or sizes"):
        hourly_usage(intervals, T0, T0 + HOUR, now=T0 + HOUR)


@pytest.mark.parametrize(
    ("window_start", "window_end", "now", "message"),
    [
        (T0, T0 + HOUR, T0 + HOUR - 1, "not closed"),
        (T0 + 1, T0 + HOUR, T0 + HOUR, "hour boundary"),
        (T0, T0 + HOUR + 1, T0 + 2 * HOUR, "hour boundary"),
        (T0 + HOUR, T0, T0 + HOUR, "before"),
    ],
)
def test_invalid_windows_are_refused(
    window_start: int, window_end: int, now: float, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        hourly_usage([], window_start, window_end, now)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"started_at": T0 + 10, "stopped_at": T0},
        {"started_at": float("nan"), "stopped_at": None},
        {"started_at": T0, "stopped_at": float("inf")},
        {"started_at": T0, "stopped_at": None, "instance_id": "a:b"},
        {"started_at": T0, "stopped_at": None, "tenant_id": ""},
        {"started_at": T0, "stopped_at": None, "app_id": "web app"},
    ],
)
def test_invalid_intervals_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "instance_id": "i1",
        "app_id": "web",
        "tenant_id": "acme",
        "size": SMALL,
    }
    fields.update(kwargs)
    with pytest.raises(InvalidInput):
        RunInterval(**fields)  # type: ignore[arg-type]


def test_closed_window_runs_from_the_cursor_to_the_last_closed_hour() -> None:
    assert closed_window(T0, T0 + 3 * HOUR + 59) == (T0, T0 + 3 * HOUR)
    assert closed_window(T0, T0 + 3 * HOUR) == (T0, T0 + 3 * HOUR)
    assert closed_window(T0, T0 + 10) == (T0, T0)  # nothing has closed yet
    assert closed_window(T0 + HOUR, T0 + 10) == (T0 + HOUR, T0 + HOUR)  # clock went back
    with pytest.raises(InvalidInput):
        closed_window(T0 + 1, T0 + HOUR)


# --- properties --------------------------------------------------------------------------------

SPAN_MS = 6 * HOUR_MS


@st.composite
def intervals_ms(draw: st.DrawFn) -> list[tuple[str, int, int | None]]:
    """(instance, start ms, stop ms or None) relative to T0, over six hours, on whole ms."""
    out: list[tuple[str, int, int | None]] = []
    for _ in range(draw(st.integers(0, 12))):
        instance = draw(st.sampled_from(["i1", "i2", "i3", "i4"]))
        start = draw(st.integers(0, SPAN_MS))
        stop = draw(st.none() | st.integers(start, SPAN_MS + HOUR_MS))
        out.append((instance, start, stop))
    return out


def to_intervals(raw: list[tuple[str, int, int | None]]) -> list[RunInterval]:
    return [
        run(T0 + start / 1000, None if stop is None else T0 + stop / 1000, instance=instance)
        for instance, start, stop in raw
    ]


def union_length(spans: list[tuple[int, int]]) -> int:
    """Length of a union of half-open spans, by a sweep over sorted endpoints."""
    events = sorted([(s, 1) for s, e in spans if s < e] + [(e, -1) for s, e in spans if s < e])
    covered, depth, last = 0, 0, 0
    for at, change in events:
        if depth > 0:
            covered += at - last
        depth, last = depth + change, at
    return covered


@settings(max_examples=300)
@given(intervals_ms(), st.integers(0, SPAN_MS + HOUR_MS))
def test_usage_adds_up_to_the_union_of_runs(
    raw: list[tuple[str, int, int | None]], now_ms: int
) -> None:
    now = T0 + now_ms / 1000
    _, end = closed_window(T0, now)
    records = hourly_usage(to_intervals(raw), T0, end, now)
    end_ms = (end - T0) * 1000
    expected = 0
    for instance in {i for i, _, _ in raw}:
        spans = [
            (start, min(end_ms, now_ms if stop is None else stop))
            for i, start, stop in raw
            if i == instance
        ]
        expected += union_length(spans)
    assert sum(r.instance_ms for r in records) == expected
    assert all(0 < r.instance_ms <= 4 * HOUR_MS for r in records)
    assert len({r.key for r in records}) == len(records)
    assert all(T0 <= r.hour_start < end for r in records)


@settings(max_examples=200)
@given(intervals_ms(), st.integers(0, 6), st.integers(0, 6))
def test_metering_in_batches_equals_metering_at_once(
    raw: list[tuple[str, int, int | None]], a: int, b: int
) -> None:
    intervals = to_intervals(raw)
    cut = T0 + min(a, b) * HOUR
    end = T0 + max(a, b) * HOUR
    now = T0 + 7 * HOUR
    whole = hourly_usage(intervals, T0, end, now)
    batched = hourly_usage(intervals, T0, cut, now) + hourly_usage(intervals, cut, end, now)
    assert batched == whole


@settings(max_examples=200)
@given(intervals_ms(), st.integers(1, 6), st.integers(0, 3 * HOUR_MS))
def test_a_closed_hour_never_changes_when_metered_again_later(
    raw: list[tuple[str, int, int | None]], closed_hours: int, later_ms: int
) -> None:
    """What agents knew at ``now`` and what they know later give identical closed hours."""
    end = T0 + closed_hours * HOUR
    first_now_ms = closed_hours * HOUR_MS
    later_now_ms = first_now_ms + later_ms

    def seen_at(now_ms: int) -> list[RunInterval]:
        visible = [
            (i, s, stop if stop is not None and stop <= now_ms else None)
            for i, s, stop in raw
            if s <= now_ms
        ]
        return to_intervals(visible)

    first = hourly_usage(seen_at(first_now_ms), T0, end, T0 + first_now_ms / 1000)
    again = hourly_usage(seen_at(later_now_ms), T0, end, T0 + later_now_ms / 1000)
    assert again == first
    assert [r.key for r in again] == [r.key for r in first]
