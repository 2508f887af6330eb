"""Plans: instance sizes as keys, exact hourly prices, and quota checks."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.billing.money import EUR, JPY
from berth.billing.plans import (
    InstanceSize,
    Plan,
    PlanLimits,
    QuotaDelta,
    QuotaUsage,
    QuotaViolation,
    check_quota,
    list_cost,
    price_per_hour,
)
from berth.errors import InvalidInput, QuotaExceeded

STARTER_LIMITS = PlanLimits(max_apps=3, max_instances=5, max_memory_mb=2048, max_domains=2)


def make_plan(**overrides: object) -> Plan:
    fields: dict[str, object] = {
        "name": "starter",
        "currency": EUR,
        "price_per_gb_hour_minor": 1000,
        "price_per_cpu_hour_minor": 2000,
        "limits": STARTER_LIMITS,
    }
    fields.update(overrides)
    return Plan(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (InstanceSize(256, 500), "256M-0.5cpu"),
        (InstanceSize(1024, 1000), "1024M-1cpu"),
        (InstanceSize(512, 250), "512M-0.25cpu"),
        (InstanceSize(128, 1500), "128M-1.5cpu"),
        (InstanceSize(64, 2001), "64M-2.001cpu"),
        (InstanceSize(16, 50), "16M-0.05cpu"),
        (InstanceSize(4096, 16000), "4096M-16cpu"),
    ],
)
def test_instance_size_text_round_trips(size: InstanceSize, text: str) -> None:
    assert str(size) == text
    assert InstanceSize.parse(text) == size


@given(st.integers(1, 9_999_999), st.integers(1, 999_999))
def test_every_size_parses_back_from_its_text(memory_mb: int, cpus_milli: int) -> None:
    size = InstanceSize(memory_mb, cpus_milli)
    assert InstanceSize.parse(str(size)) == size


@pytest.mark.parametrize(
    "text",
    [
        "256M-0.50cpu",
        "256m-0.5cpu",
        "256M-0.5CPU",
        "0M-1cpu",
        "256M-0cpu",
        "256M-0.5cpu ",
        "256-0.5cpu",
        "256M0.5cpu",
        "0256M-1cpu",
        "256M-0.0005cpu",
        "256M-1.cpu",
        "",
    ],
)
def test_non_canonical_size_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        InstanceSize.parse(text)


def test_sizes_are_hashable_keys() -> None:
    prices = {InstanceSize(256, 500): 1, InstanceSize(256, 500): 2, InstanceSize(512, 500): 3}
    assert len(prices) == 2
    assert prices[InstanceSize(256, 500)] == 2


@pytest.mark.parametrize(("memory_mb", "cpus_milli"), [(0, 500), (256, 0), (-1, 500), (True, 500)])
def test_sizes_must_be_positive_integers(memory_mb: int, cpus_milli: int) -> None:
    with pytest.raises(InvalidInput):
        InstanceSize(memory_mb, cpus_milli)


def test_price_per_hour_is_exact() -> None:
    plan = make_plan()
    # A quarter GB at 10.00 EUR/GB-h plus half a CPU at 20.00 EUR/CPU-h.
    assert price_per_hour(plan, InstanceSize(256, 500)) == 1250
    # 100 MB is not a round fraction of a GB: the price stays an exact fraction of a cent.
    assert price_per_hour(plan, InstanceSize(100, 1)) == Fraction(100 * 1000, 1024) + 2
    assert isinstance(price_per_hour(plan, InstanceSize(100, 1)), Fraction)


def test_list_cost_scales_with_instance_milliseconds() -> None:
    plan = make_plan()
    size = InstanceSize(256, 500)
    assert list_cost(plan, size, 3_600_000) == 1250
    assert list_cost(plan, size, 1_800_000) == 625
    assert list_cost(plan, size, 1) == Fraction(1250, 3_600_000)
    assert list_cost(plan, size, 0) == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"currency": "EUR"},
        {"price_per_gb_hour_minor": -1},
        {"price_per_gb_hour_minor": 1.5},
        {"price_per_cpu_hour_minor": True},
        {"included_gb_hours": -1},
        {"included_cpu_hours": 0.5},
        {"limits": {"max_apps": 1}},
    ],
)
def test_invalid_plans_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        make_plan(**overrides)


def test_a_plan_can_be_priced_in_yen() -> None:
    plan = make_plan(currency=JPY, price_per_gb_hour_minor=15, price_per_cpu_hour_minor=30)
    assert price_per_hour(plan, InstanceSize(512, 1000)) == Fraction(15, 2) + 30


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_limits_must_be_non_negative_integers_or_none(value: object) -> None:
    with pytest.raises(InvalidInput):
        PlanLimits(max_apps=value, max_instances=1, max_memory_mb=1, max_domains=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("usage", "delta", "expected"),
    [
        (QuotaUsage(instances=4), QuotaDelta(instances=1), None),
        (QuotaUsage(instances=5), QuotaDelta(instances=1), QuotaViolation("instances", 5, 5, 1)),
        (QuotaUsage(instances=3), QuotaDelta(instances=3), QuotaViolation("instances", 5, 3, 3)),
        (QuotaUsage(apps=3), QuotaDelta(apps=1), QuotaViolation("apps", 3, 3, 1)),
        (QuotaUsage(domains=2), QuotaDelta(domains=1), QuotaViolation("domains", 2, 2, 1)),
        (
            QuotaUsage(memory_mb=1792),
            QuotaDelta(memory_mb=512),
            QuotaViolation("memory_mb", 2048, 1792, 512),
        ),
        (QuotaUsage(memory_mb=1536), QuotaDelta(memory_mb=512), None),
        # Scaling down, or changing nothing, is allowed even above the limit (after a downgrade).
        (QuotaUsage(instances=9), QuotaDelta(instances=-2), None),
        (QuotaUsage(instances=9, apps=7), QuotaDelta(), None),
        # Apps are checked before instances.
        (
            QuotaUsage(apps=3, instances=5),
            QuotaDelta(apps=1, instances=1),
            QuotaViolation("apps", 3, 3, 1),
        ),
    ],
)
def test_check_quota(usage: QuotaUsage, delta: QuotaDelta, expected: QuotaViolation | None) -> None:
    assert check_quota(STARTER_LIMITS, usage, delta) == expected


def test_none_means_unlimited() -> None:
    limits = PlanLimits(max_apps=None, max_instances=None, max_memory_mb=None, max_domains=0)
    assert check_quota(limits, QuotaUsage(apps=10**6), QuotaDelta(apps=1, instances=500)) is None
    assert check_quota(limits, QuotaUsage(), QuotaDelta(domains=1)) == QuotaViolation(
        "domains", 0, 0, 1
    )


def test_violation_messages_name_quota_usage_limit_and_plan() -> None:
    instances = QuotaViolation("instances", limit=5, current=5, requested=1)
    assert instances.message("starter") == "quota exceeded: instances 5/5 (plan 'starter')"
    memory = QuotaViolation("memory_mb", limit=2048, current=1792, requested=512)
    assert memory.message("starter") == "quota exceeded: memory 1792M/2048M (plan 'starter')"
    error = instances.to_error("starter")
    assert isinstance(error, QuotaExceeded)
    assert error.status == 403
    assert error.code == "quota_exceeded"
    assert error.message == "quota exceeded: instances 5/5 (plan 'starter')"
