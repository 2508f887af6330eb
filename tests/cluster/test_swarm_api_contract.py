"""One contract for every SwarmAPI: a real manager of the shared cluster, and the fake.

The same test code and the same assertions run against both, so the fake that stands in for a
1,000-node swarm in the scale simulation behaves, where Berth relies on it, as Swarm does:
replicas run with a node and a host-mode port of their own, counts follow updates, tasks
spread over nodes, constraints hold, unsatisfiable tasks wait with Swarm's reason, drained
nodes get nothing, labels filter, removals are idempotent.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.errors import EngineUnavailable, RuntimeFailure
from berth.swarm.api import DockerSwarmAPI, SwarmAPI
from berth.swarm.fake import FakeSwarmAPI
from berth.swarm.tasks import parse_time
from tests.cluster.nodes import Cluster
from tests.cluster.services import HTTPD, IMAGE
from tests.harness import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


@dataclass
class Backend:
    api: SwarmAPI
    name: str
    prefix: str
    created_services: list[str] = field(default_factory=list)
    created_networks: list[str] = field(default_factory=list)

    @property
    def workers(self) -> list[dict[str, Any]]:
        nodes = [n for n in self.api.nodes() if n["Spec"]["Role"] == "worker"]
        return sorted(nodes, key=lambda n: n["Description"]["Hostname"])

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.api.nodes() if n["ID"] == node_id)

    def set_spec(self, node_id: str, **changes: Any) -> None:
        node = self.node(node_id)
        self.api.update_node(node_id, node["Version"]["Index"], {**node["Spec"], **changes})

    def create(self, replicas: int, labels: dict[str, str] | None = None, **template: Any) -> str:
        name = f"{self.prefix}-{uuid.uuid4().hex[:6]}"
        task_template: dict[str, Any] = {
            "ContainerSpec": {"Image": IMAGE, "Command": ["sh", "-c", HTTPD]},
            **template,
        }
        spec = {
            "Name": name,
            "Labels": {"contract.run": self.prefix, **(labels or {})},
            "TaskTemplate": task_template,
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {
                "Mode": "dnsrr",
                "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}],
            },
        }
        service_id = self.api.create_service(spec)
        self.created_services.append(service_id)
        return service_id

    def scale(self, service_id: str, replicas: int) -> None:
        # Right after a create, Swarm's allocator may still bump the service's version: a
        # read-then-update can then be out of sequence, as for any writer (read again, retry).
        for _ in range(10):
            (service,) = [s for s in self.api.services() if s["ID"] == service_id]
            spec = dict(service["Spec"], Mode={"Replicated": {"Replicas": replicas}})
            try:
                self.api.update_service(service_id, service["Version"]["Index"], spec)
                return
            except RuntimeFailure as exc:
                if "out of sequence" not in str(exc):
                    raise
            time.sleep(0.2)
        raise AssertionError(f"{service_id} kept changing under the scale")

    def running(self, service_id: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.api.tasks(service_id=service_id)
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        ]

    def wait_running(self, service_id: str, count: int) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            tasks = self.running(service_id)
            live = [t for t in self.api.tasks(service_id=service_id) if _alive(t)]
            return tasks if len(tasks) == count and len(live) == count else None

        tasks: list[dict[str, Any]] = wait_until(ready, 90, f"{count} tasks of {service_id} run")
        return tasks

    def pending_reason(self, service_id: str) -> str:
        def reason() -> str | None:
            for task in self.api.tasks(service_id=service_id):
                if task["Status"]["State"] == "pending" and task["Status"].get("Err"):
                    return str(task["Status"]["Err"])
            return None

        found: str = wait_until(reason, 30, f"a task of {service_id} is pending with a reason")
        return found


def _alive(task: dict[str, Any]) -> bool:
    return bool(task["DesiredState"] == "running")


def _fake_swarm() -> FakeSwarmAPI:
    fake = FakeSwarmAPI()
    fake.add_node("m1", role="manager", availability="drain")
    for short in ("w1", "w2", "w3"):
        fake.add_node(short, memory_bytes=24 * 1024**3)
    return fake


@pytest.fixture(params=["real", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "real":
        cluster = request.getfixturevalue("swarm")
        api: SwarmAPI = DockerSwarmAPI(cluster.node(cluster.manager).base_url)
        prefix = f"{cluster.run_id}-c{uuid.uuid4().hex[:4]}"
    else:
        api = _fake_swarm()
        prefix = f"fake-c{uuid.uuid4().hex[:4]}"
    found = Backend(api, request.param, prefix)
    labels_before = {n["ID"]: (n["Spec"].get("Labels") or {}) for n in api.nodes()}
    availability_before = {n["ID"]: n["Spec"]["Availability"] for n in api.nodes()}
    try:
        yield found
    finally:
        for service_id in found.created_services:
            api.remove_service(service_id)
        for node_id, labels in labels_before.items():
            node = found.node(node_id)
            if node["Spec"].get("Labels") != labels or (
                node["Spec"]["Availability"] != availability_before[node_id]
            ):
                found.set_spec(node_id, Labels=labels, Availability=availability_before[node_id])
        for network_id in found.created_networks:
            _remove_network_when_free(api, network_id)
        close: Callable[[], None] | None = getattr(api, "close", None)
        if close is not None:
            close()


def _remove_network_when_free(api: SwarmAPI, network_id: str) -> None:
    # A network is in use until the tasks of its services are gone.
    def removed() -> bool:
        api.remove_network(network_id)
        return True

    wait_until(removed, 30, f"network {network_id} is removed")


def test_replicas_run_on_workers_each_with_its_own_host_port(backend: Backend) -> None:
    service_id = backend.create(3, Resources={"Reservations": {"MemoryBytes": 32 * 1024**2}})
    tasks = backend.wait_running(service_id, 3)
    worker_ids = {n["ID"] for n in backend.workers}
    ports = set()
    for task in tasks:
        assert task["NodeID"] in worker_ids  # never the drained manager
        published = task["Status"]["PortStatus"]["Ports"]
        assert {p["TargetPort"] for p in published} == {8080}
        assert all(p["PublishMode"] == "host" and p["PublishedPort"] > 0 for p in published)
        ports.add((task["NodeID"], published[0]["PublishedPort"]))
        assert task["Slot"] in {1, 2, 3}
        assert task["ServiceID"] == service_id
    assert len(ports) == 3


def test_replicas_follow_updates(backend: Backend) -> None:
    service_id = backend.create(2)
    backend.wait_running(service_id, 2)
    backend.scale(service_id, 5)
    assert {t["Slot"] for t in backend.wait_running(service_id, 5)} == {1, 2, 3, 4, 5}
    backend.scale(service_id, 1)
    assert [t["Slot"] for t in backend.wait_running(service_id, 1)] == [1]
    shut = [t for t in backend.api.tasks(service_id=service_id) if t["DesiredState"] != "running"]
    assert len(shut) >= 4


def test_a_stale_version_is_refused(backend: Backend) -> None:
    service_id = backend.create(1)
    (service,) = [s for s in backend.api.services() if s["ID"] == service_id]
    backend.scale(service_id, 2)
    with pytest.raises(RuntimeFailure):
        backend.api.update_service(service_id, service["Version"]["Index"], service["Spec"])


def test_six_replicas_spread_two_per_worker(backend: Backend) -> None:
    service_id = backend.create(6)
    tasks = backend.wait_running(service_id, 6)
    assert sorted(Counter(t["NodeID"] for t in tasks).values()) == [2, 2, 2]


def test_constraints_on_node_labels_and_unsatisfiable_reasons(backend: Backend) -> None:
    workers = backend.workers
    for worker, zone in zip(workers, "abc", strict=True):
        backend.set_spec(worker["ID"], Labels={"zone": zone})
    in_b = backend.create(2, Placement={"Constraints": ["node.labels.zone==b"]})
    assert {t["NodeID"] for t in backend.wait_running(in_b, 2)} == {workers[1]["ID"]}
    not_a = backend.create(4, Placement={"Constraints": ["node.labels.zone!=a"]})
    placed = {t["NodeID"] for t in backend.wait_running(not_a, 4)}
    assert placed == {workers[1]["ID"], workers[2]["ID"]}

    nowhere = backend.create(1, Placement={"Constraints": ["node.labels.zone==nowhere"]})
    reason = backend.pending_reason(nowhere)
    assert reason.startswith("no suitable node (")
    assert "scheduling constraints not satisfied on 3 nodes" in reason
    assert backend.running(nowhere) == []

    biggest = max(n["Description"]["Resources"]["MemoryBytes"] for n in backend.api.nodes())
    too_big = backend.create(1, Resources={"Reservations": {"MemoryBytes": biggest * 2}})
    reason = backend.pending_reason(too_big)
    assert "insufficient resources on 3 nodes" in reason


def test_a_drained_node_gets_no_task_and_loses_its_own(backend: Backend) -> None:
    service_id = backend.create(3)
    backend.wait_running(service_id, 3)
    drained = backend.workers[0]["ID"]
    backend.set_spec(drained, Availability="drain")
    moved = backend.wait_running(service_id, 3)
    assert drained not in {t["NodeID"] for t in moved}
    other = backend.create(4)
    assert drained not in {t["NodeID"] for t in backend.wait_running(other, 4)}


def test_every_node_has_an_updated_at_that_a_change_moves_on(backend: Backend) -> None:
    """Billing's watermark waits for a node that is neither ready nor down from when its
    status changed: Swarm keeps only the node's ``UpdatedAt`` for that."""
    worker = backend.workers[0]
    before = parse_time(worker.get("UpdatedAt"))
    assert before is not None and all(parse_time(n.get("UpdatedAt")) for n in backend.api.nodes())
    labels = dict(worker["Spec"].get("Labels") or {})
    backend.set_spec(worker["ID"], Labels={**labels, "contract": backend.prefix})
    after = parse_time(backend.node(worker["ID"]).get("UpdatedAt"))
    assert after is not None and after > before


def test_labels_filter_services_and_tasks(backend: Backend) -> None:
    mine = backend.create(1, labels={"contract.which": "mine"})
    theirs = backend.create(1, labels={"contract.which": "theirs"})
    backend.wait_running(mine, 1)
    backend.wait_running(theirs, 1)
    wanted = {"contract.run": backend.prefix, "contract.which": "mine"}
    assert [s["ID"] for s in backend.api.services(labels=wanted)] == [mine]
    assert {t["ServiceID"] for t in backend.api.tasks(labels=wanted)} == {mine}
    assert {t["ServiceID"] for t in backend.api.tasks(service_id=theirs)} == {theirs}
    both = {s["ID"] for s in backend.api.services(labels={"contract.run": backend.prefix})}
    assert both == {mine, theirs}


def test_remove_is_idempotent_and_the_tasks_go(backend: Backend) -> None:
    service_id = backend.create(2)
    backend.wait_running(service_id, 2)
    backend.api.remove_service(service_id)
    backend.api.remove_service(service_id)  # missing: not an error
    assert service_id not in {s["ID"] for s in backend.api.services()}
    wait_until(
        lambda: not [t for t in backend.api.tasks(service_id=service_id) if _alive(t)],
        30,
        "the removed service's tasks are gone",
    )


def test_overlay_networks_are_ensured_labelled_and_removed(backend: Backend) -> None:
    name = f"{backend.prefix}-net"
    labels = {"contract.run": backend.prefix, "contract.net": "yes"}
    network_id = backend.api.ensure_overlay(name, labels)
    backend.created_networks.append(network_id)
    assert backend.api.ensure_overlay(name, labels) == network_id
    (listed,) = backend.api.networks(labels=labels)
    assert listed["Name"] == name and listed["Scope"] == "swarm"
    assert listed.get("Attachable") is False
    with pytest.raises(RuntimeFailure):
        backend.api.ensure_overlay(name, {"contract.run": "someone-else"})

    service_id = backend.create(1, Networks=[{"Target": name}])
    backend.wait_running(service_id, 1)
    with pytest.raises(RuntimeFailure):
        backend.api.remove_network(network_id)  # in use by a service
    backend.api.remove_service(service_id)
    _remove_network_when_free(backend.api, network_id)
    assert backend.api.networks(labels=labels) == []
    backend.api.remove_network(network_id)  # missing: not an error


def test_no_engine_and_an_engine_that_is_no_manager_are_clear_503s(
    swarm: Cluster, tmp_path: Path
) -> None:
    with pytest.raises(EngineUnavailable, match="cannot be reached"):
        DockerSwarmAPI(f"unix://{tmp_path}/missing.sock").services()
    # A worker's engine answers, but only managers know the swarm's state.
    worker = DockerSwarmAPI(swarm.node("w1").base_url)
    try:
        with pytest.raises(EngineUnavailable, match="not a swarm manager") as raised:
            worker.services()
        assert raised.value.status == 503
    finally:
        worker.close()
