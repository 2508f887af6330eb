"""What Swarm's tasks say about instances (pure): states, reasons, ports, times, history."""

from __future__ import annotations

from typing import Any

import pytest

from berth.swarm.tasks import NodeView, TaskMemory, instances_of_service, parse_time

SERVICE = {
    "ID": "svc1",
    "Spec": {
        "Name": "hello-web-v1-g1-abc",
        "Labels": {
            "berth.group": "a1/web/r1:1",
            "berth.tenant": "t1",
            "berth.app": "a1",
            "berth.revision": "r1:1",
            "berth.process": "web",
            "berth.port": "8080",
            "berth.health-path": "/healthz",
            "berth.memory-mb": "128",
            "berth.cpus-milli": "250",
        },
    },
}
NODES = {
    "n1": NodeView(name="w1", address="10.0.0.11", state="ready"),
    "n2": NodeView(name="w2", address="10.0.0.12", state="down"),
}
T0 = "2026-12-01T10:00:00.000000000Z"


def _stamp(seconds: int) -> str:
    return f"2026-12-01T10:00:{seconds:02d}.5Z"


def task(
    task_id: str,
    state: str,
    *,
    slot: int = 1,
    desired: str = "running",
    node: str = "n1",
    at: int = 0,
    created: int = 0,
    port: int | None = None,
    exit_code: int | None = None,
    err: str = "",
    message: str = "",
    updated: int | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"Timestamp": _stamp(at), "State": state, "Message": message}
    if err:
        status["Err"] = err
    if port is not None:
        status["PortStatus"] = {
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 8080,
                    "PublishedPort": port,
                    "PublishMode": "host",
                }
            ]
        }
    if exit_code is not None:
        status["ContainerStatus"] = {"ExitCode": exit_code}
    return {
        "ID": task_id,
        "ServiceID": "svc1",
        "Slot": slot,
        "NodeID": node,
        "DesiredState": desired,
        "CreatedAt": _stamp(created),
        "UpdatedAt": _stamp(updated if updated is not None else at),
        "Status": status,
    }


def observe(tasks: list[dict[str, Any]], memory: TaskMemory | None = None, now: float = 0.0):
    memory = memory or TaskMemory()
    found = instances_of_service(SERVICE, tasks, NODES, memory, now or parse_time(_stamp(59)) or 0)
    return {i.id: i for i in found}


def test_parse_time() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None and parse_time("garbage") is None
    assert parse_time("2026-12-01T10:00:00.25Z") == pytest.approx(parse_time(T0) + 0.25)  # type: ignore[operator]
    assert parse_time("2026-12-01T11:00:00+01:00") == parse_time(T0)


def test_a_running_task_is_a_running_instance_with_node_address_and_port() -> None:
    (instance,) = observe([task("t1", "running", at=5, port=30001)]).values()
    assert instance.state == "running" and instance.alive
    assert (instance.node, instance.address, instance.port) == ("w1", "10.0.0.11", 30001)
    assert instance.started_at == parse_time(_stamp(5))
    assert instance.finished_at is None and instance.exit_code is None
    assert instance.group == "a1/web/r1:1" and instance.tenant_id == "t1"
    assert (instance.memory_mb, instance.cpus_milli) == (128, 250)
    assert instance.health_path == "/healthz" and instance.slot == "hello-web-v1-g1-abc.1"
    assert instance.seq == int(parse_time(_stamp(0)) * 1000)  # type: ignore[operator]


@pytest.mark.parametrize("state", ["new", "pending", "allocated"])
def test_pending_states_carry_swarms_reason(state: str) -> None:
    why = "no suitable node (insufficient resources on 3 nodes)"
    (instance,) = observe(
        [task("t1", state, node="", err=why, message="pending task scheduling")]
    ).values()
    assert instance.state == "pending" and instance.reason == why
    assert instance.port is None and instance.address is None and instance.node == ""
    (waiting,) = observe([task("t1", state, node="", message="pending task scheduling")]).values()
    assert waiting.reason == "pending task scheduling"


@pytest.mark.parametrize("state", ["assigned", "accepted", "preparing", "ready", "starting"])
def test_states_before_running_are_starting(state: str) -> None:
    (instance,) = observe([task("t1", state, message="preparing")]).values()
    assert instance.state == "starting" and instance.alive


def test_a_task_shutting_down_while_running_is_stopping() -> None:
    (instance,) = observe([task("t1", "running", desired="shutdown", port=30001)]).values()
    assert instance.state == "stopping" and not instance.alive and instance.port == 30001


@pytest.mark.parametrize("state", ["complete", "failed", "shutdown", "rejected", "orphaned"])
def test_ended_tasks_are_over_for_good_with_their_exit_code_and_end(state: str) -> None:
    memory = TaskMemory()
    observe([task("t1", "running", at=5, port=30001)], memory)
    ended = task("t1", state, desired="shutdown", at=9, exit_code=3, err="task: non-zero exit (3)")
    (instance,) = observe([ended], memory).values()
    # Swarm never starts an ended task again: "removed" (history, billed to its end).
    assert instance.state == "removed" and instance.exit_code == 3
    assert instance.started_at == parse_time(_stamp(5))  # remembered from when it ran
    assert instance.finished_at == parse_time(_stamp(9))
    assert instance.port is None


def test_the_port_is_remembered_when_portstatus_comes_back_empty() -> None:
    memory = TaskMemory()
    observe([task("t1", "running", port=30007)], memory)
    (instance,) = observe([task("t1", "running")], memory).values()  # after a leader change
    assert instance.port == 30007


def test_a_task_on_a_down_node_that_swarm_replaced_is_over() -> None:
    stale = task("old", "running", node="n2", desired="shutdown", port=30001, at=1, updated=20)
    new = task("new", "running", node="n1", created=20, at=21, port=30002)
    found = observe([stale, new])
    assert found["old"].state == "removed" and found["old"].reason == "node w2 is down"
    assert found["old"].finished_at == parse_time(_stamp(20))
    assert found["new"].state == "running"


def test_only_the_newest_task_of_a_slot_is_alive() -> None:
    older = task("old", "running", created=1, port=30001)
    newer = task("new", "running", created=5, port=30002)
    other_slot = task("s2", "running", slot=2, created=2, port=30003)
    found = observe([newer, older, other_slot])
    assert sum(1 for i in found.values() if i.alive) == 2
    assert found["new"].alive and found["s2"].alive and not found["old"].alive


def test_failures_in_a_row_make_a_crash_loop() -> None:
    history = [
        task(f"f{n}", "failed", desired="shutdown", created=n, at=n, exit_code=2)
        for n in range(1, 5)
    ]
    current = task("now", "starting", created=10)
    found = observe([*history, current])
    assert found["now"].restarts == 4
    assert found["now"].reason == "crash loop: exited 4 times in a row (last exit code 2)"
    assert all(found[f"f{n}"].state == "removed" for n in range(1, 5))
    # A clean stop breaks the run: only the failures after it count.
    clean = task("ok", "shutdown", desired="shutdown", created=2, at=2, exit_code=0)
    found = observe([history[0], clean, history[2], history[3], current])
    assert found["now"].restarts == 2 and found["now"].reason == ""


def test_a_task_that_ran_long_enough_ends_the_crash_loop() -> None:
    history = [
        task(f"f{n}", "failed", desired="shutdown", created=n, exit_code=1) for n in range(1, 4)
    ]
    memory = TaskMemory()
    running = task("now", "running", created=10, at=10, port=30001)
    started = parse_time(_stamp(10)) or 0.0
    assert observe([*history, running], memory, now=started + 1)["now"].restarts == 3
    assert observe([*history, running], memory, now=started + 60)["now"].restarts == 0


def test_a_pending_task_cancelled_before_it_ran_is_over_and_never_started() -> None:
    (instance,) = observe([task("t1", "pending", desired="shutdown", node="")]).values()
    assert instance.state == "removed" and instance.started_at is None


def test_memory_forgets_tasks_that_are_gone() -> None:
    memory = TaskMemory()
    observe([task("t1", "running", port=30001)], memory)
    memory.forget([])
    assert memory.ports == {} and memory.started == {}


def test_a_services_instances_are_read_again_only_when_a_task_changed() -> None:
    service = {**SERVICE, "Version": {"Index": 7}}
    memory = TaskMemory()
    running = {**task("t1", "running", port=30001), "Version": {"Index": 10}}
    (first,) = instances_of_service(service, [running], NODES, memory, 0.0)
    (again,) = instances_of_service(service, [dict(running)], NODES, memory, 0.0)
    assert again is first  # the same facts: the same instance, not read again
    ended = {**task("t1", "complete", at=9, exit_code=0), "Version": {"Index": 11}}
    (after,) = instances_of_service(service, [ended], NODES, memory, 0.0)
    assert after.state == "exited" and after.exit_code == 0


def test_a_task_missing_a_field_is_still_read() -> None:
    service = {**SERVICE, "Version": {"Index": 7}}
    bare = task("t1", "running", port=30001)  # no Version, as a minimal listing may give
    memory = TaskMemory()
    (instance,) = instances_of_service(service, [bare], NODES, memory, 0.0)
    assert instance.state == "running" and instance.port == 30001
    no_status = {**bare, "Status": None, "Version": {"Index": 12}}
    (unknown,) = instances_of_service(service, [no_status], NODES, memory, 0.0)
    assert unknown.id == "t1" and unknown.state == "pending"  # Swarm's "new" until it says
