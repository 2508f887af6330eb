"""Time arithmetic shared by billing: millisecond quantisation, hours and UTC months."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.billing.keys import check_idempotency_key, check_ref
from berth.billing.periods import check_hour_aligned, hour_floor, month_bounds, month_of, to_ms
from berth.errors import InvalidInput

from .factories import HOUR, T0


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (0, 0),
        (1.005, 1005),
        (0.0004, 0),
        (0.0006, 1),
        (0.0015, 2),
        (-1.5, -1500),
        (1_700_000_000.123, 1_700_000_000_123),
    ],
)
def test_to_ms_rounds_to_the_nearest_millisecond(seconds: float, ms: int) -> None:
    assert to_ms(seconds) == ms


@given(st.integers(0, 4_000_000_000_000))
def test_whole_milliseconds_survive_the_float_round_trip(ms: int) -> None:
    assert to_ms(ms / 1000) == ms


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True])
def test_to_ms_refuses_non_finite_times(bad: float) -> None:
    with pytest.raises(InvalidInput):
        to_ms(bad)


def test_hours() -> None:
    assert hour_floor(T0) == T0
    assert hour_floor(T0 + HOUR - 0.001) == T0
    assert hour_floor(T0 + HOUR - 0.0001) == T0 + HOUR  # rounds to the boundary millisecond
    assert check_hour_aligned("x", T0) == T0
    for bad in (T0 + 1, float(T0), True):
        with pytest.raises(InvalidInput):
            check_hour_aligned("x", bad)  # type: ignore[arg-type]


def test_months_are_utc_calendar_months() -> None:
    start, end = month_bounds(2024, 2)
    assert (start, end) == (1_706_745_600, 1_709_251_200)  # leap February: 29 days
    assert (end - start) // HOUR == 29 * 24
    assert month_of(start) == (2024, 2)
    assert month_of(end - 1) == (2024, 2)
    assert month_of(end) == (2024, 3)
    assert month_bounds(2023, 12)[1] == month_bounds(2024, 1)[0]
    with pytest.raises(InvalidInput):
        month_bounds(2024, 13)


@pytest.mark.parametrize("good", ["acme", "t1", "3f2c9a1e-8d7b-4c6a-9e2f-1a2b3c4d5e6f", "a.b_c-d"])
def test_ids_that_fit_in_keys(good: str) -> None:
    assert check_ref("tenant", good) == good


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "-a", "x" * 101, "é", None, "a\n"])
def test_ids_that_would_break_keys_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_ref("tenant", bad)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_id"


def test_idempotency_keys() -> None:
    assert check_idempotency_key("evt_1Nq:abc/def") == "evt_1Nq:abc/def"
    for bad in ("", "a b", "x" * 201, "ключ", "a\tb"):
        with pytest.raises(InvalidInput):
            check_idempotency_key(bad)
