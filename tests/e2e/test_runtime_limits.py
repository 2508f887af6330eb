"""Limits a tenant's app meets on a real server, Docker Engine and nginx: its root filesystem is
read-only (a 300 MiB write to / fails and the host's disk is untouched), its /tmp holds the
configured size and no more (ENOSPC), and an instance bigger than the node's free memory stays
pending with the reason in `berth ps` instead of being started."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BerthServer, docker_client, wait_until, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

DISK_MB = 8
MIB = 1024 * 1024
# The admin tenant is on the unlimited operator plan; the per-app memory cap is raised so only
# the node's memory stands in the way of the huge app.
BERTH_SERVER_OPTIONS = {
    "extra_env": {"BERTH_INSTANCE_DISK_MB": str(DISK_MB), "BERTH_MEMORY_MAX_MB": str(1 << 22)}
}

WRITER = f"""\
FROM berth/busybox:latest
CMD ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=300 2>&1; echo root-rc=$?; \
dd if=/dev/zero of=/tmp/big bs=1M count={DISK_MB * 2} 2>&1; echo tmp-rc=$?; rm -f /tmp/big; \
exec httpd -f -p 8080 -h /"]
"""

IDLE = """\
FROM berth/busybox:latest
CMD ["httpd", "-f", "-p", "8080", "-h", "/"]
"""


def _docker_disk_used() -> int:
    client = docker_client()
    try:
        root = str(client.info()["DockerRootDir"])
    finally:
        client.close()
    return shutil.disk_usage(root).used


def _logs_once(berth: BerthServer, app: str, marker: str) -> str | None:
    """The app's logs once they contain ``marker``."""
    text = berth.cli_ok("logs", app).stdout
    return text if marker in text else None


def test_the_root_is_read_only_and_tmp_holds_its_size(berth: BerthServer, tmp_path: Path) -> None:
    used_before = _docker_disk_used()
    berth.create_app("writer", "--memory", "64M", "--health-path", "")
    result = berth.deploy_dir("writer", write_app(tmp_path / "writer", WRITER))
    assert result["deployment"]["status"] == "succeeded", result

    logs = wait_until(lambda: _logs_once(berth, "writer", "tmp-rc="), 60, "both writes end")
    assert "Read-only file system" in logs
    assert "root-rc=1" in logs
    assert "No space left on device" in logs
    assert "tmp-rc=1" in logs
    # Nothing of the 300 MiB reached the host's disk (other work on the machine may write a
    # little meanwhile, far less than this).
    assert _docker_disk_used() - used_before < 200 * MIB
    [container] = berth.containers("writer")
    host = berth.inspect(container.id)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert f"size={DISK_MB * MIB}" in host["Tmpfs"]["/tmp"]


def _node_allocatable_mb() -> int:
    client = docker_client()
    try:
        total = int(client.info()["MemTotal"]) // MIB
    finally:
        client.close()
    return total - 1024  # the default host_memory_reserve_mb


def _pending_row(berth: BerthServer, app: str) -> dict[str, Any] | None:
    for row in berth.ps(app):
        if row["state"] == "pending" and "insufficient memory" in row["reason"]:
            return row
    return None


def test_an_instance_bigger_than_the_node_stays_pending_with_the_reason(
    berth: BerthServer, tmp_path: Path
) -> None:
    allocatable = _node_allocatable_mb()
    need_mb = (allocatable // 1024 + 8) * 1024  # whole GiB, beyond what the node can give
    berth.create_app("huge", "--memory", f"{need_mb // 1024}G", "--health-path", "")
    deploy = subprocess.Popen(
        [sys.executable, "-m", "berth.cli.main", "deploy", "huge", str(write_app(tmp_path, IDLE))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=berth.cli_env(),
    )
    try:
        row = wait_until(lambda: _pending_row(berth, "huge"), 60, "ps shows why it is pending")
        assert row["reason"].startswith(f"insufficient memory on node local: needs {need_mb} MiB, ")
        assert row["reason"].endswith(f" MiB free of {allocatable} MiB")
        assert "insufficient memory on node local" in berth.cli_ok("ps", "huge").stdout
        assert berth.containers("huge") == []  # nothing was started
    finally:
        if deploy.poll() is None:
            deploy.kill()
        deploy.communicate(timeout=30)
