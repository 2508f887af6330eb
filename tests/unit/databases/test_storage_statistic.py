"""The storage bill's statistic and arithmetic (pure): which size an hour is billed for, and
that a month's hourly charges add up to the rounded exact cost of the month."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.billing.money import get_currency
from berth.billing.storage import (
    GIB,
    HOURS_PER_MONTH,
    Measurement,
    bytes_by_hour,
    bytes_for_hour,
    cost,
    hour_amount,
    is_storage_key,
    storage_key,
    storage_lines,
    storage_transaction,
)
from berth.errors import InvalidInput

H = 1_800_000_000 - 1_800_000_000 % 3600


def m(at: float, size: int) -> Measurement:
    return Measurement(at, size)


def test_the_largest_measurement_in_the_hour() -> None:
    ms = [m(H - 10, 999), m(H + 5, 100), m(H + 1800, 300), m(H + 3599, 200), m(H + 3600, 5000)]
    assert bytes_for_hour(ms, H) == 300


def test_an_hour_without_measurement_takes_the_last_one_before_it() -> None:
    ms = [m(H - 7200, 50), m(H - 60, 70), m(H + 3600, 5000)]
    assert bytes_for_hour(ms, H) == 70


def test_nothing_known_before_the_first_measurement_is_not_billed() -> None:
    assert bytes_for_hour([m(H + 3600, 10)], H) is None
    assert bytes_for_hour([], H) is None


def test_no_hour_after_the_deletion() -> None:
    ms = [m(H - 60, 70)]
    assert bytes_for_hour(ms, H, until=H) is None
    assert bytes_for_hour(ms, H, until=H + 1) == 70  # deleted during the hour: billed for it


def test_hours_are_aligned() -> None:
    with pytest.raises(InvalidInput):
        bytes_for_hour([], H + 1)


def test_one_gib_for_a_month_costs_the_price() -> None:
    assert cost(10, GIB * HOURS_PER_MONTH) == 10
    assert cost(7, GIB) == Fraction(7, HOURS_PER_MONTH)


@given(
    st.integers(0, 10_000),
    st.lists(st.integers(0, 50 * GIB), min_size=1, max_size=200),
)
def test_hourly_charges_telescope_to_the_rounded_month(price: int, sizes: list[int]) -> None:
    before, total = 0, 0
    for size in sizes:
        amount = hour_amount(price, before, size)
        assert amount >= 0
        total += amount
        before += size
    assert total == round(cost(price, sum(sizes)))
    assert abs(total - cost(price, sum(sizes))) <= Fraction(1, 2)


def test_keys_and_transactions() -> None:
    key = storage_key("t1", "d1", H)
    assert key == f"storage:t1:d1:{H}" and is_storage_key(key)
    assert not is_storage_key(f"charge:t1:{H}")
    with pytest.raises(InvalidInput):
        storage_key("t:1", "d1", H)  # a ':' would let two keys collide
    eur = get_currency("EUR")
    assert storage_transaction("t1", "d1", "main", H, 0, H + 4000, currency=eur) is None
    tx = storage_transaction("t1", "d1", "main", H, 3, H + 4000, currency=eur)
    assert tx is not None and tx.key == key and tx.kind == "charge"
    assert tx.period_start == H and tx.amount_on("tenant:t1:balance") == -3


def test_invoice_lines_per_database() -> None:
    rows = [("d2", "b", GIB, 10, 1), ("d1", "a", 2 * GIB, 10, 2), ("d2", "b", GIB, 12, 3)]
    lines = storage_lines(rows)
    assert [
        (ln.database_name, ln.gib_hours, ln.unit_price_minor, ln.amount_minor) for ln in lines
    ] == [
        ("a", 2, 10, 2),
        ("b", 2, 12, 4),
    ]


@given(
    st.lists(st.tuples(st.integers(-3 * 3600, 6 * 3600), st.integers(-5, 10**9)), max_size=60),
    st.one_of(st.none(), st.integers(-3600, 7 * 3600)),
)
def test_the_sweep_bills_every_hour_as_the_one_hour_rule(
    points: list[tuple[int, int]], until_offset: int | None
) -> None:
    ms = [m(H + offset + 0.5, size) for offset, size in points]
    until = None if until_offset is None else H + until_offset
    swept = bytes_by_hour(ms, H, H + 4 * 3600, until=until)
    one_by_one = {
        hour: bytes_for_hour(ms, hour, until=until) for hour in range(H, H + 4 * 3600, 3600)
    }
    assert swept == {h: b for h, b in one_by_one.items() if b is not None}
