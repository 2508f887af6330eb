"""The reconciler's side of being driven by events: it hands each instance it starts to the
health monitor at once, runs the next pass as soon as something is newly routed, and wakes
itself when a crashed instance's restart is due instead of waiting for the interval."""

from __future__ import annotations

from berth.domain.reconcile import FIRST_RESTART_SECONDS, RestartInstance
from berth.runtime.protocol import ContainerInfo
from berth.services import apps as svc
from berth.workloads.local import LocalWorkloads
from tests.harness import wait_until
from tests.unit.controllers.conftest import World, deploy, status


def _watch(world: World) -> tuple[list[ContainerInfo], list[int]]:
    started: list[ContainerInfo] = []
    wakes: list[int] = []
    backend = world.reconciler.workloads
    backend.on_started = started.append  # type: ignore[attr-defined]
    world.reconciler._loop.wake = lambda: wakes.append(1)  # type: ignore[method-assign]
    return started, wakes


def test_a_started_instance_goes_to_the_health_monitor_and_routing_wakes_the_next_pass(
    world: World,
) -> None:
    started, wakes = _watch(world)
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    dep = deploy(world, "web")

    world.reconciler.run_once()  # starts it (the fake health passes it at once) and routes it
    [cid] = world.running("web")
    assert [i.id for i in started] == [cid] and started[0].state == "running"
    assert wakes, "newly routed: the pass that finishes the deployment runs now"
    wakes.clear()
    world.reconciler.run_once()  # what that wake runs
    assert status(world, dep) == "succeeded"
    world.reconciler.run_once()
    assert wakes == []  # converged: no pass wakes another


def test_a_crashed_instance_is_restarted_when_due_not_at_the_next_interval(world: World) -> None:
    started, wakes = _watch(world)
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle(passes=3, step=0.0)
    [cid] = world.running("web")
    started.clear()
    wakes.clear()

    world.runtime.crash(cid, 1)
    crashed_at = world.clock.now
    backend: LocalWorkloads = world.reconciler.workloads  # type: ignore[assignment]
    world.reconciler.run_once()  # the die event's pass: too early to restart
    assert not any(isinstance(a, RestartInstance) for a in backend.last_plan.actions)
    assert backend._timer_due == crashed_at + FIRST_RESTART_SECONDS
    wait_until(lambda: wakes, 10, "the timer wakes the loop when the restart is due")

    world.clock.now += FIRST_RESTART_SECONDS
    world.reconciler.run_once()
    plan = backend.last_plan
    assert RestartInstance(plan.actions[0].app_id, cid) in plan.actions
    assert [i.id for i in started] == [cid]  # the restarted instance is probed at once too
    assert world.running("web") == [cid]
