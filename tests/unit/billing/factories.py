"""Small builders shared by the billing tests."""

from __future__ import annotations

from berth.billing.metering import RunInterval
from berth.billing.money import EUR
from berth.billing.plans import InstanceSize, Plan, PlanLimits

HOUR = 3600
# 2023-11-14 22:00:00 UTC, an hour boundary.
T0 = 1_700_000_000 // HOUR * HOUR

SMALL = InstanceSize(256, 500)
MEDIUM = InstanceSize(512, 1000)
LARGE = InstanceSize(2048, 2000)
ODD = InstanceSize(100, 333)  # prices that are no round number of cents
SIZES = (SMALL, MEDIUM, LARGE, ODD)

LIMITS = PlanLimits(max_apps=10, max_instances=50, max_memory_mb=65536, max_domains=10)


def make_plan(
    gb_hour: int = 1000, cpu_hour: int = 2000, included_gb: int = 0, included_cpu: int = 0
) -> Plan:
    return Plan(
        name="standard",
        currency=EUR,
        price_per_gb_hour_minor=gb_hour,
        price_per_cpu_hour_minor=cpu_hour,
        limits=LIMITS,
        included_gb_hours=included_gb,
        included_cpu_hours=included_cpu,
    )


def run(
    started_at: float,
    stopped_at: float | None,
    *,
    instance: str = "i1",
    app: str = "web",
    tenant: str = "acme",
    size: InstanceSize = SMALL,
) -> RunInterval:
    return RunInterval(instance, app, tenant, size, started_at, stopped_at)
