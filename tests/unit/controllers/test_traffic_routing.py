"""Traffic controls from the store to the leader's and a follower's nginx: the reconciler of the
shared unit-test world (real store, fake runtime, fake nginx) routes what update_traffic
stored, applies a change of controls alone (no instance changed), and a follower routes the
same. Every applied config is also rendered by the real renderer."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from berth.controllers.ingress_sync import IngressSync
from berth.domain import traffic as t
from berth.proxy.model import NginxPaths, Route
from berth.proxy.render import auth_files, render_nginx_conf
from berth.services import apps as svc
from berth.services import traffic as tsvc
from berth.store.tables import App
from tests.fakes import FakeNginx
from tests.unit.controllers.conftest import World, deploy

PATHS = NginxPaths.in_dir(Path("/srv/berth/nginx"))


def _route(nginx: FakeNginx, name: str) -> Route:
    cfg = nginx.applied[-1]
    render_nginx_conf(cfg, PATHS)  # what the real nginx manager would install
    return next(r for r in cfg.routes if r.app_name == name)


def _set(world: World, name: str, change: t.TrafficChange) -> bool:
    with world.session() as s:
        _, changed = tsvc.update_traffic(s, world.settings, world.tenant_id, name, change)
        return changed


def test_controls_reach_the_leader_and_a_follower(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("guarded"))
    deploy(world, "guarded")
    world.settle()
    assert _route(world.nginx, "guarded").controls is None

    users = (t.user_with_password("alice", "pw"),)
    assert _set(world, "guarded", t.TrafficChange(basic_auth=users, allow=("10.0.0.0/8",)))
    applied = len(world.nginx.applied)
    world.settle(passes=1)
    assert len(world.nginx.applied) == applied + 1  # a change of controls alone is applied
    controls = _route(world.nginx, "guarded").controls
    assert controls is not None
    assert controls.allow == ("10.0.0.0/8",) and controls.basic_auth == users
    assert len(auth_files(world.nginx.applied[-1])) == 1

    follower_nginx = FakeNginx()
    follower = IngressSync(world.settings, world.reconciler.sessions, follower_nginx)  # type: ignore[arg-type]
    assert follower.run_once() is True
    # Its upstreams follow the health the leader records (see test_ingress_sync).
    assert _route(follower_nginx, "guarded").controls == controls

    # The same value again changes nothing; a change does, on both.
    assert not _set(world, "guarded", t.TrafficChange(allow=("10.0.0.0/8",)))
    assert _set(world, "guarded", t.TrafficChange(rate_limit=t.RateLimit(5, 1)))
    world.settle(passes=1)
    assert follower.run_once() is True
    for nginx in (world.nginx, follower_nginx):
        limit = _route(nginx, "guarded").controls
        assert limit is not None and limit.rate_limit == t.RateLimit(5, 1)


def test_a_damaged_stored_value_serves_closed(world: World) -> None:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("damaged"))
    deploy(world, "damaged")
    with world.session() as s:
        s.execute(update(App).where(App.name == "damaged").values(traffic_json='{"allow": [1]}'))
        s.commit()
    world.settle()
    assert _route(world.nginx, "damaged").controls == t.UNREADABLE  # the maintenance page
