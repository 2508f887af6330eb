"""Rendering nginx.conf: deterministic, complete, and impossible to inject into."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.proxy import render as render_module
from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream
from berth.proxy.render import render_nginx_conf

PATHS = NginxPaths.in_dir(Path("/var/lib/berth/nginx"))
ROOT_PATHS = NginxPaths.in_dir(
    Path("/var/lib/berth/nginx"), worker_user="nobody", worker_group="nogroup"
)


def route(
    app_id: str = "a1",
    name: str = "shop",
    hostnames: tuple[str, ...] = ("shop.example.test",),
    ports: tuple[int, ...] = (9001,),
    state: str = "serving",
) -> Route:
    return Route(
        app_id=app_id,
        app_name=name,
        tenant_id="t1",
        hostnames=hostnames,
        upstreams=tuple(Upstream("127.0.0.1", p) for p in ports),
        state=state,  # type: ignore[arg-type]
    )


def config(*routes: Route, generation: int = 1) -> ProxyConfig:
    return ProxyConfig("0.0.0.0", 8080, routes, generation)


def render(*routes: Route, generation: int = 1) -> str:
    return render_nginx_conf(config(*routes, generation=generation), PATHS)


def server_block(conf: str, hostname: str) -> str:
    """The text of the server block whose server_name lists ``hostname``."""
    start = conf.index(f"server_name {hostname}")
    end = conf.index("\n    }\n", start)
    return conf[start:end]


# -- the whole file ----------------------------------------------------------------------


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    a = route("a1", "shop", ("www.shop.example.test", "shop.example.test"), (9002, 9001))
    b = route("b2", "blog", ("blog.example.test",), (9003,))
    assert render(a, b) == render(a, b)
    reordered = route("a1", "shop", ("shop.example.test", "www.shop.example.test"), (9001, 9002))
    assert render(a, b) == render(b, reordered)


def test_config_is_self_contained_under_the_conf_dir() -> None:
    conf = render()
    assert "daemon on;" in conf
    assert "master_process on;" in conf
    assert "pid /var/lib/berth/nginx/nginx.pid;" in conf
    assert "error_log /var/lib/berth/nginx/error.log warn;" in conf
    assert "access_log /var/lib/berth/nginx/access.log" in conf
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path /var/lib/berth/nginx/tmp/{kind};" in conf
    assert "include" not in conf  # nothing from the system config leaks in


def test_proxy_settings_retry_a_dying_instance() -> None:
    conf = render(route())
    for directive in (
        "server_tokens off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Request-Id $request_id;",
        "proxy_connect_timeout 2s;",
        "proxy_next_upstream error timeout http_502 http_503 http_504;",
        "proxy_next_upstream_tries 3;",
        "proxy_next_upstream_timeout",
    ):
        assert directive in conf


def test_workers_drop_privileges_only_when_running_as_root() -> None:
    cfg = config(route())
    assert "user nobody nogroup;" in render_nginx_conf(cfg, ROOT_PATHS)
    assert not re.search(r"^user ", render_nginx_conf(cfg, PATHS), re.MULTILINE)


def test_generation_is_served_by_the_default_server() -> None:
    conf = render(generation=42)
    default = conf[
        conf.index("default_server;") : conf.index("\n    }\n", conf.index("default_server;"))
    ]
    assert "location = /__berth/generation" in default
    assert 'return 200 "42";' in default


def test_unknown_hosts_get_a_404_page() -> None:
    conf = render(route())
    assert "listen 0.0.0.0:8080 default_server;" in conf
    assert re.search(r'return 404 "[^"]*No app is configured for this host', conf)


def test_ipv6_listen_address_is_bracketed() -> None:
    cfg = ProxyConfig("::", 8080, (), 1)
    assert "listen [::]:8080 default_server;" in render_nginx_conf(cfg, PATHS)


# -- routes ------------------------------------------------------------------------------


def test_serving_route_has_an_upstream_with_every_instance() -> None:
    conf = render(route("a1", "shop", ("shop.example.test", "www.shop.example.test"), (9001, 9002)))
    upstream = conf[conf.index("upstream a1_berth_app {") :]
    upstream = upstream[: upstream.index("}")]
    assert "server 127.0.0.1:9001 max_fails=1 fail_timeout=2s;" in upstream
    assert "server 127.0.0.1:9002 max_fails=1 fail_timeout=2s;" in upstream
    assert "keepalive 16;" in upstream
    block = server_block(conf, "shop.example.test")
    assert "server_name shop.example.test www.shop.example.test;" in block
    assert "proxy_pass http://a1_berth_app;" in block


def test_duplicate_instances_are_listed_once() -> None:
    conf = render(route(ports=(9001, 9001)))
    assert conf.count("server 127.0.0.1:9001 ") == 1


def test_no_instances_route_answers_503_with_a_clear_page() -> None:
    conf = render(route(name="shop", ports=(), state="no_instances"))
    block = server_block(conf, "shop.example.test")
    assert re.search(r'return 503 "[^"]*shop has no healthy instances', block)
    assert "proxy_pass" not in block
    assert "upstream a1_berth_app" not in conf


def test_suspended_route_answers_503_even_with_instances() -> None:
    conf = render(route(ports=(9001,), state="suspended"))
    block = server_block(conf, "shop.example.test")
    assert re.search(r'return 503 "[^"]*This app is suspended', block)
    assert "proxy_pass" not in block
    assert "127.0.0.1:9001" not in conf


def test_serving_route_without_instances_says_so_instead_of_breaking_nginx() -> None:
    conf = render(route(ports=(), state="serving"))
    assert "upstream a1_berth_app" not in conf
    assert "shop has no healthy instances" in conf


def test_serving_route_has_a_page_for_when_every_instance_fails() -> None:
    block = server_block(render(route()), "shop.example.test")
    assert "error_page 502 504 @berth_not_responding;" in block
    assert "shop is not responding" in block


# -- validation (defence in depth) -------------------------------------------------------

BAD_HOSTNAMES = [
    "evil.example.test;",
    "evil.example.test; include /etc/passwd",
    "evil.example.test}",
    "evil.example.test }",
    "evil example.test",
    "evil.example.test\n",
    "evil\n.example.test",
    "evil..example.test",
    ".example.test",
    "example.test.",
    "Shop.Example.Test",
    "-shop.example.test",
    "shop-.example.test",
    "localhost",
    "",
    "shop.example.test$host",
    'shop.example.test"',
    "*.example.test",
    "~^.*$",
    "a" * 64 + ".example.test",
    ".".join(["a" * 63] * 4) + ".test",  # > 253 characters
]


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_invalid_hostnames_are_rejected(hostname: str) -> None:
    with pytest.raises(ValueError):
        render(route(hostnames=("ok.example.test", hostname)))


def test_longest_valid_hostname_is_accepted() -> None:
    hostname = ".".join(["a" * 63] * 3) + "." + "b" * 61
    assert len(hostname) == 253
    assert f"server_name {hostname};" in render(route(hostnames=(hostname,)))


def test_route_without_hostnames_is_rejected() -> None:
    with pytest.raises(ValueError):
        render(route(hostnames=()))


@pytest.mark.parametrize("app_id", ["", "A1", "a-1", "a_1", "a1;", "a1 b", "a1\n", "x" * 65])
def test_invalid_app_ids_are_rejected(app_id: str) -> None:
    with pytest.raises(ValueError):
        render(route(app_id=app_id))


@pytest.mark.parametrize("name", ["", "Shop", "shop;", "shop\n", "-shop", "$shop", 'sh"op'])
def test_invalid_app_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        render(route(name=name))


def test_a_hostname_claimed_by_two_apps_is_rejected() -> None:
    with pytest.raises(ValueError, match="claimed"):
        render(
            route("a1", hostnames=("shop.example.test",)),
            route("b2", hostnames=("shop.example.test",)),
        )


def test_a_duplicate_app_id_is_rejected() -> None:
    with pytest.raises(ValueError):
        render(
            route("a1", hostnames=("a.example.test",)), route("a1", hostnames=("b.example.test",))
        )


@pytest.mark.parametrize(
    "upstream",
    [
        Upstream("127.0.0.1", 0),
        Upstream("127.0.0.1", 65536),
        Upstream("localhost", 9000),
        Upstream("127.0.0.1;", 9000),
        Upstream("127.0.0.1", True),
    ],
)
def test_invalid_upstreams_are_rejected(upstream: Upstream) -> None:
    bad = Route("a1", "shop", "t1", ("shop.example.test",), (upstream,), "serving")
    with pytest.raises(ValueError):
        render(bad)


def test_a_route_equal_to_a_rendered_one_is_validated_again() -> None:
    # Validated routes are cached by value, and port True equals port 1 (and hashes alike).
    good = Route("a1", "shop", "t1", ("shop.example.test",), (Upstream("127.0.0.1", 1),), "serving")
    assert "server 127.0.0.1:1 " in render(good)
    bad = Route(
        "a1", "shop", "t1", ("shop.example.test",), (Upstream("127.0.0.1", True),), "serving"
    )
    assert bad == good
    with pytest.raises(ValueError):
        render(bad)


def test_invalid_state_is_rejected() -> None:
    with pytest.raises(ValueError):
        render(route(state="paused"))


@pytest.mark.parametrize(
    ("host", "port"), [("0.0.0.0; user root", 80), ("example.com", 80), ("0.0.0.0", 0)]
)
def test_invalid_listen_address_is_rejected(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        render_nginx_conf(ProxyConfig(host, port, (), 1), PATHS)


@pytest.mark.parametrize("generation", [-1, True, "1"])
def test_invalid_generation_is_rejected(generation: object) -> None:
    with pytest.raises(ValueError):
        render_nginx_conf(ProxyConfig("0.0.0.0", 80, (), generation), PATHS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "conf_dir", ["relative/dir", "/var/lib/my nginx", "/var/lib/a;b", "/tmp/$x"]
)
def test_unsafe_conf_dir_is_rejected(conf_dir: str) -> None:
    with pytest.raises(ValueError):
        render_nginx_conf(config(), NginxPaths.in_dir(Path(conf_dir)))


def test_worker_user_is_validated() -> None:
    paths = NginxPaths.in_dir(Path("/x"), worker_user="nobody; daemon off", worker_group="g")
    with pytest.raises(ValueError):
        render_nginx_conf(config(), paths)


# -- property ----------------------------------------------------------------------------

SERVER_NAME_LINE = re.compile(r"^\s*server_name (.*);$", re.MULTILINE)
hostname_text = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[a-zA-Z0-9.\-;{} \n_*$]{1,40}", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,5}){1,3}\n?", fullmatch=True),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostnames=st.lists(hostname_text, min_size=1, max_size=4))
def test_arbitrary_hostnames_are_rejected_or_rendered_safely(hostnames: list[str]) -> None:
    try:
        conf = render(route(hostnames=tuple(hostnames)))
    except ValueError:
        return
    names = SERVER_NAME_LINE.findall(conf)
    assert names  # the default server's "_" plus the route
    for line in names:
        if line == "_":
            continue
        for name in line.split(" "):
            assert re.fullmatch(r"[a-z0-9.-]+", name), name
    # Every rendered server_name came from the input, and nothing else got in.
    rendered = {n for line in names if line != "_" for n in line.split(" ")}
    assert rendered == set(hostnames)


# -- route blocks kept by value ------------------------------------------------------------


def test_route_blocks_are_laid_out_as_nginx_expects() -> None:
    shop = route("a1", "shop", ("shop.example.test", "www.shop.example.test"), (9002, 9001))
    blog = route("b2", "blog", ("blog.example.test",), (), state="no_instances")
    conf = render(shop, blog)
    assert (
        "    proxy_next_upstream_timeout 10s;\n"
        "\n"
        "    # app shop (a1)\n"
        "    upstream a1_berth_app {\n"
        "        server 127.0.0.1:9001 max_fails=1 fail_timeout=2s;\n"
        "        server 127.0.0.1:9002 max_fails=1 fail_timeout=2s;\n"
        "        keepalive 16;\n"
    ) in conf
    assert conf.count("\n    upstream ") == 1  # none for a route that does not serve
    assert (
        "\n    # app shop (a1): serving\n"
        "    server {\n"
        "        listen 0.0.0.0:8080;\n"
        "        server_name shop.example.test www.shop.example.test;\n"
        "        set $berth_app a1;\n"
        "\n"
        "        location / {\n"
        "            proxy_pass http://a1_berth_app;\n"
        "        }\n"
    ) in conf
    assert (
        "    # app blog (b2): no_instances\n"
        "    server {\n"
        "        listen 0.0.0.0:8080;\n"
        "        server_name blog.example.test;\n"
        "        set $berth_app b2;\n"
        "\n"
        "        location / {\n"
        "            default_type text/html;\n"
        '            add_header Retry-After "30" always;\n'
        '            add_header Cache-Control "no-store" always;\n'
        '            return 503 "<!doctype html>'
    ) in conf
    assert conf.endswith('</html>\\n";\n        }\n    }\n}\n')


def test_a_rerender_from_kept_blocks_equals_a_fresh_render() -> None:
    shop = route("a1", "shop", ("shop.example.test",), (9001,))
    blog = route("b2", "blog", ("blog.example.test",), (9003,))
    render(shop, blog)
    blog_moved = route("b2", "blog", ("blog.example.test",), (9003, 9004))
    shop_down = route("a1", "shop", ("shop.example.test",), (), state="no_instances")
    again = render(shop_down, blog_moved, generation=2)
    for kept in (render_module._upstream_block, render_module._server_block):
        kept.cache_clear()
    render_module._cached_route_view.cache_clear()
    assert render(shop_down, blog_moved, generation=2) == again
    assert "server 127.0.0.1:9004 " in again and "proxy_pass http://a1_berth_app" not in again
