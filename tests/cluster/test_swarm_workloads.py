"""The swarm backend on the real shared cluster: placement, hardening, reasons, removal, loss.

Groups run busybox httpd (the image every node has loaded). Traffic goes only to the nodes'
addresses, from the host. Each test uses an installation id of its own, so it sees only what it
created; the ``swarm`` fixture removes leftover services and the tests remove their overlays.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from berth.runtime.protocol import KEPT_CAPABILITIES, WRITABLE_PATHS
from berth.swarm.api import DockerSwarmAPI
from berth.workloads.protocol import ProcessGroup, WorkloadInstance
from berth.workloads.swarm import SwarmWorkloads
from tests.cluster.conftest import TIMINGS
from tests.cluster.nodes import Cluster
from tests.cluster.services import IMAGE, http_get
from tests.harness import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

# The root filesystem is read-only: the page lives on the /tmp tmpfs. tini (init) forwards
# TERM to sh, which exits at once.
HTTPD = (
    "echo serving on 8080; mkdir -p /tmp/www && hostname > /tmp/www/index.html && "
    "trap 'exit 0' TERM; "
    "httpd -f -p 8080 -h /tmp/www & wait"
)


@pytest.fixture
def workloads(swarm: Cluster) -> Iterator[SwarmWorkloads]:
    api = DockerSwarmAPI(swarm.node(swarm.manager).base_url)
    backend = SwarmWorkloads(api, f"{swarm.run_id}-{uuid.uuid4().hex[:6]}")
    try:
        yield backend
    finally:
        backend.api = DockerSwarmAPI(swarm.node(swarm.manager).base_url)  # a manager up now
        # Services first; their overlays once their tasks are gone (apply retries those).
        wait_until(lambda: _applied_empty(backend), 60, "the test's services and overlays go")
        backend.close()


def _applied_empty(backend: SwarmWorkloads) -> bool:
    backend.apply([])
    owned = {"berth.installation": backend.installation}
    return not backend.api.services(labels=owned) and not backend.api.networks(labels=owned)


def _group(backend: SwarmWorkloads, replicas: int, **changes: object) -> ProcessGroup:
    group = ProcessGroup(
        tenant_id="t1",
        app_id=f"app{uuid.uuid4().hex[:6]}",
        app_name="hello",
        revision="rel1:1",
        release_id="rel1",
        release_version=1,
        image=IMAGE,
        replicas=replicas,
        memory_mb=64,
        cpus_milli=250,
        pids_limit=64,
        disk_mb=16,
        network=f"{backend.installation}-t1",
        port=8080,
        command=("sh", "-c", HTTPD),
        health_path="/",
    )
    return replace(group, **changes)  # type: ignore[arg-type]


def _running(backend: SwarmWorkloads, group: ProcessGroup) -> list[WorkloadInstance]:
    return [
        i
        for i in backend.instances()
        if i.group == group.key and i.state == "running" and i.port is not None
    ]


def _wait_running(
    backend: SwarmWorkloads, group: ProcessGroup, count: int, timeout: float = 90
) -> list[WorkloadInstance]:
    def ready() -> list[WorkloadInstance] | None:
        running = _running(backend, group)
        alive = [i for i in backend.instances() if i.group == group.key and i.alive]
        return running if len(running) == count and len(alive) == count else None

    found: list[WorkloadInstance] = wait_until(ready, timeout, f"{count} instances run")
    return found


def _answers(instance: WorkloadInstance) -> str:
    assert instance.address is not None and instance.port is not None
    return http_get(instance.address, instance.port)


def _short_of(swarm: Cluster, node_name: str) -> str:
    return next(s for s, n in swarm.nodes.items() if n.name == node_name)


def test_six_replicas_spread_answer_and_run_hardened(
    swarm: Cluster, workloads: SwarmWorkloads
) -> None:
    group = _group(workloads, 6)
    started = time.monotonic()
    workloads.apply([group])
    instances = _wait_running(workloads, group, 6)
    for instance in instances:
        wait_until(lambda i=instance: _answers(i), 30, f"{instance.slot} answers")
    took = time.monotonic() - started
    TIMINGS.append(f"swarm workloads: apply of 6 replicas -> all running, answering: {took:.1f}s")
    assert Counter(_short_of(swarm, i.node) for i in instances) == {"w1": 2, "w2": 2, "w3": 2}
    assert len({(i.node, i.port) for i in instances}) == 6
    for instance in instances:
        assert instance.address == swarm.node(_short_of(swarm, instance.node)).address
        assert instance.memory_mb == 64 and instance.cpus_milli == 250
        assert instance.tenant_id == "t1" and instance.revision == group.revision
        assert instance.started_at is not None and instance.started_at <= time.time()
        assert instance.slot.startswith("hello-web-v1-g1-")

    # Logs are read through the manager from the task's node.
    instance = instances[0]
    wait_until(lambda: "serving on 8080" in workloads.logs(instance.id), 20, "the task logged")
    stop = threading.Event()
    lines = workloads.follow_logs(instance.id, tail=5, stop=stop)
    assert next(lines) == "serving on 8080"
    stop.set()
    lines.close()

    # The task's container, inspected on its own node's engine.
    label = f"com.docker.swarm.task.id={instance.id}"
    engine = swarm.client(_short_of(swarm, instance.node))
    (container,) = engine.containers.list(filters={"label": label})
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(KEPT_CAPABILITIES)
    assert host["Init"] is True
    assert host["PidsLimit"] == 64
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 250_000_000
    assert host["Privileged"] is False
    assert not host.get("Binds")
    mounts = host["Mounts"]
    assert sorted(m["Target"] for m in mounts) == sorted(WRITABLE_PATHS)
    assert {m["Type"] for m in mounts} == {"tmpfs"}
    assert {m["TmpfsOptions"]["SizeBytes"] for m in mounts} == {16 * 1024 * 1024}
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    labels = container.attrs["Config"]["Labels"]
    assert labels["berth.installation"] == workloads.installation
    assert labels["berth.managed"] == "true"
    assert labels["berth.group"] == group.key and labels["berth.process"] == "web"
    assert labels["berth.app"] == group.app_id and labels["berth.tenant"] == "t1"
    # no-new-privileges comes from the node's dockerd flag (the service API cannot set it).
    status = Path(f"/proc/{container.attrs['State']['Pid']}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    # The read-only root filesystem holds: the process cannot write outside its tmpfs.
    assert container.exec_run(["sh", "-c", "echo x > /x"]).exit_code != 0
    assert container.exec_run(["sh", "-c", "echo x > /tmp/x"]).exit_code == 0


def test_constraint_zone_b_is_respected(swarm: Cluster, workloads: SwarmWorkloads) -> None:
    try:
        for short, zone in (("w1", "a"), ("w2", "b"), ("w3", "c")):
            swarm.set_labels(short, {"zone": zone})
        group = _group(workloads, 3, constraints=("zone==b",))
        workloads.apply([group])
        instances = _wait_running(workloads, group, 3)
        assert {i.node for i in instances} == {swarm.node("w2").name}
    finally:
        for short in ("w1", "w2", "w3"):
            swarm.set_labels(short, {})


def test_an_unsatisfiable_group_is_pending_with_swarms_reason(
    swarm: Cluster, workloads: SwarmWorkloads
) -> None:
    nowhere = _group(workloads, 2, constraints=("zone==nowhere",))
    huge = _group(workloads, 1, memory_mb=10 * 1024 * 1024)  # 10 TiB: more than any node
    workloads.apply([nowhere, huge])

    def reasons(group: ProcessGroup) -> list[str] | None:
        mine = [i for i in workloads.instances() if i.group == group.key]
        # Swarm says "pending task scheduling" until its scheduler has tried every node.
        decided = [i for i in mine if i.state == "pending" and i.reason.startswith("no suitable")]
        if len(mine) == group.replicas and len(decided) == len(mine):
            return [i.reason for i in mine]
        return None

    for reason in wait_until(lambda: reasons(nowhere), 30, "the constrained group is pending"):
        assert reason.startswith("no suitable node (")
        assert "scheduling constraints not satisfied on 3 nodes" in reason
    (reason,) = wait_until(lambda: reasons(huge), 30, "the huge group is pending")
    assert "insufficient resources on 3 nodes" in reason


def test_replicas_change_and_an_empty_apply_removes_everything(
    swarm: Cluster, workloads: SwarmWorkloads
) -> None:
    group = _group(workloads, 2)
    workloads.apply([group])
    _wait_running(workloads, group, 2)
    workloads.apply([replace(group, replicas=4)])
    four = _wait_running(workloads, group, 4)
    workloads.apply([replace(group, replicas=1)])
    (one,) = _wait_running(workloads, group, 1)
    assert one.id in {i.id for i in four}  # scaling down keeps slot 1; no task replaced
    alive = [i for i in workloads.instances() if i.group == group.key and i.alive]
    assert [i.id for i in alive] == [one.id]

    known = {i.id for i in workloads.instances() if i.group == group.key}
    workloads.apply([])
    reported: Counter[str] = Counter()

    def all_removed() -> bool:
        for instance in workloads.instances():
            if instance.state == "removed":
                reported[instance.id] += 1
                assert instance.finished_at is not None or instance.started_at is None
        return known <= set(reported)

    wait_until(all_removed, 60, "every instance of the group is reported removed")
    # At least once each (while Swarm still lists a task that ended, it says "removed"), then
    # nothing of the group is reported any more.
    assert min(reported.values()) >= 1
    wait_until(
        lambda: [i for i in workloads.instances() if i.group == group.key] == [],
        60,
        "nothing of the group is left",
    )


def test_a_killed_worker_loses_its_instances_and_they_run_elsewhere(
    swarm: Cluster, workloads: SwarmWorkloads
) -> None:
    group = _group(workloads, 6)
    workloads.apply([group])
    before = _wait_running(workloads, group, 6)
    victim = swarm.node("w1").name
    lost = {i.id for i in before if i.node == victim}
    assert len(lost) == 2
    killed = time.monotonic()
    swarm.kill_node("w1")

    def replaced() -> list[WorkloadInstance] | None:
        running = _running(workloads, group)
        alive = [i for i in workloads.instances() if i.group == group.key and i.alive]
        if len(running) == 6 and len(alive) == 6 and victim not in {i.node for i in running}:
            return running
        return None

    after = wait_until(replaced, 90, "6 instances run on the surviving workers")
    for instance in after:
        wait_until(lambda i=instance: _answers(i), 30, f"{instance.slot} answers")
    took = time.monotonic() - killed
    TIMINGS.append(f"swarm workloads: worker killed -> 6 running, answering again: {took:.1f}s")
    by_id = {i.id: i for i in workloads.instances()}
    for task_id in lost:
        old = by_id[task_id]
        assert old.state == "removed" and old.reason == f"node {victim} is down"
        assert old.finished_at is not None
    assert Counter(i.node for i in after) == {swarm.node("w2").name: 3, swarm.node("w3").name: 3}


def test_a_crash_looping_group_says_so_with_its_exit_code(
    swarm: Cluster, workloads: SwarmWorkloads
) -> None:
    group = _group(workloads, 1, command=("sh", "-c", "echo crashing; exit 3"))
    workloads.apply([group])

    def looping() -> WorkloadInstance | None:
        mine = [i for i in workloads.instances() if i.group == group.key]
        current = [i for i in mine if i.alive or i.state == "pending"]
        if len(current) == 1 and current[0].reason.startswith("crash loop"):
            return current[0]
        return None

    current = wait_until(looping, 60, "the group reports a crash loop")
    assert current.restarts >= 3
    assert current.reason.endswith("(last exit code 3)")
    # The failed tasks are history (Swarm never restarts a task): over, with exit code and end.
    ended = [i for i in workloads.instances() if i.group == group.key and i.state == "removed"]
    assert len(ended) >= 3 and {i.exit_code for i in ended} == {3}
    assert all(i.finished_at is not None for i in ended)
