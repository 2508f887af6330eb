"""Config rendering of the edge benchmark's prototypes (bench/edge/configs.py)."""

from __future__ import annotations

import json
import re

import pytest
from bench.edge.configs import (
    backend_tag,
    caddy_route_id,
    check_domain,
    check_port,
    haproxy_backend,
    lua_routes_body,
    render_backends_nginx,
    render_caddy,
    render_haproxy,
    render_nginx_lua,
    render_nginx_reload,
    upstream_name,
)

ROUTES = {"d0.edge.test": [20001], "shop-1.example.org": [20002, 20003]}


@pytest.mark.parametrize(
    "bad",
    ["", "a b.test", "x.test;}", "x.test\nserver", "UPPER.test", "-a.test", "a..test", "a" * 64],
)
def test_a_name_that_is_not_a_hostname_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a hostname"):
        check_domain(bad)
    with pytest.raises(ValueError):
        render_nginx_reload("/p", 8080, {bad: [20001]})
    with pytest.raises(ValueError):
        lua_routes_body({bad: [20001]})
    with pytest.raises(ValueError):
        render_haproxy("/p", 8080, {bad: [20001]}, 1)
    with pytest.raises(ValueError):
        render_caddy(8080, 8081, {bad: [20001]})


@pytest.mark.parametrize("bad", [0, 65536, -1, True])
def test_a_port_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="not a port"):
        check_port(bad)
    with pytest.raises(ValueError):
        render_nginx_reload("/p", 8080, {"d0.edge.test": [bad]})


def test_a_domain_without_upstreams_is_refused() -> None:
    with pytest.raises(ValueError, match="no upstreams"):
        render_nginx_reload("/p", 8080, {"d0.edge.test": []})
    with pytest.raises(ValueError, match="no upstreams"):
        lua_routes_body({"d0.edge.test": []})


def test_nginx_reload_config_has_a_server_and_an_upstream_per_domain() -> None:
    conf = render_nginx_reload("/tmp/p", 8080, ROUTES)
    assert conf.count("server_name ") == 2
    assert "listen 127.0.0.1:8080 default_server; return 404;" in conf
    assert (
        f"upstream {upstream_name('shop-1.example.org')} "
        "{ server 127.0.0.1:20002; server 127.0.0.1:20003; keepalive 16; }"
    ) in conf
    assert "server_name d0.edge.test; location / { proxy_pass http://u_d0_edge_test;" in conf
    assert "pid /tmp/p/nginx.pid;" in conf
    assert conf.count("{") == conf.count("}")


def test_nginx_lua_config_has_no_routes_and_loads_the_distro_module() -> None:
    conf = render_nginx_lua("/tmp/p", 8080, 8081)
    assert "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;" in conf
    assert "lua_shared_dict routes" in conf
    assert "balancer_by_lua_block" in conf
    assert "listen 127.0.0.1:8080 default_server;" in conf
    assert "listen 127.0.0.1:8081;" in conf
    assert "edge.test" not in conf
    assert conf.count("{") == conf.count("}")


def test_lua_control_body_is_one_line_per_domain() -> None:
    body = lua_routes_body(ROUTES).decode()
    assert body.splitlines() == ["d0.edge.test 20001", "shop-1.example.org 20002 20003"]


def test_haproxy_config_maps_each_host_to_its_backend_and_keeps_spare_backends() -> None:
    cfg, hosts = render_haproxy("/tmp/p", 8080, ROUTES, slots=3)
    assert hosts.splitlines() == [
        "d0.edge.test be_d0.edge.test",
        "shop-1.example.org be_shop-1.example.org",
    ]
    assert "stats socket /tmp/p/admin.sock mode 600 level admin" in cfg
    assert "map(/tmp/p/hosts.map,be_404)" in cfg
    assert f"backend {haproxy_backend('shop-1.example.org')}\n" in cfg
    assert "    server s20002 127.0.0.1:20002\n    server s20003 127.0.0.1:20003\n" in cfg
    assert re.findall(r"^backend slot_\d+$", cfg, re.M) == [
        "backend slot_0",
        "backend slot_1",
        "backend slot_2",
    ]
    assert "bind 127.0.0.1:8080" in cfg


def test_caddy_config_is_a_route_per_domain_then_a_404() -> None:
    config = json.loads(render_caddy(8080, 8081, ROUTES))
    assert config["admin"]["listen"] == "127.0.0.1:8081"
    server = config["apps"]["http"]["servers"]["edge"]
    assert server["listen"] == ["127.0.0.1:8080"]
    assert server["automatic_https"] == {"disable": True}
    routes = server["routes"]
    assert [r.get("@id") for r in routes] == [
        caddy_route_id("d0.edge.test"),
        caddy_route_id("shop-1.example.org"),
        None,
    ]
    assert routes[1]["match"] == [{"host": ["shop-1.example.org"]}]
    assert routes[1]["handle"][0]["upstreams"] == [
        {"dial": "127.0.0.1:20002"},
        {"dial": "127.0.0.1:20003"},
    ]
    assert routes[-1]["handle"] == [{"handler": "static_response", "status_code": 404}]


def test_backends_answer_their_own_tag() -> None:
    conf = render_backends_nginx("/tmp/p", [20001, 20002])
    assert (
        "listen 127.0.0.1:20001; location / { default_type text/plain; "
        f'return 200 "{backend_tag(20001)}\\n"; }}'
    ) in conf
    assert "listen 127.0.0.1:20002;" in conf
    assert backend_tag(20001) == "b20001"
