"""A deploy whose health check never passes is reported as failed and leaves the serving release
alone: users keep being served by it, and nothing of the new release stays behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import BUSYBOX_APP, BerthServer, wait_until, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

# A failing health check fails the deployment at this deadline.
BERTH_SERVER_OPTIONS = {"deploy_timeout": 10.0}
PAGE_TEXT = "hello from berth (busybox httpd)"

# Serves, but not the app's health path ("/" answers 404: there is no index), and stops at once
# on SIGTERM (a shell with a trap as PID 1, httpd in the background).
SERVES_NOTHING = """\
FROM berth/busybox:latest
RUN mkdir -p /empty
CMD ["sh", "-c", "httpd -p 8080 -h /empty; trap 'exit 0' TERM; while :; do sleep 1; done"]
"""


def _release_ids(berth: BerthServer, app: str) -> dict[int, str]:
    return {r["version"]: r["id"] for r in berth.api_json("GET", f"/apps/{app}/releases")}


def test_release_failing_its_health_check_is_rolled_back(
    berth: BerthServer, tmp_path: Path
) -> None:
    app = "healthy"
    berth.create_app(app)
    berth.cli_ok("scale", app, "2")
    v1 = berth.deploy_dir(app, BUSYBOX_APP)
    assert v1["deployment"]["status"] == "succeeded"
    berth.wait_converged(app, 2)
    v1_containers = {c.id for c in berth.containers(app)}

    bad_dir = write_app(tmp_path / "unhealthy", SERVES_NOTHING)
    since = time.time()
    with berth.client_loop(app, max_seconds=60, max_requests=3000, pause=0.02) as loop:
        loop.wait_for_requests(5)
        result = berth.cli("deploy", app, str(bad_dir), timeout=120)
    assert result.returncode == 1, result
    assert "failed" in result.stderr
    assert "health check" in result.stderr
    # Users of the app never noticed.
    assert loop.result.failures == [], loop.result.failures[:5]
    assert all(PAGE_TEXT in body for body in loop.result.bodies)

    info = berth.cli_json("apps", "info", app)
    assert info["deployment"]["status"] == "failed"
    assert info["deployment"]["release_version"] == 2
    assert info["serving_release"] == 1
    assert info["target_release"] == 1
    releases = {r["version"]: r for r in berth.cli_json("releases", app)}
    assert releases[1]["serving"] and not releases[2]["serving"]
    v2_release = _release_ids(berth, app)[2]

    def only_v1_left() -> bool:
        containers = berth.containers(app)
        return (
            not any(c.labels.get("berth.release") == v2_release for c in containers)
            and len(containers) == 2
        )

    wait_until(only_v1_left, 30, "the v2 containers are gone")
    assert berth.containers_created(app, since) == 2, "v2 got exactly its 2 instances"
    assert {c.id for c in berth.containers(app)} == v1_containers
    assert PAGE_TEXT in (berth.app_body(app) or "")
    rows = berth.ps(app)
    assert {r["release_version"] for r in rows} == {1}
    assert all(r["healthy"] for r in rows)
