"""Plans: what an instance costs per hour and how much a tenant may run.

Prices are integers in the plan currency's minor units per GB-hour of memory and per CPU-hour
(1 GB = 1024 MB; 1 CPU = 1000 milli-CPU). The price of one instance-hour of a size is therefore a
rational number of minor units, and :func:`price_per_hour` returns it as an exact ``Fraction``:
no rounding happens here. Rounding happens once per charge, in :mod:`berth.billing.rating`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Literal

from berth.billing.money import Currency
from berth.billing.periods import HOUR_MS
from berth.errors import InvalidInput, QuotaExceeded

MB_PER_GB = 1024
MILLI_PER_CPU = 1000

_SIZE_TEXT = re.compile(r"([1-9][0-9]{0,6})M-([0-9]{1,3}(?:\.[0-9]{1,3})?)cpu")


def _check_count(name: str, value: int, *, minimum: int = 0, code: str = "invalid_plan") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, got {value!r}", code=code)


@dataclass(frozen=True, order=True)
class InstanceSize:
    """The resources of one instance; hashable, used as a key. ``str()`` gives "256M-0.5cpu"."""

    memory_mb: int
    cpus_milli: int

    def __post_init__(self) -> None:
        _check_count("memory_mb", self.memory_mb, minimum=1, code="invalid_size")
        _check_count("cpus_milli", self.cpus_milli, minimum=1, code="invalid_size")

    def __str__(self) -> str:
        whole, milli = divmod(self.cpus_milli, MILLI_PER_CPU)
        cpus = f"{whole}.{milli:03d}".rstrip("0").rstrip(".") if milli else str(whole)
        return f"{self.memory_mb}M-{cpus}cpu"

    @classmethod
    def parse(cls, text: str) -> InstanceSize:
        """The inverse of ``str()``: "256M-0.5cpu" -> InstanceSize(256, 500)."""
        match = _SIZE_TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidInput(f"invalid instance size {text!r}", code="invalid_size")
        cpus = Fraction(match.group(2)) * MILLI_PER_CPU
        size = cls(int(match.group(1)), int(cpus))
        if str(size) != text:  # non-canonical spellings like "0.50cpu" would fork keys
            raise InvalidInput(f"invalid instance size {text!r}, write {size}", code="invalid_size")
        return size


# Request bodies at the ingress, in MiB: at least 1 (0 would be nginx's "unlimited"), at most
# 10 GiB (nginx buffers a larger body to disk; beyond that it is an upload service, not a limit).
REQUEST_BODY_MB_MIN = 1
REQUEST_BODY_MB_MAX = 10240


def check_request_body_mb(value: object, name: str = "max_request_body_mb") -> int:
    """``value`` as a request body limit in MiB, or InvalidInput (a bool, a string, 0, ...)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not REQUEST_BODY_MB_MIN <= value <= REQUEST_BODY_MB_MAX
    ):
        raise InvalidInput(
            f"{name} must be an integer from {REQUEST_BODY_MB_MIN} to {REQUEST_BODY_MB_MAX} "
            f"(MiB), got {value!r}",
            code="invalid_plan",
        )
    return value


def request_body_mb(plan_value: int | None, setting: int) -> int:
    """The limit that applies: the plan's own, else the installation's setting."""
    return check_request_body_mb(setting if plan_value is None else plan_value)


QuotaName = Literal["apps", "instances", "memory_mb", "domains"]
QUOTA_NAMES: tuple[QuotaName, ...] = ("apps", "instances", "memory_mb", "domains")


@dataclass(frozen=True)
class PlanLimits:
    """Upper bounds on what a tenant may hold at once. ``None`` means unlimited."""

    max_apps: int | None
    max_instances: int | None
    max_memory_mb: int | None
    max_domains: int | None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _check_count(f.name, value)

    def limit(self, quota: QuotaName) -> int | None:
        return {
            "apps": self.max_apps,
            "instances": self.max_instances,
            "memory_mb": self.max_memory_mb,
            "domains": self.max_domains,
        }[quota]


@dataclass(frozen=True)
class Plan:
    """An operator-defined price list with monthly included resources and limits.

    ``included_gb_hours`` and ``included_cpu_hours`` are free each UTC calendar month, per tenant,
    and are consumed before anything is charged.
    """

    name: str
    currency: Currency
    price_per_gb_hour_minor: int
    price_per_cpu_hour_minor: int
    limits: PlanLimits
    included_gb_hours: int = 0
    included_cpu_hours: int = 0
    # Managed databases' storage per GiB-month (berth.billing.storage); None: the setting.
    storage_price_per_gib_month_minor: int | None = None
    # The largest request body the ingress passes to the tenant's apps (MiB); None: the setting.
    max_request_body_mb: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 100:
            raise InvalidInput("plan name must be 1-100 characters", code="invalid_plan")
        if not isinstance(self.currency, Currency):
            raise InvalidInput("plan currency must be a Currency", code="invalid_plan")
        _check_count("price_per_gb_hour_minor", self.price_per_gb_hour_minor)
        _check_count("price_per_cpu_hour_minor", self.price_per_cpu_hour_minor)
        _check_count("included_gb_hours", self.included_gb_hours)
        _check_count("included_cpu_hours", self.included_cpu_hours)
        storage_price = self.storage_price_per_gib_month_minor
        if storage_price is not None:
            _check_count("storage_price_per_gib_month_minor", storage_price)
        if self.max_request_body_mb is not None:
            check_request_body_mb(self.max_request_body_mb)
        if not isinstance(self.limits, PlanLimits):
            raise InvalidInput("plan limits must be PlanLimits", code="invalid_plan")


def price_per_hour(plan: Plan, size: InstanceSize) -> Fraction:
    """Exact list price of one instance-hour of ``size``, in minor units (not rounded)."""
    memory = Fraction(size.memory_mb, MB_PER_GB) * plan.price_per_gb_hour_minor
    cpu = Fraction(size.cpus_milli, MILLI_PER_CPU) * plan.price_per_cpu_hour_minor
    return memory + cpu


def list_cost(plan: Plan, size: InstanceSize, instance_ms: int) -> Fraction:
    """Exact list price of ``instance_ms`` instance-milliseconds of ``size`` (no allowance)."""
    return price_per_hour(plan, size) * Fraction(instance_ms, HOUR_MS)


@dataclass(frozen=True)
class QuotaUsage:
    """What a tenant holds now (desired state: apps, instances asked for, their memory, domains)."""

    apps: int = 0
    instances: int = 0
    memory_mb: int = 0
    domains: int = 0


@dataclass(frozen=True)
class QuotaDelta:
    """What a request would add (negative for removals, which are always allowed)."""

    apps: int = 0
    instances: int = 0
    memory_mb: int = 0
    domains: int = 0


@dataclass(frozen=True)
class QuotaViolation:
    """The first quota a request would exceed: its name, the limit, and the usage before it."""

    quota: QuotaName
    limit: int
    current: int
    requested: int

    def message(self, plan_name: str) -> str:
        """E.g. "quota exceeded: instances 5/5 (plan 'starter')"."""
        if self.quota == "memory_mb":
            used = f"memory {self.current}M/{self.limit}M"
        else:
            used = f"{self.quota} {self.current}/{self.limit}"
        return f"quota exceeded: {used} (plan {plan_name!r})"

    def to_error(self, plan_name: str) -> QuotaExceeded:
        return QuotaExceeded(self.message(plan_name))


def check_quota(limits: PlanLimits, usage: QuotaUsage, delta: QuotaDelta) -> QuotaViolation | None:
    """The first violated quota (in the order apps, instances, memory, domains), or ``None``.

    Only growth is checked: a request that does not increase a quantity passes even when the tenant
    is already above the limit (after a downgrade, scaling down must still work).
    """
    for quota in QUOTA_NAMES:
        limit = limits.limit(quota)
        current, requested = getattr(usage, quota), getattr(delta, quota)
        if limit is not None and requested > 0 and current + requested > limit:
            return QuotaViolation(quota=quota, limit=limit, current=current, requested=requested)
    return None
