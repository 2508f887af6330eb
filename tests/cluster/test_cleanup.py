"""Cleanup: a run killed with SIGKILL is swept by the next one; SIGTERM cleans up at once.

Each test runs a small cluster in a child process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.nodes import (
    CGROUP_ROOT,
    Cluster,
    cgroup_pids,
    leftovers,
    remove_run,
    run_alive,
    sweep_leftovers,
)
from tests.harness import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


def start_child(script: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Run a script that forms a small cluster and prints a JSON report; return both."""
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        child.wait(timeout=30)
        sweep_leftovers()
        raise AssertionError("the child cluster did not start")
    return child, json.loads(line)


# A run whose owner dies without cleaning up: a one-node cluster with a running container.
ORPHAN = """
import json, sys, time
from tests.cluster.nodes import Cluster, shim_sockets
cluster = Cluster()
(node,) = cluster.add_nodes(["n1"])
cluster.load_images(["berth/busybox:latest"])
node.client().containers.run("berth/busybox:latest", ["sleep", "600"], detach=True)
sockets = sorted(str(s) for s in shim_sockets(node.exec_root))
print(json.dumps({"run": cluster.run_id, "sockets": sockets}), flush=True)
time.sleep(120)
"""


def test_the_sweep_removes_everything_a_dead_run_left(cluster: Cluster) -> None:
    child, report = start_child(ORPHAN)
    child.send_signal(signal.SIGKILL)  # no finalizer, no atexit: everything is left behind
    child.wait(timeout=30)
    dead = report["run"]
    try:
        assert not run_alive(dead)
        left = leftovers(dead)
        for kind in ("netns", "link", "cgroup", "dir", "process"):
            assert any(item.startswith(kind) for item in left), (kind, left)
        assert report["sockets"] and all(os.path.exists(s) for s in report["sockets"])

        assert dead in sweep_leftovers()

        assert leftovers(dead) == []
        assert not any(os.path.exists(s) for s in report["sockets"])
        remove_run(dead)  # idempotent
        assert leftovers(dead) == []
        # The live shared cluster was not swept.
        assert run_alive(cluster.run_id)
        assert cluster.node_states() == dict.fromkeys(["m1", "w1", "w2", "w3"], "ready")
    finally:
        remove_run(dead)  # whatever failed above, the dead run goes


TERMINATED = """
import json, time
from tests.cluster.nodes import Cluster
cluster = Cluster()
cluster.add_nodes(["n1", "n2"])
print(json.dumps({"run": cluster.run_id}), flush=True)
time.sleep(120)
"""


def test_sigterm_removes_everything_of_the_run() -> None:
    child, report = start_child(TERMINATED)
    run_id = report["run"]
    assert leftovers(run_id)
    try:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        assert leftovers(run_id) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        remove_run(run_id)


def test_a_node_with_a_paused_container_is_killed_whole(request: pytest.FixtureRequest) -> None:
    lone = Cluster()
    request.addfinalizer(lone.cleanup)
    (node,) = lone.add_nodes(["n1"])
    lone.load_images(["berth/busybox:latest"])
    container = node.client().containers.run("berth/busybox:latest", ["sleep", "300"], detach=True)
    container.pause()  # a frozen cgroup of its own, below the node's

    lone.kill_node("n1")

    assert not node.engine_alive()
    assert cgroup_pids(CGROUP_ROOT / "pids" / node.name) == set()
    lone.restart_node("n1")  # and it starts again
    assert node.client().containers.get(container.id).status != "running"
