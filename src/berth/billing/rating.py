"""Rating: hourly usage records -> hourly charges -> monthly invoices, exactly.

Exact arithmetic. Usage is integer instance-milliseconds and prices are integer minor units, so the
cost of any usage is an exact ``Fraction``. Nothing is rounded until an integer amount must be
posted to the ledger.

No drift. Rounding each hour on its own would lose or invent up to half a minor unit per tenant per
hour (360 units a month). Instead a tenant's month-to-date consumption is carried along as two
integers (:class:`ResourceUsage`: MB-milliseconds and milli-CPU-milliseconds), and the charge for
an hour is the difference between the ROUNDED month-to-date cost after and before that hour::

    charge(h) = round(cost(usage through h)) - round(cost(usage before h))

The sum telescopes: the charges of a month add up to ``round(cost(whole month))``, within half a
minor unit of the exact cost, however many hours there are. Rounding is round-half-to-even
(banker's rounding, Python's ``round`` of a ``Fraction``), so it has no bias either way. The cost
is non-decreasing in usage, so no hourly charge is ever negative. Included resources
(``Plan.included_gb_hours`` and ``included_cpu_hours`` per UTC calendar month) are subtracted from
the month-to-date totals before pricing, so they are used up first, hour by hour. The month resets
at 00:00 UTC on the 1st.

Breakdown. A charge is one ledger transaction per tenant-hour (key ``charge:{tenant}:{hour}``).
Its lines per app and size share its integer amount in proportion to their list price, by the
largest-remainder method, so the lines always add up to the charge exactly. An invoice does the
same for the month: its total is the sum of the month's charge transactions (what the ledger really
took), and that total is shared over app and size lines by their list price for the month.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from berth.billing.keys import check_ref
from berth.billing.ledger import Transaction, charge, tenant_account
from berth.billing.metering import UsageRecord
from berth.billing.money import Currency
from berth.billing.periods import HOUR_MS, check_hour_aligned, month_bounds, month_of
from berth.billing.plans import (
    MB_PER_GB,
    MILLI_PER_CPU,
    InstanceSize,
    Plan,
    list_cost,
    price_per_hour,
)
from berth.errors import Conflict, InvalidInput


def round_minor(amount: Fraction) -> int:
    """Round an exact amount to whole minor units, half to even (the only rounding in billing)."""
    return round(amount)


@dataclass(frozen=True)
class ResourceUsage:
    """A tenant's consumption so far this month, as exact integers."""

    memory_mb_ms: int = 0
    cpu_milli_ms: int = 0

    def plus(self, records: Iterable[UsageRecord]) -> ResourceUsage:
        memory, cpu = self.memory_mb_ms, self.cpu_milli_ms
        for record in records:
            memory += record.size.memory_mb * record.instance_ms
            cpu += record.size.cpus_milli * record.instance_ms
        return ResourceUsage(memory, cpu)


def month_cost(plan: Plan, usage: ResourceUsage) -> Fraction:
    """Exact cost of a month's consumption after the plan's included resources."""
    gb_hours = Fraction(usage.memory_mb_ms, MB_PER_GB * HOUR_MS)
    cpu_hours = Fraction(usage.cpu_milli_ms, MILLI_PER_CPU * HOUR_MS)
    billable_gb_hours = max(Fraction(0), gb_hours - plan.included_gb_hours)
    billable_cpu_hours = max(Fraction(0), cpu_hours - plan.included_cpu_hours)
    return (
        billable_gb_hours * plan.price_per_gb_hour_minor
        + billable_cpu_hours * plan.price_per_cpu_hour_minor
    )


@dataclass(frozen=True)
class ChargeLine:
    """One app and size within an hourly charge: its usage, list price and share of the charge."""

    app_id: str
    size: InstanceSize
    instance_ms: int
    unit_price_minor: Fraction  # exact list price per instance-hour
    amount_minor: int


@dataclass(frozen=True)
class HourCharge:
    """What one tenant owes for one closed hour. ``usage_after`` carries into the next hour."""

    tenant_id: str
    hour_start: int
    plan_name: str
    currency: Currency
    amount_minor: int
    lines: tuple[ChargeLine, ...]
    usage_before: ResourceUsage
    usage_after: ResourceUsage

    @property
    def key(self) -> str:
        return charge_key(self.tenant_id, self.hour_start)


def charge_key(tenant_id: str, hour_start: int) -> str:
    return f"charge:{tenant_id}:{hour_start}"


def charges_for_hour(
    plan: Plan,
    tenant_id: str,
    hour_start: int,
    records: Iterable[UsageRecord],
    usage_before: ResourceUsage,
) -> HourCharge:
    """Rate one tenant-hour. ``usage_before`` is the tenant's usage earlier in the same month.

    ``records`` must all be this tenant's and this hour's (see :func:`month_to_date` to rebuild
    ``usage_before`` from stored records).
    """
    check_ref("tenant", tenant_id)
    check_hour_aligned("hour_start", hour_start)
    hour_records = list(records)
    for record in hour_records:
        if record.tenant_id != tenant_id or record.hour_start != hour_start:
            raise InvalidInput(
                f"usage record {record.key} is not for tenant {tenant_id} at {hour_start}",
                code="invalid_usage",
            )
    usage_after = usage_before.plus(hour_records)
    amount = round_minor(month_cost(plan, usage_after)) - round_minor(
        month_cost(plan, usage_before)
    )
    lines = _lines(plan, _instance_ms_by_line(hour_records), amount)
    return HourCharge(
        tenant_id=tenant_id,
        hour_start=hour_start,
        plan_name=plan.name,
        currency=plan.currency,
        amount_minor=amount,
        lines=tuple(ChargeLine(*line) for line in lines),
        usage_before=usage_before,
        usage_after=usage_after,
    )


def month_to_date(records: Iterable[UsageRecord], tenant_id: str, hour_start: int) -> ResourceUsage:
    """A tenant's usage from the start of ``hour_start``'s UTC month up to (excluding) that hour.

    This rebuilds ``usage_before`` for :func:`charges_for_hour` from stored records after a restart.
    """
    month_start, _ = month_bounds(*month_of(hour_start))
    return ResourceUsage().plus(
        r for r in records if r.tenant_id == tenant_id and month_start <= r.hour_start < hour_start
    )


def rate_hours(plan: Plan, tenant_id: str, records: Iterable[UsageRecord]) -> list[HourCharge]:
    """Rate every hour that has records (all of ``tenant_id``), in order, carrying usage and
    resetting it each UTC month. For back-fills and tests; controllers use charges_for_hour."""
    by_hour: dict[int, list[UsageRecord]] = defaultdict(list)
    for record in records:
        by_hour[record.hour_start].append(record)
    charges: list[HourCharge] = []
    usage, month = ResourceUsage(), (0, 0)
    for hour_start in sorted(by_hour):
        if month_of(hour_start) != month:
            usage, month = ResourceUsage(), month_of(hour_start)
        hour_charge = charges_for_hour(plan, tenant_id, hour_start, by_hour[hour_start], usage)
        charges.append(hour_charge)
        usage = hour_charge.usage_after
    return charges


def charge_transaction(hour_charge: HourCharge, at: float) -> Transaction | None:
    """The ledger transaction for an hourly charge posted at ``at``, or ``None`` when it is zero.

    Rating the same hour again gives the same content under the same key, so posting it twice
    (after a crash between posting and moving the cursor) is a no-op in the ledger.
    """
    if hour_charge.amount_minor == 0:
        return None
    hour = datetime.fromtimestamp(hour_charge.hour_start, tz=UTC).strftime("%Y-%m-%d %H:00")
    return charge(
        hour_charge.tenant_id,
        hour_charge.amount_minor,
        hour_charge.key,
        at,
        f"usage {hour} UTC, plan {hour_charge.plan_name}",
        currency=hour_charge.currency,
        period_start=hour_charge.hour_start,
    )


@dataclass(frozen=True)
class InvoiceLine:
    """One app and size on an invoice: instance-hours, list unit price and amount billed."""

    app_id: str
    size: InstanceSize
    instance_ms: int
    unit_price_minor: Fraction  # exact list price per instance-hour
    amount_minor: int

    @property
    def instance_hours(self) -> Fraction:
        return Fraction(self.instance_ms, HOUR_MS)


@dataclass(frozen=True)
class Invoice:
    """A tenant's month. ``total_minor`` is exactly the sum of the month's charge transactions."""

    tenant_id: str
    year: int
    month: int
    currency: Currency
    lines: tuple[InvoiceLine, ...]
    total_minor: int
    charge_keys: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"invoice:{self.tenant_id}:{self.year:04d}-{self.month:02d}"


def invoice_for_month(
    plan: Plan,
    tenant_id: str,
    year: int,
    month: int,
    usage_records: Iterable[UsageRecord],
    charges: Iterable[Transaction],
) -> Invoice:
    """The invoice of one UTC calendar month.

    ``charges`` may be the whole ledger: only this tenant's ``charge`` transactions whose period
    (``period_start``, else ``at``) falls in the month count. Lines share the total by list price.
    """
    check_ref("tenant", tenant_id)
    start, end = month_bounds(year, month)
    month_charges = _month_charges(plan, tenant_id, start, end, charges)
    total = sum(-tx.amount_on(tenant_account(tenant_id)) for tx in month_charges)
    records = [r for r in usage_records if r.tenant_id == tenant_id and start <= r.hour_start < end]
    lines = _lines(plan, _instance_ms_by_line(records), total)
    return Invoice(
        tenant_id=tenant_id,
        year=year,
        month=month,
        currency=plan.currency,
        lines=tuple(InvoiceLine(*line) for line in lines),
        total_minor=total,
        charge_keys=tuple(tx.key for tx in month_charges),
    )


def _month_charges(
    plan: Plan, tenant_id: str, start: int, end: int, charges: Iterable[Transaction]
) -> list[Transaction]:
    """This tenant's charges for periods in ``[start, end)``, each key once."""
    account = tenant_account(tenant_id)
    found: dict[str, Transaction] = {}
    for tx in charges:
        if tx.kind != "charge" or tx.amount_on(account) == 0 or not start <= _period_of(tx) < end:
            continue
        if tx.currency != plan.currency:
            raise InvalidInput(
                f"charge {tx.key} is not in {plan.currency}", code="currency_mismatch"
            )
        if found.setdefault(tx.key, tx).content() != tx.content():
            raise Conflict(
                f"two different charges share the key {tx.key!r}", code="idempotency_conflict"
            )
    return sorted(found.values(), key=lambda tx: (_period_of(tx), tx.key))


def _period_of(tx: Transaction) -> float:
    return tx.period_start if tx.period_start is not None else tx.at


_LineKey = tuple[str, InstanceSize]


def _instance_ms_by_line(records: Iterable[UsageRecord]) -> dict[_LineKey, int]:
    totals: dict[_LineKey, int] = defaultdict(int)
    for record in records:
        totals[(record.app_id, record.size)] += record.instance_ms
    return totals


def _lines(
    plan: Plan, instance_ms: dict[_LineKey, int], amount: int
) -> list[tuple[str, InstanceSize, int, Fraction, int]]:
    """Line fields (app, size, ms, unit price, share) sorted by app and size, sharing ``amount``."""
    keys = sorted(instance_ms)
    weights = [list_cost(plan, size, instance_ms[(app, size)]) for app, size in keys]
    shares = apportion(amount, weights)
    return [
        (app, size, instance_ms[(app, size)], price_per_hour(plan, size), share)
        for (app, size), share in zip(keys, shares, strict=True)
    ]


def apportion(total: int, weights: Sequence[Fraction]) -> list[int]:
    """Split a non-negative integer ``total`` in proportion to ``weights`` (largest remainder).

    The parts are non-negative integers that sum to ``total`` exactly; each is within one unit of
    its exact share. Ties go to the earlier weight, so the result is deterministic.
    """
    if total < 0 or any(w < 0 for w in weights):
        raise InvalidInput("cannot apportion a negative amount", code="invalid_amount")
    weight_sum = sum(weights, Fraction(0))
    if weight_sum == 0:
        if total:
            raise InvalidInput("an amount was charged for no usage", code="invalid_usage")
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(share) for share in exact]  # floor: shares are non-negative
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts
