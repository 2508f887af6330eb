"""Request bodies limited per plan: the plan model's bounds, the planner carrying the limit into
each route (the plan's own, else the setting), and the renderer writing it into every server
block of the app (plain HTTP and HTTPS) and refusing anything but an int in range."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from berth.billing.money import get_currency
from berth.billing.plans import (
    REQUEST_BODY_MB_MAX,
    Plan,
    PlanLimits,
    check_request_body_mb,
    request_body_mb,
)
from berth.controllers import reconciler
from berth.controllers.ingress_sync import routed_apps
from berth.controllers.snapshot import AppView
from berth.domain.model import DesiredApp, Revision
from berth.domain.routing import RoutedApp, plan_routes
from berth.errors import InvalidInput
from berth.ingress.node_config import routes_digest
from berth.proxy.model import NginxPaths, ProxyConfig, Route, ServedCertificate, TlsConfig, Upstream
from berth.proxy.render import render_nginx_conf
from berth.settings import Settings

PATHS = NginxPaths.in_dir(Path("/var/lib/berth/nginx"))
SHOP = "shop.example.test"
WWW = "www.shop.example.test"
BLOG = "blog.example.test"
BAD_VALUES: tuple[Any, ...] = (0, -1, REQUEST_BODY_MB_MAX + 1, 10**12, True, "5", 5.0, "5m")


def route(app_id: str = "a1", name: str = "shop", **fields: Any) -> Route:
    hostnames = fields.pop("hostnames", (SHOP, WWW))
    return Route(app_id, name, "t1", hostnames, (Upstream("127.0.0.1", 9001),), "serving", **fields)


def render(*routes: Route, tls: TlsConfig | None = None) -> str:
    return render_nginx_conf(ProxyConfig("0.0.0.0", 8080, routes, 1, tls=tls), PATHS)


def server_blocks(conf: str, app_id: str) -> list[str]:
    """The text of every server block rendered for ``app_id``."""
    blocks = []
    for part in conf.split("\n    server {\n")[1:]:
        block = part[: part.index("\n    }\n")]
        if f"set $berth_app {app_id};" in block or f"({app_id})" in block:
            blocks.append(block)
    return blocks


# -- the plan model ----------------------------------------------------------------------


def plan(**fields: Any) -> Plan:
    return Plan("p", get_currency("EUR"), 0, 0, PlanLimits(None, None, None, None), **fields)


def test_a_plan_takes_a_limit_in_range_or_none() -> None:
    assert plan().max_request_body_mb is None
    assert plan(max_request_body_mb=1).max_request_body_mb == 1
    assert plan(max_request_body_mb=REQUEST_BODY_MB_MAX).max_request_body_mb == 10240


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_a_plan_refuses_a_limit_out_of_range_or_not_an_int(bad: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        plan(max_request_body_mb=bad)
    assert err.value.code == "invalid_plan"
    assert "max_request_body_mb must be an integer from 1 to 10240" in str(err.value)


def test_the_limit_that_applies_is_the_plans_else_the_setting() -> None:
    assert request_body_mb(None, 64) == 64
    assert request_body_mb(2, 64) == 2
    assert check_request_body_mb(10240) == 10240
    with pytest.raises(InvalidInput):
        request_body_mb(None, 0)  # a setting out of range is no limit either


def test_the_setting_has_the_same_bounds() -> None:
    assert Settings().request_body_max_mb == 64
    for bad in (0, 10241):
        with pytest.raises(ValueError, match="request_body_max_mb"):
            Settings(request_body_max_mb=bad)


# -- the planner -------------------------------------------------------------------------


def view(app_id: str, name: str, tenant_id: str, max_body_mb: int | None) -> AppView:
    revision = Revision("r1", 1)
    desired = DesiredApp(app_id=app_id, scale=1, target=revision, serving=revision)
    return AppView(app_id, tenant_id, name, desired, (), max_body_mb=max_body_mb)


def test_each_route_carries_its_tenants_plan_limit_else_the_setting() -> None:
    apps = [view("a1", "small", "t1", 1), view("b2", "default", "t2", None)]
    routed = routed_apps(apps, "berth.test", 64)
    assert [a.max_body_mb for a in routed] == [1, 64]
    routes, _ = plan_routes(routed, [], lambda _: True)
    assert [(r.app_id, r.max_body_mb) for r in routes] == [("a1", 1), ("b2", 64)]
    # A change of plan is a different route (so a different config: a reload).
    changed, _ = plan_routes([replace(routed[0], max_body_mb=8)], [], lambda _: True)
    assert changed[0] != routes[0] and changed[0].max_body_mb == 8


def test_a_change_of_limit_is_a_change_of_every_routes_digest() -> None:
    # The leader, a follower and the ingress nodes each reload only when their digest moves.
    one, two = route(max_body_mb=1), route(max_body_mb=2)
    assert reconciler.routes_digest((one,)) != reconciler.routes_digest((two,))
    assert routes_digest((one,), 80) != routes_digest((two,), 80)
    assert repr((one,)) != repr((two,))  # berth.controllers.ingress_sync digests the repr


def test_without_a_setting_given_a_route_keeps_the_http_level_default() -> None:
    (app,) = routed_apps([view("a1", "small", "t1", None)], "berth.test")
    (only,), _ = plan_routes([app], [], lambda _: True)
    assert only.max_body_mb is None
    bare = RoutedApp("a1", "small", "t1", ("small.berth.test",), frozenset())
    (same,), _ = plan_routes([bare], [], lambda _: True)
    assert same.max_body_mb is None


# -- the renderer ------------------------------------------------------------------------


def test_the_limit_is_written_into_each_server_block_of_the_app() -> None:
    conf = render(route(max_body_mb=1), route("b2", "blog", hostnames=(BLOG,), max_body_mb=512))
    shop, blog = server_blocks(conf, "a1"), server_blocks(conf, "b2")
    assert len(shop) == 1 and len(blog) == 1
    assert "client_max_body_size 1m;" in shop[0]
    assert "client_max_body_size 512m;" in blog[0]
    assert "client_max_body_size 512m;" not in shop[0]
    assert "client_max_body_size 64m;" in conf  # the http level stays for unknown hosts


def test_no_limit_on_the_route_leaves_the_http_level_default() -> None:
    (block,) = server_blocks(render(route()), "a1")
    assert "client_max_body_size" not in block


def test_every_https_and_redirect_block_of_the_app_carries_it_too() -> None:
    served = ServedCertificate((SHOP, WWW), Path("/certs/shop/chain.pem"), Path("/certs/key.pem"))
    tls = TlsConfig(8443, (served,), redirect_apps=frozenset({"a1"}))
    conf = render(route(max_body_mb=3), tls=tls)
    blocks = server_blocks(conf, "a1")
    assert any("listen 0.0.0.0:8443 ssl http2;" in b for b in blocks)  # HTTPS
    assert any("return 308 https://" in b for b in blocks)  # HTTP to HTTPS
    assert len(blocks) >= 2
    for block in blocks:
        assert "client_max_body_size 3m;" in block, block
    without_redirect = replace(tls, redirect_apps=frozenset())
    plain_and_https = server_blocks(render(route(max_body_mb=3), tls=without_redirect), "a1")
    assert len(plain_and_https) == 2
    assert all("client_max_body_size 3m;" in b for b in plain_and_https)


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_a_bad_limit_is_refused_and_nothing_is_rendered(bad: Any) -> None:
    render(route(max_body_mb=1))  # a valid route of the same facts is in the cache
    with pytest.raises(ValueError, match="invalid request body limit for app 'a1'"):
        render(route(max_body_mb=bad))


def test_true_is_not_answered_from_the_cache_of_1() -> None:
    # True == 1 and hashes alike: only a plain int may be served from the route cache.
    assert "client_max_body_size 1m;" in render(route(max_body_mb=1))
    with pytest.raises(ValueError):
        render(route(max_body_mb=True))


def test_a_changed_limit_renders_a_changed_config() -> None:
    assert render(route(max_body_mb=1)) != render(route(max_body_mb=2))
    assert render(route(max_body_mb=2)) == render(route(max_body_mb=2))
