"""Metrics end to end: a real `berth server` (real engine, real nginx) counts a known load
through its ingress and its instance's cgroup, and `berth metrics` and `/metrics` show it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.harness import BUSYBOX_APP, BerthServer, wait_until
from tests.promtext import parse

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]
# Small buckets and quick passes, so the test sees its load within seconds.
BERTH_SERVER_OPTIONS = {
    "extra_env": {
        "BERTH_METRICS_BUCKET_SECONDS": "10",
        "BERTH_METRICS_FLUSH_SECONDS": "1",
        "BERTH_METRICS_ENGINE_INTERVAL_SECONDS": "1",
    }
}
APP = "counted"


def metrics(berth: BerthServer) -> dict[str, Any]:
    done = berth.cli("metrics", APP, "--since", "10m", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_a_known_load_shows_in_berth_metrics_and_prometheus(berth: BerthServer) -> None:
    berth.create_app(APP)
    result = berth.deploy_dir(APP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 1)
    before = metrics(berth)["totals"]["requests"]  # the deploy's own checks, if any

    host = berth.host_of(APP)
    sent_bytes = 0
    with httpx.Client(timeout=10, trust_env=False) as client:
        for n in range(300):
            path = "/no-such-page" if n % 10 == 0 else "/"
            response = client.get(f"http://{berth.host}:{berth.ingress_port}{path}",
                                  headers={"Host": host})  # fmt: skip
            assert response.status_code == (404 if n % 10 == 0 else 200)
            sent_bytes += len(response.content)

    data = wait_until(
        lambda: (d := metrics(berth))["totals"]["requests"] - before >= 300 and d,
        timeout=30,
        what="the load is counted",
    )
    totals = data["totals"]
    assert totals["requests"] - before == 300
    assert totals["status"]["4xx"] == 30
    assert totals["body_bytes"] >= sent_bytes
    wait_until(lambda: metrics(berth)["instances"], timeout=30, what="the instance is sampled")
    (instance,) = metrics(berth)["instances"]
    assert 0 < instance["memory_bytes"] < 256 << 20

    shown = berth.cli("metrics", APP, "--since", "10m")
    assert shown.returncode == 0 and "requests/s" in shown.stdout, shown.stderr

    auth = {"Authorization": f"Bearer {berth.token}"}
    scraped = httpx.get(f"{berth.api_url}/metrics", headers=auth, timeout=10, trust_env=False)
    assert scraped.status_code == 200
    types, _ = parse(scraped.text)
    assert types["berth_instance_memory_bytes"] == "gauge"
    assert httpx.get(f"{berth.api_url}/metrics", timeout=10, trust_env=False).status_code == 401
