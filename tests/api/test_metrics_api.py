"""Metrics through the API and the CLI: an app's series summed over every server's rows, the
tenant boundary (another tenant's app is a 404, /metrics shows a tenant only its apps), bad
windows refused with a 422, the Prometheus text parsed strictly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from berth.cli import main as cli_main
from berth.cli import metrics_cmd
from berth.cli.client import ApiClient, CliConfig
from berth.metrics import histogram
from berth.metrics import store as mstore
from berth.metrics.model import AppBucket, InstanceSample
from tests.api.conftest import Env, assert_error
from tests.promtext import parse

pytestmark = pytest.mark.store
MIB = 1 << 20


def traffic(requests: int, s5xx: int, body: int, latency_ms: int) -> AppBucket:
    bucket = AppBucket(requests=requests, body_bytes=body)
    bucket.by_class[1], bucket.by_class[4] = requests - s5xx, s5xx
    bucket.latency = {histogram.bucket_of(latency_ms * 1000): requests}
    return bucket


def seed(env: Env, app_id: str, tenant_id: str, start: int) -> None:
    """Two servers saw this app's traffic in the same minute; one engine runs its instance."""
    with env.platform.sessions.begin() as session:
        mstore.add_app_buckets(session, "server-a", {(app_id, start): traffic(600, 6, 6000, 3)})
        mstore.add_app_buckets(session, "server-b", {(app_id, start): traffic(300, 0, 3000, 40)})
        sample = InstanceSample("i-" + app_id[:8], app_id, tenant_id, "c" * 64, start + 5.0,
                                9_000_000, 3_000_000, 48 * MIB, 2)  # fmt: skip
        mstore.add_instance_samples(session, "server-a", [sample], 60)


@pytest.fixture(scope="module")
def world(env: Env) -> dict[str, str]:
    a, b = env.signup("metrics-a"), env.signup("metrics-b")
    app_a = env.create_app(a.session, env.unique("shop"))
    app_b = env.create_app(b.session, env.unique("blog"))
    # The last whole minute and the current one: whichever minute a scrape falls in, the
    # last whole minute before it holds one of them.
    minute = int(time.time()) // 60 * 60
    for start in (minute - 60, minute):
        seed(env, app_a["id"], env.tenant_id(a.tenant), start)
        seed(env, app_b["id"], env.tenant_id(b.tenant), start)
    return {"a": a.session, "b": b.session, "app_a": app_a["name"], "app_b": app_b["name"],
            "tenant_a": a.tenant, "tenant_b": b.tenant, "minute": str(minute),
            "read_a": env.mint(a.session, "read")["token"]}  # fmt: skip


def test_an_apps_series_sums_every_servers_rows(env: Env, world: dict[str, str]) -> None:
    data = env.ok("GET", f"/apps/{world['app_a']}/metrics?since=10m&step=1m", world["a"])
    totals = data["totals"]
    assert totals["requests"] == 1800
    assert totals["status"] == {"1xx": 0, "2xx": 1788, "3xx": 0, "4xx": 0, "5xx": 12}
    assert totals["body_bytes"] == 18000
    assert totals["p50_ms"] == histogram.upper_bound_ms(histogram.bucket_of(3000))
    assert totals["p99_ms"] == histogram.upper_bound_ms(histogram.bucket_of(40_000))
    busy = {p["t"]: p for p in data["points"] if p["requests"]}
    whole = busy[int(world["minute"]) - 60]
    assert whole["requests"] == 900 and whole["requests_per_second"] == 15.0
    (instance,) = data["instances"]
    assert instance["memory_bytes"] == 48 * MIB and instance["restarts"] == 2
    cpu = {p["t"]: p["cpu_cores"] for p in instance["points"]}
    assert cpu[int(world["minute"]) - 60] == pytest.approx(0.05)  # 3 s of CPU in 60 s


def test_another_tenants_app_is_not_found(env: Env, world: dict[str, str]) -> None:
    resp = env.call("GET", f"/apps/{world['app_b']}/metrics", world["a"])
    assert_error(resp, 404, "app_not_found")
    resp = env.call("GET", f"/apps/{world['app_b']}/metrics", world["b"], tenant=world["tenant_a"])
    assert resp.status_code in (403, 404)


@pytest.mark.parametrize(
    "query",
    ["since=1w", "since=0s", "since=-1h", "since=1h%0A", "since=30d", "step=7s",
     "step=1m&since=30s", "since=24h&step=10s", "since=" + "9" * 20],
)  # fmt: skip
def test_bad_windows_are_refused(env: Env, world: dict[str, str], query: str) -> None:
    resp = env.call("GET", f"/apps/{world['app_a']}/metrics?{query}", world["a"])
    assert resp.status_code == 422, (query, resp.text)
    assert resp.json()["error"]["code"] in ("invalid_duration", "invalid_window", "invalid")


def test_prometheus_needs_a_token_and_scopes_it(env: Env, world: dict[str, str]) -> None:
    client = env.client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401

    def scraped(token: str) -> list[tuple[str, dict[str, str], float]]:
        resp = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        types, samples = parse(resp.text)
        assert types["berth_app_requests"] == "gauge"
        return samples

    for token in (world["a"], world["read_a"]):  # a login session or a read-only API token
        mine = scraped(token)
        counted = {
            (labels["app"], labels["status_class"]): value
            for name, labels, value in mine
            if name == "berth_app_requests"
        }
        assert counted == {
            (world["app_a"], "1xx"): 0, (world["app_a"], "2xx"): 894,
            (world["app_a"], "3xx"): 0, (world["app_a"], "4xx"): 0, (world["app_a"], "5xx"): 6,
        }  # fmt: skip
        assert {labels["app"] for _, labels, _ in mine if "app" in labels} == {world["app_a"]}
    everything = scraped(env.admin)
    seen = {
        labels["app"] for name, labels, _ in everything if name == "berth_instance_memory_bytes"
    }
    assert {world["app_a"], world["app_b"]} <= seen


def test_the_cli_draws_and_tabulates(
    env: Env, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = cli_runner(env, monkeypatch, world["a"])
    shown = run("metrics", world["app_a"], "--since", "10m")
    assert shown.exit_code == 0, shown.output
    assert "requests/s" in shown.output and "p95" in shown.output
    assert "1800" in shown.output and "48.0 MiB" in shown.output
    assert any(block in shown.output for block in "▁▂▃▄▅▆▇█")
    refused = run("metrics", world["app_a"], "--since", "1w")
    assert refused.exit_code == 1 and "since must be" in str(refused.exception)
    missing = run("metrics", world["app_b"])
    assert missing.exit_code == 1 and "not found" in str(missing.exception)


def cli_runner(env: Env, monkeypatch: pytest.MonkeyPatch, token: str) -> Callable[..., Result]:
    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=token))
        api.http = TestClient(env.app, base_url="http://testserver",
                              headers={"Authorization": f"Bearer {token}"},
                              raise_server_exceptions=False)  # fmt: skip
        return api

    monkeypatch.setattr(metrics_cmd, "client", api_client)

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli_main.app, list(args), env={"COLUMNS": "200"})

    return run


def test_sparkline_scales_to_the_largest() -> None:
    assert metrics_cmd.sparkline([0, 5, 10, None]) == "▁▄█ "
    assert metrics_cmd.sparkline([0, 0]) == "▁▁"
