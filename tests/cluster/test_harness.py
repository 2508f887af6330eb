"""The multi-node harness itself: a real swarm of namespaced engines, killed, cut off, healed.

Traffic goes only to the nodes' addresses (the harness's own /24) and to loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker.types
import pytest

from tests.cluster.nodes import (
    Cluster,
    leftovers,
    remove_run,
    run_alive,
    shim_sockets,
    sweep_leftovers,
)
from tests.cluster.services import (
    IMAGE,
    assert_each_task_answers,
    containers_running_everywhere,
    create_web_service,
    running_tasks,
    task_port,
    wait_running,
)
from tests.harness import REPO_ROOT, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


def test_swarm_forms_with_a_drained_manager_and_three_ready_workers(swarm: Cluster) -> None:
    entries = {
        e.attrs["Description"]["Hostname"]: e.attrs for e in swarm.manager_client().nodes.list()
    }
    assert sorted(entries) == sorted(n.name for n in swarm.nodes.values())
    for short, node in swarm.nodes.items():
        attrs = entries[node.name]
        assert attrs["Status"]["State"] == "ready"
        assert attrs["Status"]["Addr"] == node.address
        expected = ("manager", "drain") if short == "m1" else ("worker", "active")
        assert (attrs["Spec"]["Role"], attrs["Spec"]["Availability"]) == expected
    manager_swarm = swarm.manager_client().swarm
    manager_swarm.reload()
    assert manager_swarm.attrs["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 2_000_000_000
    # The host's own engine is never part of it.
    host = docker.from_env(version="auto")
    try:
        assert host.info()["Swarm"]["LocalNodeState"] == "inactive"
        # Each engine has an identity of its own, not the host engine's.
        ids = {swarm.client(short).info()["ID"] for short in swarm.nodes}
        assert len(ids) == len(swarm.nodes) and host.info()["ID"] not in ids
    finally:
        host.close()


def test_six_replicas_spread_two_per_worker_and_each_answers_on_its_node(swarm: Cluster) -> None:
    service = create_web_service(swarm, replicas=6, max_per_node=2)
    tasks = wait_running(swarm, service, 6)
    assert Counter(t["short"] for t in tasks) == {"w1": 2, "w2": 2, "w3": 2}
    assert_each_task_answers(swarm, tasks)
    # The nodes' engines give every container no-new-privileges (the service API cannot).
    label = f"com.docker.swarm.task.id={tasks[0]['ID']}"
    (container,) = swarm.client(tasks[0]["short"]).containers.list(filters={"label": label})
    status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    # Two tasks on one node got two different node ports.
    ports = {(t["short"], task_port(swarm, t)) for t in tasks}
    assert len(ports) == 6


def test_a_killed_node_goes_down_and_its_tasks_run_elsewhere(swarm: Cluster) -> None:
    service = create_web_service(swarm, replicas=3)
    tasks = wait_running(swarm, service, 3)
    victim = tasks[0]["short"]
    node = swarm.node(victim)
    sockets = {s for s in shim_sockets(node.exec_root) if s.exists()}
    assert sockets, "the victim's shims have sockets"

    started = time.monotonic()
    swarm.kill_node(victim)
    assert not node.engine_alive()
    assert not any(s.exists() for s in sockets), "the killed shims' sockets were removed"
    down_after = swarm.wait_states({victim: "down"}, timeout=30)
    moved = wait_until(
        lambda: (
            (now := running_tasks(swarm, service))
            and len(now) == 3
            and all(t["short"] != victim for t in now)
            and now
        ),
        60,
        f"3 tasks run away from the killed {victim}",
    )
    replaced_after = time.monotonic() - started
    assert_each_task_answers(swarm, moved)
    print(f"killed {victim}: Down after {down_after:.1f}s, replaced after {replaced_after:.1f}s")

    swarm.restart_node(victim)
    swarm.wait_states({victim: "ready"}, timeout=60)


def test_a_partitioned_node_comes_back_and_the_count_is_the_desired_one(swarm: Cluster) -> None:
    service = create_web_service(swarm, replicas=3)
    tasks = wait_running(swarm, service, 3)
    victim = tasks[0]["short"]
    cut_off = swarm.node(victim).client()
    label = f"com.docker.swarm.service.name={service.name}"

    swarm.partition(victim)
    swarm.wait_states({victim: "down"}, timeout=30)
    wait_until(
        lambda: (
            (now := running_tasks(swarm, service))
            and len(now) == 3
            and all(t["short"] != victim for t in now)
        ),
        60,
        f"3 tasks run away from the cut-off {victim}",
    )
    # Nothing fences a cut-off node: its task still runs there, one more than desired.
    assert cut_off.containers.list(filters={"label": label})
    assert containers_running_everywhere(swarm, service) == 4

    swarm.heal(victim)
    swarm.wait_states({victim: "ready"}, timeout=60)
    wait_until(
        lambda: containers_running_everywhere(swarm, service) == 3,
        60,
        "the engines run exactly the 3 desired tasks again",
    )
    assert len(running_tasks(swarm, service)) == 3


def test_a_fourth_node_joins_and_new_work_uses_it(swarm: Cluster) -> None:
    started = time.monotonic()
    swarm.add_node("w4")
    try:
        swarm.load_images([IMAGE], ["w4"])
        swarm.join("w4")
        swarm.wait_states({"w4": "ready"}, timeout=30)
        print(f"a 4th node started, loaded and joined in {time.monotonic() - started:.1f}s")
        service = create_web_service(swarm, replicas=4, max_per_node=1)
        tasks = wait_running(swarm, service, 4)
        assert sorted(t["short"] for t in tasks) == ["w1", "w2", "w3", "w4"]
        assert_each_task_answers(swarm, [t for t in tasks if t["short"] == "w4"])
        service.remove()
    finally:
        swarm.remove_node("w4")
    assert sorted(swarm.node_states()) == ["m1", "w1", "w2", "w3"]
    assert not any("-w4" in item for item in leftovers(swarm.run_id))


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
    child = subprocess.Popen(
        [sys.executable, "-c", ORPHAN],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    report: dict[str, Any] = {}
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)  # no finalizer, no atexit: everything is left behind
        child.wait(timeout=30)
        if not report:
            sweep_leftovers()
    dead = report["run"]
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
