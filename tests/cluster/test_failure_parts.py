"""The pure parts of the failure tests: how outcomes are counted around a cut link, and how an
app's upstreams are read from nginx.conf."""

from __future__ import annotations

from pathlib import Path

from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream
from berth.proxy.render import render_nginx_conf
from tests.cluster.berth_app import upstreams_in
from tests.cluster.traffic import Outcome, tally


def test_only_a_timeout_in_flight_at_a_cut_is_lost_with_the_link() -> None:
    outcomes = [
        Outcome(0.0, 0.1, 200, ""),
        Outcome(1.0, 11.0, None, "ReadTimeout"),  # sent before the cut at 2.0, no answer
        Outcome(1.5, 9.0, 504, "gateway timeout"),  # nginx's own timeout, in flight too
        Outcome(3.0, 13.0, None, "ReadTimeout"),  # sent after the cut: the ingress's fault
        Outcome(1.0, 1.2, 502, "bad gateway"),  # an error answer is never the link's
        Outcome(1.9, 2.5, None, "ConnectError"),  # not a timeout
    ]
    result = tally(outcomes, cuts=[2.0])
    assert (result.total, result.ok) == (6, 1)
    assert [o.started for o in result.in_flight_on_cut] == [1.0, 1.5]
    assert [o.started for o in result.failed] == [3.0, 1.0, 1.9]
    assert tally(outcomes).in_flight_on_cut == []  # no cut: every failure counts
    assert result.as_dict()["failed"] == 3


def test_an_apps_upstreams_are_read_from_the_rendered_config() -> None:
    routes = tuple(
        Route(
            app_id=f"id{i}",
            app_name=name,
            tenant_id="t1",
            hostnames=(f"{name}.example.test",),
            upstreams=tuple(Upstream(f"10.213.1.{i + 11}", 30000 + k) for k in range(i + 1)),
            state="serving",
        )
        for i, name in enumerate(["web", "web-2"])
    )
    cfg = ProxyConfig(listen_host="127.0.0.1", listen_port=8080, routes=routes, generation=1)
    conf = render_nginx_conf(cfg, NginxPaths.in_dir(Path("/var/lib/berth/nginx")))
    assert upstreams_in(conf, "web") == {"10.213.1.11:30000"}
    assert upstreams_in(conf, "web-2") == {"10.213.1.12:30000", "10.213.1.12:30001"}
    assert upstreams_in(conf, "gone") == set()
