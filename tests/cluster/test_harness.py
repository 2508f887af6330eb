"""The multi-node harness itself: a real swarm of namespaced engines, killed, cut off, healed.

Traffic goes only to the nodes' addresses (the harness's own /24) and to loopback.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import docker.types
import pytest

from tests.cluster.nodes import (
    Cluster,
    leftovers,
    shim_sockets,
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
from tests.harness import wait_until

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


def test_zones_from_node_labels_steer_spread_and_constraints(swarm: Cluster) -> None:
    # The drained manager gets a zone too: a node without the label is a spread branch of its
    # own (empty), and the tasks meant for it landed unevenly (seen: 3 in a, 1 in b).
    zones = {"m1": "a", "w1": "a", "w2": "b", "w3": "b"}
    try:
        for short, zone in zones.items():
            swarm.set_labels(short, {"zone": zone})
        spread = create_web_service(swarm, replicas=4, preferences=[("spread", "node.labels.zone")])
        in_b = create_web_service(swarm, replicas=2, constraints=["node.labels.zone==b"])
        per_zone = Counter(zones[t["short"]] for t in wait_running(swarm, spread, 4))
        assert per_zone == {"a": 2, "b": 2}
        assert {t["short"] for t in wait_running(swarm, in_b, 2)} <= {"w2", "w3"}
    finally:
        for short in zones:
            swarm.set_labels(short, {})


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
