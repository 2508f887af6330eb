"""What the fake swarm does beyond the shared contract (tests/cluster/test_swarm_api_contract.py):
the parts a test drives by hand (a node lost and back, a crash), and its size."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from berth.errors import RuntimeFailure
from berth.swarm.fake import FakeSwarmAPI


def spec(name: str, replicas: int, memory: int = 0, **placement: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Labels": {"berth.installation": "i"},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "x"},
            "Resources": {"Reservations": {"MemoryBytes": memory}},
            "Placement": placement,
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Ports": [{"TargetPort": 8080, "PublishMode": "host"}]},
    }


def live(fake: FakeSwarmAPI, service_id: str) -> list[dict[str, Any]]:
    return [t for t in fake.tasks(service_id=service_id) if t["DesiredState"] == "running"]


@pytest.fixture
def fake() -> FakeSwarmAPI:
    swarm = FakeSwarmAPI()
    swarm.add_node("m1", role="manager", availability="drain")
    for short in ("w1", "w2", "w3"):
        swarm.add_node(short, memory_bytes=1024**3)
    return swarm


def test_a_lost_node_keeps_reporting_its_tasks_running_until_it_is_back(fake: FakeSwarmAPI) -> None:
    service = fake.create_service(spec("s", 3))
    w1 = fake.node_id("w1")
    (on_w1,) = [t for t in live(fake, service) if t["NodeID"] == w1]
    fake.set_node_state(w1, "down")
    stale = next(t for t in fake.tasks(service_id=service) if t["ID"] == on_w1["ID"])
    assert stale["DesiredState"] == "shutdown" and stale["Status"]["State"] == "running"
    assert len(live(fake, service)) == 3 and w1 not in {t["NodeID"] for t in live(fake, service)}
    fake.set_node_state(w1, "ready")
    stale = next(t for t in fake.tasks(service_id=service) if t["ID"] == on_w1["ID"])
    assert stale["Status"]["State"] == "shutdown"


def test_pending_tasks_run_once_a_node_has_room(fake: FakeSwarmAPI) -> None:
    big = fake.create_service(spec("big", 4, memory=600 * 1024**2))
    states = Counter(t["Status"]["State"] for t in live(fake, big))
    assert states == {"running": 3, "pending": 1}
    (waiting,) = [t for t in live(fake, big) if t["Status"]["State"] == "pending"]
    assert waiting["Status"]["Err"] == (
        "no suitable node (insufficient resources on 3 nodes; 1 node not available for new tasks)"
    )
    fake.add_node("w4", memory_bytes=1024**3)
    assert Counter(t["Status"]["State"] for t in live(fake, big)) == {"running": 4}


def test_a_crashed_task_is_restarted_in_its_slot(fake: FakeSwarmAPI) -> None:
    service = fake.create_service(spec("s", 1))
    (first,) = live(fake, service)
    second = fake.crash_task(first["ID"], exit_code=3)
    (now,) = live(fake, service)
    assert now["ID"] == second and now["Slot"] == first["Slot"]
    old = next(t for t in fake.tasks(service_id=service) if t["ID"] == first["ID"])
    assert old["Status"]["State"] == "failed"
    assert old["Status"]["ContainerStatus"]["ExitCode"] == 3


def test_a_new_task_template_replaces_every_task(fake: FakeSwarmAPI) -> None:
    service = fake.create_service(spec("s", 2))
    before = {t["ID"] for t in live(fake, service)}
    current = fake.services()[0]
    changed = spec("s", 2, memory=1024)
    fake.update_service(service, current["Version"]["Index"], changed)
    assert not before & {t["ID"] for t in live(fake, service)}


def test_spread_follows_zones_and_unlabelled_nodes_are_a_branch_of_their_own() -> None:
    fake = FakeSwarmAPI()
    for short, zone in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        fake.add_node(short, labels={"zone": zone})
    service = fake.create_service(spec("s", 4))
    by_zone = Counter(
        "a" if t["NodeID"] in {fake.node_id("a1"), fake.node_id("a2")} else "b"
        for t in live(fake, service)
    )
    assert by_zone == {"a": 2, "b": 2}


def test_bad_input_is_refused_and_changes_nothing(fake: FakeSwarmAPI) -> None:
    fake.create_service(spec("s", 1))
    writes = fake.writes
    with pytest.raises(RuntimeFailure):
        fake.create_service(spec("s", 1))  # the name is taken
    with pytest.raises(RuntimeFailure):
        fake.create_service({**spec("t", 1), "TaskTemplate": {"Networks": [{"Target": "nope"}]}})
    with pytest.raises(RuntimeFailure):
        fake.update_service("missing", 1, spec("s", 2))
    with pytest.raises(RuntimeFailure):
        fake.task_logs("missing")
    assert fake.writes == writes and len(fake.services()) == 1


def test_it_holds_a_thousand_nodes_and_thirty_thousand_tasks() -> None:
    fake = FakeSwarmAPI()
    for index in range(1000):
        fake.add_node(f"n{index}", labels={"zone": "abc"[index % 3]}, memory_bytes=64 * 1024**3)
    for index in range(300):
        fake.create_service(spec(f"s{index}", 100, memory=64 * 1024**2))
    tasks = fake.tasks()
    assert len(tasks) == 30_000
    assert {t["Status"]["State"] for t in tasks} == {"running"}
    per_node = Counter(t["NodeID"] for t in tasks)
    # Even within a zone; zones of 334, 333 and 333 nodes take a third of each service.
    assert len(per_node) == 1000 and max(per_node.values()) - min(per_node.values()) <= 2
