"""The reconcile loop and the agent's run intervals, with the fake runtime and a fake nginx.

These drive real store rows through ``Reconciler.run_once`` with a controllable clock: deploys
succeed only once instances are healthy and routed, crashes restart with backoff, a failed
rollout keeps the old release, and run intervals come from the engine's own start and stop
times (so a control-plane outage leaves no gap in billing).
"""

from __future__ import annotations

from sqlalchemy import select

from berth.runtime.fake import FakeRuntime
from berth.services import apps as svc
from berth.services import domains
from berth.store.tables import Instance, RunIntervalRow
from tests.unit.controllers.conftest import World, deploy, status


def test_deploy_succeeds_only_when_healthy_and_routed(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
        svc.scale_app(s, world.settings, world.tenant_id, "web", 2)
    dep = deploy(world, "web")
    world.reconciler.run_once()  # starts two instances; not routed yet
    assert len(world.running("web")) == 2
    assert status(world, dep) == "in_progress"
    world.settle()
    assert status(world, dep) == "succeeded"
    ports = {c.host_port for c in world.runtime.list() if c.state == "running"}
    assert world.nginx.upstream_ports("web") == ports


def test_failed_rollout_keeps_the_old_release_serving(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    old = set(world.running("web"))
    dep = deploy(world, "web", "broken:latest")
    world.reconciler.run_once()
    new = set(world.running("web")) - old
    world.health.failing |= new  # v2 never passes its health check
    world.clock.now += 31  # past the deadline
    world.settle()
    assert status(world, dep) == "failed"
    assert set(world.running("web")) == old
    assert world.nginx.upstream_ports("web") == {
        c.host_port for c in world.runtime.list() if c.id in old
    }


def test_crash_restarts_with_backoff_and_shows_in_ps(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    [cid] = world.running("web")
    world.runtime.write_output(cid, "boom: cannot continue\n")
    world.runtime.crash(cid, 3)
    world.reconciler.run_once()  # sees the exit, records it, restarts once backoff allows
    world.settle(passes=3, step=2.0)
    assert world.running("web") == [cid]  # restarted, not duplicated
    with world.session() as s:
        row = s.scalar(select(Instance).where(Instance.container_id == cid))
        assert row is not None
        assert row.restarts == 1 and row.exit_code == 3
        assert "boom" in row.last_log


def test_run_intervals_use_engine_times_across_an_outage(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    [cid] = world.running("web")
    started = world.runtime.inspect(cid).started_at  # type: ignore[union-attr]
    # The control plane is down for an hour; the instance crashes 20 minutes in.
    world.clock.now += 1200
    world.runtime.crash(cid, 1)
    crashed_at = world.clock.now
    world.clock.now += 2400
    world.reconciler.run_once()
    with world.session() as s:
        rows = s.scalars(select(RunIntervalRow).where(RunIntervalRow.container_id == cid)).all()
    first = min(rows, key=lambda r: r.started_at)
    assert first.started_at == started
    assert first.stopped_at == crashed_at  # not the time the server came back


def test_containers_without_our_labels_are_never_touched(world: World) -> None:
    foreign = FakeRuntime("someone-else", engine=world.runtime.engine, clock=world.clock)
    foreign.ensure_network("other-net", {})
    from berth.runtime.protocol import ContainerSpec

    info = foreign.run(
        ContainerSpec(
            "stranger", "berth/busybox:latest", 8080, 64 << 20, 10**8, 64, "other-net", {}
        )
    )
    world.settle()
    assert foreign.inspect(info.id).state == "running"  # type: ignore[union-attr]


def test_a_burst_of_changes_is_one_nginx_reload(world: World) -> None:
    """Many API writes between two passes cost one config apply, not one each."""
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    applied = len(world.nginx.applied)
    with world.session() as s:
        for n in range(20):
            hostname = f"d{n}.example.com"
            domains.add_domain(s, world.settings, world.tenant_id, "web", hostname)
            domains.approve_domain(s, hostname)  # only verified domains route
    world.settle(passes=3)
    assert len(world.nginx.applied) == applied + 1
    route = next(r for r in world.nginx.applied[-1].routes if r.app_name == "web")
    assert len(route.hostnames) == 21
