"""A tenant's build limits: the plan's columns where set, the settings where NULL."""

from __future__ import annotations

from pathlib import Path

from berth.builds.limits import tenant_build_policy
from berth.settings import Settings
from berth.store.tables import PlanRow


def settings() -> Settings:
    return Settings(
        home=Path("/nonexistent"),
        build_memory_mb=1024,
        build_cpus=1.0,
        build_disk_mb=4096,
        build_pids_limit=512,
        max_concurrent_builds_per_tenant=1,
    )


def test_no_plan_means_the_settings() -> None:
    policy = tenant_build_policy(settings(), None)
    assert policy.concurrent == 1
    assert (policy.limits.memory_mb, policy.limits.cpus, policy.limits.disk_mb) == (1024, 1.0, 4096)
    assert policy.limits.pids == 512


def test_plan_columns_win_and_null_falls_back() -> None:
    plan = PlanRow(
        max_concurrent_builds=3, build_memory_mb=256, build_cpus_milli=500, build_disk_mb=None
    )
    policy = tenant_build_policy(settings(), plan)
    assert policy.concurrent == 3
    assert policy.limits.memory_mb == 256
    assert policy.limits.cpus == 0.5
    assert policy.limits.disk_mb == 4096
