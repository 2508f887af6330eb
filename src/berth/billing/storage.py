"""Managed databases' storage, billed per closed UTC hour (pure).

The statistic. A database is billed, for the hour ``[h, h+3600)``, for the LARGEST size measured
in that hour; when no measurement was taken in it (a server that did not answer, a pass that
did not run), for the last size measured before it. Hours before its first measurement are not
billed (nothing is known of them), nor hours after the database was deleted (``until``). The
largest rather than the mean: what a database held at its peak is what the server had to keep
room for, and a tenant cannot lower its bill by filling and emptying between two passes.

The price is per GiB-month (``2**30`` bytes held for ``HOURS_PER_MONTH`` = 730 hours, a year
of 8,760 hours over 12), in the plan currency's minor units. An hour's cost is an exact
``Fraction``; as the instance-hour rating does (``berth.billing.rating``), each database's
month-to-date cost is rounded, and the charge of an hour is the difference between the rounded
cost after and before it, so a month's charges add up to the rounded exact cost of the month
(within half a minor unit) however many hours it has. Each charge is one ledger transaction,
keyed ``storage:{tenant}:{database}:{hour}``: posted once, whatever reruns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from berth.billing.keys import check_ref
from berth.billing.ledger import Transaction, charge
from berth.billing.money import Currency
from berth.billing.periods import HOUR_SECONDS, check_hour_aligned
from berth.billing.rating import round_minor

GIB = 2**30
HOURS_PER_MONTH = 730
STORAGE_KEY_PREFIX = "storage:"


@dataclass(frozen=True)
class Measurement:
    measured_at: float
    bytes_used: int


def bytes_for_hour(
    measurements: Iterable[Measurement], hour_start: int, *, until: float | None = None
) -> int | None:
    """The bytes billed for ``[hour_start, hour_start + 3600)``, or ``None`` for nothing.

    ``until``: when the database stopped being billed (its deletion); an hour starting at or
    after it is not billed."""
    check_hour_aligned("hour_start", hour_start)
    if until is not None and hour_start >= until:
        return None
    end = hour_start + HOUR_SECONDS
    inside: int | None = None
    before: Measurement | None = None
    for m in measurements:
        if hour_start <= m.measured_at < end:
            inside = m.bytes_used if inside is None else max(inside, m.bytes_used)
        elif m.measured_at < hour_start and (before is None or m.measured_at > before.measured_at):
            before = m
    if inside is not None:
        return max(0, inside)
    return max(0, before.bytes_used) if before is not None else None


def bytes_by_hour(
    measurements: Iterable[Measurement], start: int, end: int, *, until: float | None = None
) -> dict[int, int]:
    """``bytes_for_hour`` for every hour of ``[start, end)`` that is billed, in one sweep of
    the measurements (a pass catching up on weeks of hours reads each measurement once)."""
    check_hour_aligned("start", start)
    check_hour_aligned("end", end)
    largest: dict[int, int] = {}
    last_before: Measurement | None = None
    for m in measurements:
        if m.measured_at < start:
            if last_before is None or m.measured_at > last_before.measured_at:
                last_before = m
        elif m.measured_at < end:
            hour = int(m.measured_at) - int(m.measured_at) % HOUR_SECONDS
            largest[hour] = max(largest.get(hour, m.bytes_used), m.bytes_used)
    last_in: dict[int, Measurement] = {}
    for m in measurements:
        if start <= m.measured_at < end:
            hour = int(m.measured_at) - int(m.measured_at) % HOUR_SECONDS
            seen = last_in.get(hour)
            if seen is None or m.measured_at > seen.measured_at:
                last_in[hour] = m
    out: dict[int, int] = {}
    carried = last_before.bytes_used if last_before is not None else None
    for hour in range(start, end, HOUR_SECONDS):
        if until is not None and hour >= until:
            break
        if hour in largest:
            out[hour] = max(0, largest[hour])
            carried = last_in[hour].bytes_used
        elif carried is not None:
            out[hour] = max(0, carried)
    return out


def cost(price_per_gib_month_minor: int, byte_hours: int) -> Fraction:
    """Exact cost of ``byte_hours`` (bytes held times hours) at the price per GiB-month."""
    return Fraction(byte_hours * price_per_gib_month_minor, GIB * HOURS_PER_MONTH)


def hour_amount(price_per_gib_month_minor: int, byte_hours_before: int, bytes_billed: int) -> int:
    """The integer charge of one hour holding ``bytes_billed``, given the database's byte-hours
    earlier in the same UTC month (the telescoping difference of rounded month-to-date costs)."""
    after = byte_hours_before + bytes_billed
    return round_minor(cost(price_per_gib_month_minor, after)) - round_minor(
        cost(price_per_gib_month_minor, byte_hours_before)
    )


def storage_key(tenant_id: str, database_id: str, hour_start: int) -> str:
    check_ref("tenant", tenant_id)
    check_ref("database", database_id)
    check_hour_aligned("hour_start", hour_start)
    return f"{STORAGE_KEY_PREFIX}{tenant_id}:{database_id}:{hour_start}"


def is_storage_key(key: str) -> bool:
    return key.startswith(STORAGE_KEY_PREFIX)


def storage_transaction(
    tenant_id: str,
    database_id: str,
    database_name: str,
    hour_start: int,
    amount_minor: int,
    at: float,
    *,
    currency: Currency,
) -> Transaction | None:
    """The ledger charge of one database-hour, or ``None`` when it is zero."""
    key = storage_key(tenant_id, database_id, hour_start)
    if amount_minor == 0:
        return None
    hour = datetime.fromtimestamp(hour_start, tz=UTC).strftime("%Y-%m-%d %H:00")
    return charge(
        tenant_id,
        amount_minor,
        key,
        at,
        f"database storage {hour} UTC, {database_name}",
        currency=currency,
        period_start=hour_start,
    )


@dataclass(frozen=True)
class StorageLine:
    """One database on an invoice: the GiB-hours it was billed for and what it cost."""

    database_id: str
    database_name: str
    byte_hours: int
    unit_price_minor: int  # per GiB-month
    amount_minor: int

    @property
    def gib_hours(self) -> Fraction:
        return Fraction(self.byte_hours, GIB)


def storage_lines(rows: Iterable[tuple[str, str, int, int, int]]) -> list[StorageLine]:
    """Invoice lines from billed hours ``(database id, name, bytes billed, price, amount)`` in
    time order: one per database, its byte-hours and amounts summed (what the ledger took), at
    the price of its last hour; sorted by name."""
    totals: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for database_id, name, bytes_billed, price, amount in rows:
        entry = totals.setdefault(database_id, [0, 0, 0])
        entry[0] += bytes_billed
        entry[1] = price
        entry[2] += amount
        names[database_id] = name
    return sorted(
        (StorageLine(db, names[db], t[0], t[1], t[2]) for db, t in totals.items()),
        key=lambda line: (line.database_name, line.database_id),
    )
