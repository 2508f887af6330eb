"""An app whose process exits at once: ``ps`` shows it crashing (exit code, last log lines,
restarts counting up), the deploy is reported failed, and nothing is left running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BerthServer, wait_until, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

# The deploy deadline (30 s) is well past the crash loop's 3 restarts (0.1 + 1 + 2 s of backoff),
# so the deploy fails for the crashes, not for the deadline.
CRASHES = """\
FROM berth/busybox:latest
CMD ["sh", "-c", "echo starting up; echo fatal: cannot open the database >&2; exit 1"]
"""


def _crashed_row(berth: BerthServer, app: str) -> dict[str, Any] | None:
    for row in berth.ps(app):
        if (
            row["state"] in ("crashed", "crash-loop")
            and row["exit_code"] == 1
            and "fatal: cannot open the database" in row["last_log"]
        ):
            return row
    return None


def test_crash_loop_is_shown_and_fails_the_deploy(berth: BerthServer, tmp_path: Path) -> None:
    app = "crashy"
    berth.create_app(app)
    crash_dir = write_app(tmp_path / "crash", CRASHES)
    deploy = subprocess.Popen(
        [sys.executable, "-m", "berth.cli.main", "deploy", app, str(crash_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=berth.cli_env(),
    )
    try:
        row = wait_until(
            lambda: _crashed_row(berth, app), 60, "ps shows the crashed instance's last words"
        )
        assert "starting up" in row["last_log"]
        assert not row["healthy"]
        human = berth.cli_ok("ps", app).stdout
        assert "fatal: cannot open the database" in human
        out, err = deploy.communicate(timeout=120)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    assert deploy.returncode == 1, (out, err)
    assert "failed" in err
    assert "crashed" in err and "exit code 1" in err
    info = berth.cli_json("apps", "info", app)
    assert info["deployment"]["status"] == "failed"
    assert "crashed" in info["deployment"]["message"]
    assert info["serving_release"] is None
    # A failed first deploy leaves nothing running and nothing routed.
    wait_until(lambda: not berth.containers(app), 30, "the crashing containers are removed")
    assert berth.ingress_get(berth.host_of(app)).status_code == 503


def test_crash_loop_restarts_count_up_in_ps(berth: BerthServer, tmp_path: Path) -> None:
    app = "crashy2"
    berth.create_app(app)
    crash_dir = write_app(tmp_path / "crash", CRASHES)
    berth.cli_ok("deploy", app, str(crash_dir), "--no-wait")
    seen: set[int] = set()

    def restarted_twice() -> bool:
        for row in berth.ps(app):
            seen.add(row["restarts"])
        return max(seen, default=0) >= 2

    wait_until(restarted_twice, 60, "ps shows the restarts counting up")
    wait_until(
        lambda: berth.cli_json("apps", "info", app)["deployment"]["status"] == "failed",
        60,
        "the deployment fails",
    )


def test_failed_first_deploy_starts_no_more_instances(berth: BerthServer, tmp_path: Path) -> None:
    """The crashing instance is restarted in place; once the deploy has failed, no new
    instance of the failed release is started."""
    app = "crashy3"
    berth.create_app(app)
    crash_dir = write_app(tmp_path / "crash", CRASHES)
    since = time.time()
    result = berth.cli("deploy", app, str(crash_dir))
    assert result.returncode == 1
    wait_until(lambda: not berth.containers(app), 30, "the crashing containers are removed")
    assert berth.containers_created(app, since) == 1
