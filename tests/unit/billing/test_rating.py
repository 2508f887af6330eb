"""Rating: exact hourly charges without drift, and invoices that match the ledger to the cent."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.billing.ledger import (
    PLATFORM_REVENUE,
    LedgerState,
    apply,
    apply_all,
    charge,
    tenant_account,
    topup,
)
from berth.billing.metering import UsageRecord, hourly_usage
from berth.billing.money import EUR, USD
from berth.billing.periods import HOUR_MS, month_bounds
from berth.billing.plans import InstanceSize, Plan, list_cost, price_per_hour
from berth.billing.rating import (
    HourCharge,
    ResourceUsage,
    apportion,
    charge_transaction,
    charges_for_hour,
    invoice_for_month,
    month_cost,
    month_to_date,
    rate_hours,
    round_minor,
)
from berth.errors import Conflict, InvalidInput

from .factories import HOUR, LARGE, MEDIUM, ODD, SIZES, SMALL, make_plan, run

MARCH_START, MARCH_END = month_bounds(2024, 3)  # 31 days
APRIL_START, _ = month_bounds(2024, 4)
TINY = InstanceSize(16, 200)  # at 2 cents a CPU-hour and free memory: 0.4 cents an hour


def record(
    hour: int,
    ms: int = HOUR_MS,
    *,
    app: str = "web",
    size: InstanceSize = SMALL,
    tenant: str = "acme",
) -> UsageRecord:
    return UsageRecord(tenant, app, size, hour, ms)


def test_rounding_is_half_to_even() -> None:
    assert [round_minor(Fraction(n, 2)) for n in range(-3, 6)] == [-2, -1, 0, 0, 0, 1, 2, 2, 2]
    assert round_minor(Fraction(7, 3)) == 2


def test_one_full_hour_of_one_instance() -> None:
    plan = make_plan()
    result = charges_for_hour(plan, "acme", MARCH_START, [record(MARCH_START)], ResourceUsage())
    assert result.amount_minor == 1250
    assert result.key == f"charge:acme:{MARCH_START}"
    assert [(line.app_id, line.size, line.amount_minor) for line in result.lines] == [
        ("web", SMALL, 1250)
    ]
    assert result.lines[0].unit_price_minor == 1250
    assert result.usage_after == ResourceUsage(256 * HOUR_MS, 500 * HOUR_MS)


def test_fractions_of_a_cent_carry_over_instead_of_vanishing() -> None:
    plan = make_plan(gb_hour=0, cpu_hour=2)
    assert price_per_hour(plan, TINY) == Fraction(2, 5)
    usage = ResourceUsage()
    amounts = []
    for n in range(10):
        hour = MARCH_START + n * HOUR
        result = charges_for_hour(plan, "acme", hour, [record(hour, size=TINY)], usage)
        amounts.append(result.amount_minor)
        usage = result.usage_after
    # Rounding each hour alone would charge 0 ten times; carried, ten hours cost exactly 4.
    assert amounts == [0, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    assert sum(amounts) == 4


def test_included_resources_are_used_up_first() -> None:
    # 1 GB-hour and 2 CPU-hours free per month; a MEDIUM instance uses 0.5 GB and 1 CPU.
    plan = make_plan(included_gb=1, included_cpu=2)
    charges = rate_hours(
        plan, "acme", [record(MARCH_START + n * HOUR, size=MEDIUM) for n in range(4)]
    )
    assert [c.amount_minor for c in charges] == [0, 0, 500 + 2000, 500 + 2000]
    assert all(sum(line.amount_minor for line in c.lines) == c.amount_minor for c in charges)


def test_the_allowance_and_the_carry_reset_every_month() -> None:
    plan = make_plan(included_gb=1, included_cpu=2)
    last_march_hour = MARCH_END - HOUR
    charges = rate_hours(
        plan,
        "acme",
        [
            record(h, size=MEDIUM)
            for h in (
                last_march_hour - 2 * HOUR,
                last_march_hour - HOUR,
                last_march_hour,
                APRIL_START,
                APRIL_START + HOUR,
            )
        ],
    )
    assert [c.amount_minor for c in charges] == [0, 0, 2500, 0, 0]
    assert charges[3].usage_before == ResourceUsage()


def test_lines_share_the_hour_by_list_price_and_add_up() -> None:
    plan = make_plan()
    hour = MARCH_START
    records = [
        record(hour, app="web", size=SMALL),  # 12.50
        record(hour, app="web", size=LARGE),  # 20.00 + 40.00
        record(hour, 1_234_567, app="api", size=ODD),  # an odd fraction of a cent
    ]
    result = charges_for_hour(plan, "acme", hour, records, ResourceUsage())
    exact = sum((list_cost(plan, r.size, r.instance_ms) for r in records), Fraction(0))
    assert result.amount_minor == round_minor(exact)
    assert sum(line.amount_minor for line in result.lines) == result.amount_minor
    assert [(line.app_id, str(line.size)) for line in result.lines] == [
        ("api", "100M-0.333cpu"),
        ("web", "256M-0.5cpu"),
        ("web", "2048M-2cpu"),
    ]
    assert result.lines[1].amount_minor == 1250
    assert result.lines[2].amount_minor == 6000


def test_an_hour_with_no_usage_costs_nothing() -> None:
    result = charges_for_hour(make_plan(), "acme", MARCH_START, [], ResourceUsage())
    assert result.amount_minor == 0
    assert result.lines == ()
    assert charge_transaction(result, MARCH_START + HOUR) is None


@pytest.mark.parametrize("bad", [record(MARCH_START, tenant="other"), record(MARCH_START + HOUR)])
def test_records_of_another_tenant_or_hour_are_refused(bad: UsageRecord) -> None:
    with pytest.raises(InvalidInput):
        charges_for_hour(make_plan(), "acme", MARCH_START, [bad], ResourceUsage())


def test_month_to_date_counts_only_earlier_hours_of_the_same_month() -> None:
    records = [
        record(MARCH_START - HOUR),  # February
        record(MARCH_START),
        record(MARCH_START + HOUR, 1000),
        record(MARCH_START + 2 * HOUR),  # the hour being rated
    ]
    other = record(MARCH_START, tenant="zeta")
    expected = ResourceUsage().plus(records[1:3])
    assert month_to_date([*records, other], "acme", MARCH_START + 2 * HOUR) == expected


def test_charge_transaction_is_keyed_by_tenant_hour_and_remembers_the_hour() -> None:
    plan = make_plan()
    result = charges_for_hour(plan, "acme", MARCH_START, [record(MARCH_START)], ResourceUsage())
    posted_at = MARCH_START + 3 * HOUR + 7.5  # posted late, after an outage
    tx = charge_transaction(result, posted_at)
    assert tx is not None
    assert tx.key == f"charge:acme:{MARCH_START}"
    assert tx.kind == "charge"
    assert tx.period_start == MARCH_START
    assert tx.at == posted_at
    assert tx.amount_on(tenant_account("acme")) == -1250
    assert tx.memo == "usage 2024-03-01 00:00 UTC, plan standard"
    # Rating the same hour again (a restart) gives the same transaction content: a no-op.
    again = charge_transaction(result, posted_at + 100)
    assert again is not None
    book = apply(apply(LedgerState(EUR), tx), again)
    assert book.balance(PLATFORM_REVENUE) == 1250


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (10, [1, 1], [5, 5]),
        (1, [1, 1], [1, 0]),  # a tie goes to the first
        (2, [1, 1, 1], [1, 1, 0]),
        (100, [Fraction(1, 3)] * 3, [34, 33, 33]),
        (7, [0, 5, 2], [0, 5, 2]),
        (0, [3, 4], [0, 0]),
        (0, [0, 0], [0, 0]),
        (0, [], []),
    ],
)
def test_apportion_examples(total: int, weights: list[Fraction], parts: list[int]) -> None:
    assert apportion(total, [Fraction(w) for w in weights]) == parts


def test_apportion_refuses_money_for_nothing_and_negatives() -> None:
    with pytest.raises(InvalidInput):
        apportion(5, [Fraction(0)])
    with pytest.raises(InvalidInput):
        apportion(-1, [Fraction(1)])


@given(
    st.integers(0, 10**9),
    st.lists(st.fractions(min_value=0, max_value=10**6), min_size=1, max_size=12).filter(
        lambda ws: sum(ws) > 0
    ),
)
def test_apportion_adds_up_exactly_and_stays_within_one_unit(
    total: int, weights: list[Fraction]
) -> None:
    parts = apportion(total, weights)
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert part >= 0
        assert abs(part - total * weight / weight_sum) < 1


# --- a simulated month --------------------------------------------------------------------------

APPS = ["web", "api", "worker"]


def random_month_usage(rng: random.Random, tenant: str) -> list[UsageRecord]:
    records = []
    for hour in range(MARCH_START, MARCH_END, HOUR):
        for app in APPS:
            if rng.random() < 0.7:
                size = rng.choice(SIZES)
                instances = rng.randint(1, 4)
                records.append(
                    record(
                        hour, rng.randint(1, instances * HOUR_MS), app=app, size=size, tenant=tenant
                    )
                )
    return records


def charge_month_hour_by_hour(
    plan: Plan, tenant: str, records: list[UsageRecord], book: LedgerState, rng: random.Random
) -> LedgerState:
    """A controller that rates one hour at a time, restarting now and then from the store."""
    usage = ResourceUsage()
    for hour in range(MARCH_START, MARCH_END, HOUR):
        if rng.random() < 0.05:  # a restart: rebuild the carried usage from stored records
            usage = month_to_date(records, tenant, hour)
        hour_records = [r for r in records if r.hour_start == hour and r.tenant_id == tenant]
        result = charges_for_hour(plan, tenant, hour, hour_records, usage)
        tx = charge_transaction(result, hour + HOUR + rng.uniform(0, 3 * HOUR))
        if tx is not None:
            book = apply(book, tx)
            if rng.random() < 0.1:  # the crash came after posting: the hour is posted again
                book = apply(book, tx)
        usage = result.usage_after
    return book


@pytest.mark.parametrize("seed", [7, 8, 9])
@pytest.mark.parametrize(
    "plan",
    [make_plan(), make_plan(gb_hour=37, cpu_hour=113, included_gb=50, included_cpu=20)],
    ids=["list-price", "odd-prices-with-allowance"],
)
def test_a_month_of_charges_matches_the_invoice_and_the_exact_cost(seed: int, plan: Plan) -> None:
    rng = random.Random(seed)
    records = random_month_usage(rng, "acme") + random_month_usage(rng, "zeta")
    book = apply(
        LedgerState(EUR), topup("acme", 10**9, "pay-1", MARCH_START, "payment", currency=EUR)
    )
    book = charge_month_hour_by_hour(plan, "acme", records, book, rng)
    book = charge_month_hour_by_hour(plan, "zeta", records, book, rng)

    ledger_charged = {
        tenant: -sum(
            tx.amount_on(tenant_account(tenant))
            for tx in book.transactions.values()
            if tx.kind == "charge"
        )
        for tenant in ("acme", "zeta")
    }
    for tenant in ("acme", "zeta"):
        invoice = invoice_for_month(
            plan, tenant, 2024, 3, records, list(book.transactions.values())
        )
        mine = [r for r in records if r.tenant_id == tenant]
        exact = month_cost(plan, ResourceUsage().plus(mine))
        assert invoice.total_minor == ledger_charged[tenant]
        assert invoice.total_minor == round_minor(exact)  # no drift over 744 hours
        assert abs(invoice.total_minor - exact) <= Fraction(1, 2)
        assert sum(line.amount_minor for line in invoice.lines) == invoice.total_minor
        assert len(invoice.charge_keys) == len(set(invoice.charge_keys))
        assert sum(line.instance_ms for line in invoice.lines) == sum(r.instance_ms for r in mine)
        for line in invoice.lines:
            assert line.unit_price_minor == price_per_hour(plan, line.size)
    assert sum(book.balances.values()) == 0
    assert book.balance(PLATFORM_REVENUE) == sum(ledger_charged.values())


def test_invoice_lines_per_app_and_size() -> None:
    plan = make_plan()
    records = [
        record(MARCH_START, app="web", size=SMALL),
        record(MARCH_START + HOUR, app="web", size=SMALL),
        record(MARCH_START, HOUR_MS // 2, app="api", size=MEDIUM),
    ]
    charges = [charge_transaction(c, MARCH_END) for c in rate_hours(plan, "acme", records)]
    invoice = invoice_for_month(plan, "acme", 2024, 3, records, [c for c in charges if c])
    assert invoice.key == "invoice:acme:2024-03"
    assert invoice.currency == EUR
    assert [
        (line.app_id, str(line.size), line.instance_hours, line.unit_price_minor, line.amount_minor)
        for line in invoice.lines
    ] == [
        ("api", "512M-1cpu", Fraction(1, 2), 2500, 1250),
        ("web", "256M-0.5cpu", 2, 1250, 2500),
    ]
    assert invoice.total_minor == 3750


def test_the_invoice_follows_the_charged_hour_not_the_posting_time() -> None:
    plan = make_plan()
    last_hour = MARCH_END - HOUR
    records = [record(last_hour), record(APRIL_START)]
    charges = rate_hours(plan, "acme", records)
    # Both posted in April: the first after an outage that ran past midnight.
    txs = [charge_transaction(c, APRIL_START + 2 * HOUR) for c in charges]
    march = invoice_for_month(plan, "acme", 2024, 3, records, [t for t in txs if t])
    april = invoice_for_month(plan, "acme", 2024, 4, records, [t for t in txs if t])
    assert march.total_minor == 1250
    assert april.total_minor == 1250
    assert march.charge_keys == (f"charge:acme:{last_hour}",)


def test_the_invoice_ignores_other_tenants_and_non_charges() -> None:
    plan = make_plan()
    records = [record(MARCH_START), record(MARCH_START, tenant="zeta")]
    txs = [
        charge_transaction(c, MARCH_START + HOUR)
        for tenant in ("acme", "zeta")
        for c in rate_hours(plan, tenant, [r for r in records if r.tenant_id == tenant])
    ]
    txs.append(topup("acme", 99, "p", MARCH_START, "payment", currency=EUR))
    invoice = invoice_for_month(plan, "acme", 2024, 3, records, [t for t in txs if t])
    assert invoice.total_minor == 1250
    assert len(invoice.lines) == 1


def test_the_invoice_refuses_conflicting_charges_and_other_currencies() -> None:
    plan = make_plan()
    records = [record(MARCH_START)]
    key = f"charge:acme:{MARCH_START}"
    a = charge("acme", 1250, key, MARCH_START, currency=EUR, period_start=MARCH_START)
    b = charge("acme", 1300, key, MARCH_START, currency=EUR, period_start=MARCH_START)
    with pytest.raises(Conflict):
        invoice_for_month(plan, "acme", 2024, 3, records, [a, b])
    # The same charge twice (a list with repeats) is counted once.
    assert invoice_for_month(plan, "acme", 2024, 3, records, [a, a]).total_minor == 1250
    dollars = charge("acme", 1250, key, MARCH_START, currency=USD, period_start=MARCH_START)
    with pytest.raises(InvalidInput):
        invoice_for_month(plan, "acme", 2024, 3, records, [dollars])


def test_a_charge_without_usage_cannot_be_invoiced_by_line() -> None:
    stray = charge("acme", 5, "manual-1", MARCH_START + 10, currency=EUR)
    with pytest.raises(InvalidInput, match="no usage"):
        invoice_for_month(make_plan(), "acme", 2024, 3, [], [stray])


# --- the whole flow -----------------------------------------------------------------------------


def test_agents_to_invoice_end_to_end() -> None:
    """Intervals -> hourly usage -> hourly charges -> ledger -> invoice, across two days."""
    plan = make_plan(gb_hour=1000, cpu_hour=2000, included_gb=2)
    day = 24 * HOUR
    intervals = [
        run(MARCH_START + 1800.5, MARCH_START + day + 600.25, instance="i1"),
        run(MARCH_START + 3 * HOUR, None, instance="i2", app="api", size=MEDIUM),
        run(
            MARCH_START + 3 * HOUR, MARCH_START + 4 * HOUR, instance="i2", app="api", size=MEDIUM
        ),  # re-reported piece of the same run
    ]
    now = MARCH_START + 2 * day + 5
    records = hourly_usage(intervals, MARCH_START, MARCH_START + 2 * day, now)
    charges: list[HourCharge] = rate_hours(plan, "acme", records)
    txs = [charge_transaction(c, now) for c in charges]
    book = apply_all(LedgerState(EUR), [t for t in txs if t is not None])
    invoice = invoice_for_month(plan, "acme", 2024, 3, records, book.transactions.values())

    small_ms = round((day + 600.25 - 1800.5) * 1000)
    medium_ms = (2 * day - 3 * HOUR) * HOUR_MS // HOUR
    assert {(line.app_id, line.instance_ms) for line in invoice.lines} == {
        ("web", small_ms),
        ("api", medium_ms),
    }
    exact = month_cost(
        plan, ResourceUsage(256 * small_ms + 512 * medium_ms, 500 * small_ms + 1000 * medium_ms)
    )
    assert invoice.total_minor == round_minor(exact) == -book.balance(tenant_account("acme"))
    assert invoice.total_minor == book.balance(PLATFORM_REVENUE)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 47),
            st.integers(1, 4 * HOUR_MS),
            st.sampled_from(SIZES),
            st.sampled_from(APPS),
        ),
        max_size=60,
    ),
    st.integers(0, 5),
    st.integers(0, 5),
)
def test_monthly_charges_always_telescope_to_the_rounded_exact_cost(
    raw: list[tuple[int, int, InstanceSize, str]], included_gb: int, included_cpu: int
) -> None:
    plan = make_plan(gb_hour=333, cpu_hour=777, included_gb=included_gb, included_cpu=included_cpu)
    merged: dict[tuple[int, str, InstanceSize], int] = {}
    for hour_index, ms, size, app in raw:
        key = (MARCH_START + hour_index * HOUR, app, size)
        merged[key] = merged.get(key, 0) + ms
    records = [record(h, ms, app=app, size=size) for (h, app, size), ms in merged.items()]
    charges = rate_hours(plan, "acme", records)
    assert all(c.amount_minor >= 0 for c in charges)
    assert sum(c.amount_minor for c in charges) == round_minor(
        month_cost(plan, ResourceUsage().plus(records))
    )
