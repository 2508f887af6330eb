"""What the renderer adds for metrics: the app's id set per server block (from the route,
never the Host), and the compact log only where the paths name one."""

from __future__ import annotations

import re
from pathlib import Path

from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream
from berth.proxy.render import render_nginx_conf


def config() -> ProxyConfig:
    routes = (
        Route(
            "a1", "shop", "t1", ("shop.example.test",), (Upstream("127.0.0.1", 9001),), "serving"
        ),
        Route("b2", "blog", "t2", ("blog.example.test",), (), "suspended"),
    )
    return ProxyConfig("0.0.0.0", 8080, routes, 3)


def test_every_apps_server_block_sets_its_own_id() -> None:
    conf = render_nginx_conf(config(), NginxPaths.in_dir(Path("/var/lib/berth/nginx")))
    blocks = re.findall(r"server_name ([^;]+);\n        set \$berth_app ([a-z0-9]+);", conf)
    assert blocks == [("shop.example.test", "a1"), ("blog.example.test", "b2")]
    assert "access_log /var/lib/berth/nginx/metrics.log berth_metrics buffer=64k flush=1s;" in conf
    assert (
        "log_format berth_metrics "
        "'$berth_app\\t$msec\\t$status\\t$body_bytes_sent\\t$request_time';" in conf
    )
    assert "$host" not in conf.split("log_format berth_metrics", 1)[1].split(";", 1)[0]


def test_no_metrics_log_where_the_paths_name_none() -> None:
    base = NginxPaths.in_dir(Path("/var/lib/berth-ingress"))
    paths = NginxPaths(**{**{f: getattr(base, f) for f in base.__slots__}, "metrics_log": None})
    conf = render_nginx_conf(config(), paths)
    assert "berth_metrics" not in conf
    assert "set $berth_app a1;" in conf  # harmless: logged nowhere
