"""The data plane outlives the control plane: with the Berth server stopped (SIGTERM) or killed
(SIGKILL), apps keep answering through nginx; a restarted server adopts the running containers
(same ids, not restarted, no duplicates) instead of starting new ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import BUSYBOX_APP, BerthServer, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "steady"
SCALE = 2
PAGE_TEXT = "hello from berth (busybox httpd)"


def _reconciler_passes(berth: BerthServer) -> int:
    status = berth.api_json("GET", "/status")
    match = re.search(r"\((\d+) passes\)", status["reconciler"])
    return int(match.group(1)) if match else -1


def _wait_passes(berth: BerthServer, n: int) -> None:
    """Let the reconcile loop run ``n`` more full passes."""
    start = _reconciler_passes(berth)
    wait_until(lambda: _reconciler_passes(berth) >= start + n, 30, f"{n} reconcile passes")


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except OSError:
        return False


def _started_at(berth: BerthServer) -> dict[str, str]:
    return {c.id: berth.inspect(c.id)["State"]["StartedAt"] for c in berth.containers(APP)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_apps_keep_serving_and_are_adopted_across_a_server_restart(
    fresh_berth: BerthServer, sig: signal.Signals
) -> None:
    berth = fresh_berth
    berth.create_app(APP)
    berth.cli_ok("scale", APP, str(SCALE))
    berth.deploy_dir(APP, BUSYBOX_APP)
    before_rows = berth.wait_converged(APP, SCALE)
    before = _started_at(berth)
    assert len(before) == SCALE

    with berth.client_loop(APP, max_seconds=60, max_requests=4000, pause=0.02) as loop:
        loop.wait_for_requests(10)
        code = berth.stop(sig)
        assert not berth.running
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        # Down: the API is gone, the apps are not.
        down_at = loop.result.total
        loop.wait_for_requests(down_at + 50)
        assert set(_started_at(berth)) == set(before)

        berth.start()
        rows: list[dict[str, Any]] = berth.wait_converged(APP, SCALE)
        _wait_passes(berth, 3)
        loop.wait_for_requests(loop.result.total + 20)
    result = loop.result
    assert result.failures == [], result.failures[:5]
    assert all(PAGE_TEXT in body for body in result.bodies)

    # Adopted, not restarted: the same containers, started at the same moment, no extras.
    assert _started_at(berth) == before
    assert len(berth.containers(APP, all=True)) == SCALE
    rows = berth.ps(APP)
    assert sorted(r["container_id"] for r in rows) == sorted(r["container_id"] for r in before_rows)
    assert all(r["state"] == "running" and r["healthy"] and r["restarts"] == 0 for r in rows)
    info = berth.cli_json("apps", "info", APP)
    assert info["serving_release"] == 1
    assert info["instances"] == {"desired": SCALE, "running": SCALE, "healthy": SCALE}
    # The restarted control plane still works: a scale change converges.
    berth.cli_ok("scale", APP, str(SCALE + 1))
    berth.wait_converged(APP, SCALE + 1)


def test_a_killed_nginx_is_replaced_and_routes_keep_working(fresh_berth: BerthServer) -> None:
    """kill -9 of nginx's master leaves its workers serving the old config; Berth notices,
    replaces them with a new master, and routes changes through it again."""
    berth = fresh_berth
    berth.create_app(APP)
    berth.deploy_dir(APP, BUSYBOX_APP)
    berth.wait_converged(APP, 1)
    master = int((berth.home / "nginx" / "nginx.pid").read_text())
    os.kill(master, signal.SIGKILL)

    def replaced() -> bool:
        status = berth.api_json("GET", "/status")
        return status["nginx"] == "running" and status["nginx_pid"] not in (None, master)

    wait_until(replaced, 30, "Berth runs a new nginx master")
    wait_until(lambda: PAGE_TEXT in (berth.app_body(APP) or ""), 30, "the app answers again")
    # The new master takes route changes: a second app is deployed and reachable.
    berth.create_app("second")
    result = berth.cli_json("deploy", "second", str(BUSYBOX_APP), timeout=120)
    assert result["deployment"]["status"] == "succeeded"
    assert PAGE_TEXT in (berth.app_body("second") or "")
    assert PAGE_TEXT in (berth.app_body(APP) or "")


def test_server_start_right_after_a_crash(real_platform: None) -> None:
    """`berth server start` after the server was killed starts a new one at once, even while
    the dead one is not yet reaped; `berth server stop` stops it and apps keep serving."""
    server = BerthServer()
    try:

        def server_cmd(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "berth.cli.main", "server", *args],
                capture_output=True,
                text=True,
                env=server.server_env(),
                timeout=120,
                check=False,
            )

        started = server_cmd("start")
        assert started.returncode == 0, started.stderr
        pid_file = server.home / "server.pid"
        first = int(pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        again = server_cmd("start")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" not in again.stdout
        second = int(pid_file.read_text())
        assert second != first
        assert httpx.get(f"{server.api_url}/healthz", trust_env=False).status_code == 200
        stopped = server_cmd("stop")
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: not _alive(second), 30, "the server stopped")
    finally:
        server.cleanup()
