"""The reconciler asks the egress filter about a tenant network before it runs anything on it,
and a network that cannot be filtered gets no container at all."""

from __future__ import annotations

from berth.netpolicy.plan import NetPolicyError
from berth.services import apps as svc
from tests.unit.controllers.conftest import World, deploy
from tests.unit.controllers.conftest import world as world  # the same fixture, shared


def test_network_is_filtered_before_the_first_container_runs(world: World) -> None:
    seen: list[tuple[str, int]] = []
    world.reconciler.workloads.network_ready = lambda name: seen.append(
        (name, len(world.runtime.list()))
    )
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.reconciler.run_once()
    assert seen and seen[0] == (f"berth-t-{world.tenant_id}", 0)
    assert len(world.running("web")) == 1


def test_an_unfilterable_network_runs_nothing(world: World) -> None:
    def refuse(name: str) -> None:
        raise NetPolicyError(f"network {name!r} cannot be egress-filtered; refusing to run on it")

    world.reconciler.workloads.network_ready = refuse
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.reconciler.run_once()
    assert world.runtime.list() == []
