"""A tenant's build limits: its plan's values where set, the platform's settings otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from berth.builds.protocol import BuildLimits
from berth.settings import Settings
from berth.store.tables import PlanRow


@dataclass(frozen=True)
class TenantBuildPolicy:
    limits: BuildLimits
    concurrent: int  # builds of this tenant that may run at once


def tenant_build_policy(settings: Settings, plan: PlanRow | None) -> TenantBuildPolicy:
    """The limits for a tenant on ``plan`` (None: no plan). A NULL plan column means the
    setting; the operator's plan values are taken as they are (a plan may allow more)."""

    def pick(value: int | None, default: int) -> int:
        return value if value is not None and value > 0 else default

    cpus_milli = plan.build_cpus_milli if plan is not None else None
    limits = BuildLimits(
        memory_mb=pick(plan.build_memory_mb if plan else None, settings.build_memory_mb),
        cpus=cpus_milli / 1000 if cpus_milli else settings.build_cpus,
        pids=settings.build_pids_limit,
        disk_mb=pick(plan.build_disk_mb if plan else None, settings.build_disk_mb),
        timeout_seconds=settings.build_timeout_seconds,
        log_max_bytes=settings.build_log_max_bytes,
    )
    concurrent = pick(
        plan.max_concurrent_builds if plan else None, settings.max_concurrent_builds_per_tenant
    )
    return TenantBuildPolicy(limits, concurrent)
