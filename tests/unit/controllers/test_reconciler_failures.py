"""The reconcile loop when the engine refuses: removals that fail keep the container billed and
known, failing restarts and removals back off on the one schedule, and instances that do not fit
the node's memory stay pending with the reason."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from berth.controllers.backoff import exponential_delay
from berth.errors import EngineUnavailable
from berth.runtime.fake import NO_SPACE, READ_ONLY_FS
from berth.services import apps as svc
from berth.store.tables import Instance, PlanRow, RunIntervalRow, Tenant
from tests.unit.controllers.conftest import World, deploy


def _one_app(world: World, memory: str = "256M", scale: int = 1) -> str:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web", memory=memory))
        if scale != 1:
            svc.scale_app(s, world.settings, world.tenant_id, "web", scale)
    deploy(world, "web")
    world.settle()
    running = world.running("web")
    return running[0] if running else ""


def _intervals(world: World, cid: str) -> list[tuple[float, float | None]]:
    with world.session() as s:
        rows = s.scalars(select(RunIntervalRow).where(RunIntervalRow.container_id == cid))
        return sorted((r.started_at, r.stopped_at) for r in rows)


def _instance_rows(world: World) -> list[Instance]:
    with world.session() as s:
        return list(s.scalars(select(Instance)))


def _attempts_allowed(seconds: float) -> int:
    """How many tries the backoff schedule allows in ``seconds``: one, then one per wait."""
    tries, elapsed = 1, 0.0
    while True:
        elapsed += exponential_delay(tries)
        if elapsed > seconds:
            return tries
        tries += 1


def test_a_refused_removal_keeps_the_container_billed_until_the_engine_confirms(
    world: World,
) -> None:
    cid = _one_app(world)
    [before] = _instance_rows(world)
    started = world.runtime.inspect(cid).started_at  # type: ignore[union-attr]
    world.runtime.engine.refuse_removal = True
    with world.session() as s:
        svc.scale_app(s, world.settings, world.tenant_id, "web", 0)

    world.settle(passes=10, step=5.0)

    assert world.runtime.engine.removal_attempts >= 2  # it was tried, and tried again
    assert world.running("web") == [cid]  # the engine still runs it ...
    assert _intervals(world, cid) == [(started, None)]  # ... so its interval stays open
    [row] = _instance_rows(world)
    assert (row.id, row.container_id) == (before.id, cid)  # not adopted as a new instance

    world.runtime.engine.refuse_removal = False
    world.settle(passes=1)  # learns of the last refusal: backs off once more
    world.clock.now += 120  # past any backoff
    removed_at = world.clock.now  # the fake engine stops it at this time
    world.settle(passes=3)

    assert world.runtime.inspect(cid) is None
    assert _intervals(world, cid) == [(started, removed_at)]  # the engine's time: no gap
    assert _instance_rows(world) == []


def test_a_removal_that_keeps_failing_backs_off_and_does_not_wake_the_loop(
    world: World,
) -> None:
    cid = _one_app(world)
    wakes = []
    world.reconciler._loop.wake = lambda: wakes.append(1)  # type: ignore[method-assign]
    world.runtime.engine.refuse_removal = True
    with world.session() as s:
        svc.scale_app(s, world.settings, world.tenant_id, "web", 0)

    seconds = 300
    world.settle(passes=seconds, step=1.0)

    attempts = world.runtime.engine.removal_attempts
    assert 2 <= attempts <= _attempts_allowed(seconds)  # 300 passes, a handful of tries
    assert wakes == []  # a failed removal never wakes the loop (no tight cycle)
    assert world.running("web") == [cid]


def test_a_restart_that_keeps_failing_backs_off(world: World) -> None:
    cid = _one_app(world)
    world.runtime.crash(cid, 1)
    world.runtime.engine.refuse_start = True

    seconds = 300
    world.settle(passes=seconds, step=1.0)

    attempts = world.runtime.engine.start_attempts
    assert 2 <= attempts <= _attempts_allowed(seconds)
    [row] = _instance_rows(world)
    assert row.reason.startswith("restart failed: fake: cannot start container")

    world.runtime.engine.refuse_start = False
    world.clock.now += 120
    world.settle(passes=3)
    assert world.running("web") == [cid]  # a success starts the schedule over


def test_an_instance_that_does_not_fit_the_node_stays_pending_with_the_reason(
    world: World,
) -> None:
    # A node of 2048 MiB keeping 1024 MiB for the host: 1024 MiB for instances.
    world.runtime.engine.memory_bytes = 2048 * 1024 * 1024
    world.settings = world.reconciler.settings = world.settings.model_copy(
        update={"host_memory_reserve_mb": 1024}
    )
    _one_app(world, memory="768M", scale=2)

    assert len(world.running("web")) == 1
    pending = [r for r in _instance_rows(world) if r.container_id is None]
    assert [(r.state, r.reason) for r in pending] == [
        ("pending", "insufficient memory on node local: needs 768 MiB, 256 MiB free of 1024 MiB")
    ]

    with world.session() as s:
        svc.scale_app(s, world.settings, world.tenant_id, "web", 1)
    world.settle()
    assert [r for r in _instance_rows(world) if r.container_id is None] == []  # no stale reason


def test_instances_get_a_read_only_root_and_tmpfs_of_the_plans_size(world: World) -> None:
    with world.session() as s:
        plan_id = s.scalar(select(Tenant.plan_id).where(Tenant.id == world.tenant_id))
        s.execute(update(PlanRow).where(PlanRow.id == plan_id).values(instance_disk_mb=2))
        s.commit()
    cid = _one_app(world)

    assert world.runtime.write_file(cid, "/big", 300 * 1024 * 1024) == READ_ONLY_FS
    assert world.runtime.write_file(cid, "/tmp/a", 1024 * 1024) == ""
    assert world.runtime.write_file(cid, "/tmp/b", 2 * 1024 * 1024) == NO_SPACE


def test_without_a_plan_size_the_setting_sizes_tmpfs(world: World) -> None:
    cid = _one_app(world)
    disk = world.settings.instance_disk_mb * 1024 * 1024

    assert world.runtime.write_file(cid, "/var/tmp/x", disk) == ""
    assert world.runtime.write_file(cid, "/var/tmp/y", 1) == NO_SPACE


def test_a_pass_while_the_engine_is_down_changes_nothing(world: World) -> None:
    cid = _one_app(world)
    rows_before = [(r.id, r.container_id, r.state) for r in _instance_rows(world)]
    intervals_before = _intervals(world, cid)
    world.runtime.set_reachable(False)

    with pytest.raises(EngineUnavailable):
        world.reconciler.run_once()

    assert [(r.id, r.container_id, r.state) for r in _instance_rows(world)] == rows_before
    assert _intervals(world, cid) == intervals_before  # still open: it still runs
    world.runtime.set_reachable(True)
    world.settle(passes=2)
    assert world.running("web") == [cid]
