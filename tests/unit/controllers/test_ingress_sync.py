"""A follower's ingress routes what the leader's reconciler routes, from the store alone.

The leader is the reconciler of the shared unit-test world (real store, fake runtime, fake
nginx, fake health checks); the follower is an IngressSync over the same store with an nginx of
its own. After each change the leader settles, and the follower's routes must equal the
leader's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import select

from berth.controllers.ingress_sync import IngressSync, plan_from_rows
from berth.controllers.snapshot import load_apps
from berth.services import apps as svc
from berth.store.tables import Instance, Meta
from tests.fakes import FakeNginx
from tests.unit.controllers.conftest import World, deploy


@pytest.fixture(autouse=True)
def checked(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader records each instance's check in its row (what a follower routes from):
    the fake health gives a checked state, as the real monitor does after a round."""

    def state_of(container_id: str) -> SimpleNamespace:
        ok = world.health.is_healthy(container_id)
        return SimpleNamespace(healthy=ok, last_checked=1.0, last_error="" if ok else "failing")

    monkeypatch.setattr(world.health, "state_of", state_of)


def _follower(world: World) -> tuple[IngressSync, FakeNginx]:
    nginx = FakeNginx()
    return IngressSync(world.settings, world.reconciler.sessions, nginx), nginx  # type: ignore[arg-type]


def _routes(nginx: FakeNginx) -> object:
    return nginx.applied[-1].routes


def test_the_follower_routes_what_the_leader_routes(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
        svc.scale_app(s, world.settings, world.tenant_id, "web", 2)
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("idle"))
    deploy(world, "web")
    world.settle()
    follower, nginx = _follower(world)
    assert follower.run_once() is True
    assert _routes(nginx) == _routes(world.nginx)
    ports = {c.host_port for c in world.runtime.list() if c.state == "running"}
    assert nginx.upstream_ports("web") == ports and len(ports) == 2
    assert {r.app_name: r.state for r in _routes(nginx)} == {  # type: ignore[attr-defined]
        "idle": "no_instances",
        "web": "serving",
    }
    # Nothing changed: nothing applied again.
    assert follower.run_once() is False
    assert len(nginx.applied) == 1

    # An instance fails its check: the leader records it unhealthy, both stop routing it.
    sick = world.running("web")[0]
    world.health.failing.add(sick)
    world.settle()
    assert follower.run_once() is True
    assert _routes(nginx) == _routes(world.nginx)
    assert len(nginx.upstream_ports("web")) == 1
    # A generation only grows on the follower's nginx, and is never behind the leader's.
    generations = [cfg.generation for cfg in nginx.applied]
    assert generations == sorted(set(generations))
    with world.session() as s:
        stored = s.get(Meta, "proxy_generation")
        assert stored is not None
        assert generations[-1] >= int(stored.value.partition(":")[0])


def test_a_suspended_tenants_apps_answer_suspended_on_the_follower_too(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    from berth.store.tables import Tenant

    with world.session() as s:
        tenant = s.get(Tenant, world.tenant_id)
        assert tenant is not None
        tenant.suspended_at = world.clock.now
        s.commit()
    world.settle()
    follower, nginx = _follower(world)
    follower.run_once()
    assert _routes(nginx) == _routes(world.nginx)
    assert [r.state for r in _routes(nginx)] == ["suspended"]  # type: ignore[attr-defined]


def test_rows_without_an_address_or_not_running_never_route(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    with world.session() as s:
        apps = load_apps(s)
        rows = list(s.scalars(select(Instance)))
        assert rows and all(r.healthy for r in rows)
        [route] = plan_from_rows(apps, rows, world.settings.base_domain)
        assert route.state == "serving"
        for row in rows:
            row.address = None
        assert plan_from_rows(apps, rows, world.settings.base_domain)[0].upstreams == ()
        for row in rows:
            row.address, row.state = "127.0.0.1", "stopping"
        assert plan_from_rows(apps, rows, world.settings.base_domain)[0].upstreams == ()
        s.rollback()


def test_start_and_stop_can_repeat(world: World) -> None:
    """A server may follow, lead, and follow again: the loop starts anew each time."""
    follower, _ = _follower(world)
    for _ in range(2):
        follower.start()
        assert follower.running
        follower.stop()
        assert not follower.running
