"""Node rows from Docker's JSON (pure): roles, states, labels, capacity, reserved, instances."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from berth.cluster.views import local_row, node_row, node_rows, parse_time, resolve
from berth.workloads.protocol import LABEL_APP_NAME, LABEL_INSTALLATION, LABEL_TENANT

INST = "inst1"
NOW = 1_800_000_000.0


def node(
    node_id: str,
    hostname: str,
    role: str = "worker",
    state: str = "ready",
    availability: str = "active",
    labels: dict[str, str] | None = None,
    addr: str = "10.0.0.12",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Version": {"Index": 3},
        "CreatedAt": "2026-12-01T10:00:00.5Z",
        "UpdatedAt": "2026-12-01T11:49:47.826037891Z",
        "Spec": {"Labels": labels or {}, "Role": role, "Availability": availability},
        "Description": {
            "Hostname": hostname,
            "Resources": {"NanoCPUs": 2_000_000_000, "MemoryBytes": 8 << 30},
            "Engine": {"EngineVersion": "20.10.24+dfsg1"},
        },
        "Status": {"State": state, "Addr": addr},
        **extra,
    }


def task(
    node_id: str,
    state: str = "running",
    desired: str = "running",
    mem: int = 256 << 20,
    cpu: int = 500_000_000,
    ours: bool = True,
    app: str = "web",
) -> dict[str, Any]:
    labels = {LABEL_INSTALLATION: INST, LABEL_APP_NAME: app, LABEL_TENANT: "t1"} if ours else {}
    return {
        "ID": f"task-{node_id}-{state}-{app}-{mem}",
        "NodeID": node_id,
        "DesiredState": desired,
        "Status": {"State": state},
        "Spec": {
            "ContainerSpec": {"Labels": labels},
            "Resources": {"Reservations": {"MemoryBytes": mem, "NanoCPUs": cpu}},
        },
    }


def test_parse_time_reads_nanoseconds_and_zero_time() -> None:
    whole = dt.datetime(2026, 12, 1, 11, 49, 47, tzinfo=dt.UTC).timestamp()
    assert parse_time("2026-12-01T11:49:47.826037891Z") == pytest.approx(whole + 0.826037)
    assert parse_time("2026-12-01T11:49:47Z") == whole
    assert parse_time("2026-12-01T12:49:47.5+01:00") == whole + 0.5
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None and parse_time(None) is None
    assert parse_time("yesterday") is None


def test_a_worker_row_sums_reservations_of_live_tasks_and_counts_berths_running() -> None:
    n = node("w1", "host-w1", labels={"zone": "a", "disk": "ssd"})
    tasks = [
        task("w1"),  # ours, running: reserved and counted
        task("w1", state="pending", app="api"),  # ours, about to run: reserved, not running
        task("w1", state="shutdown", desired="shutdown", app="old"),  # gone: nothing
        task("w1", state="running", desired="shutdown", app="stopping"),  # being stopped
        task("w1", ours=False, mem=1 << 30, cpu=1_000_000_000),  # someone else's, running
        task("w2"),  # another node's
    ]
    row = node_row(n, tasks, INST, NOW)
    assert (row.name, row.address, row.role, row.state, row.availability) == (
        "host-w1",
        "10.0.0.12",
        "worker",
        "ready",
        "active",
    )
    assert row.zone == "a" and row.labels == {"zone": "a", "disk": "ssd"}
    assert (row.memory_bytes, row.nano_cpus) == (8 << 30, 2_000_000_000)
    assert row.reserved_memory_bytes == 2 * (256 << 20) + (1 << 30)
    assert row.reserved_nano_cpus == 2 * 500_000_000 + 1_000_000_000
    assert row.instances == 2  # ours running: "web" and "stopping"
    assert row.tasks == 3
    assert sorted(t.app for t in row.berth_tasks) == ["api", "stopping", "web"]
    assert row.last_seen == NOW  # ready: it answers heartbeats now
    assert row.engine_version == "20.10.24+dfsg1"
    assert row.created_at == pytest.approx(parse_time("2026-12-01T10:00:00.5Z"))


def test_a_down_node_was_last_seen_when_its_status_changed() -> None:
    n = node("w2", "host-w2", state="down")
    n["Status"]["Message"] = "heartbeat failure"
    row = node_row(n, [], INST, NOW)
    assert row.state == "down" and row.message == "heartbeat failure"
    assert row.last_seen == parse_time("2026-12-01T11:49:47.826037891Z")
    assert (row.instances, row.reserved_memory_bytes, row.zone) == (0, 0, None)


def test_a_manager_row_has_leadership_and_its_raft_address_when_status_has_none() -> None:
    n = node(
        "m1",
        "host-m1",
        role="manager",
        availability="drain",
        addr="0.0.0.0",
        ManagerStatus={"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.11:2377"},
    )
    row = node_row(n, [], INST, NOW)
    assert (row.role, row.leader, row.reachability, row.address) == (
        "manager",
        True,
        "reachable",
        "10.0.0.11",
    )


def test_rows_put_managers_first_then_names() -> None:
    rows = node_rows(
        [node("b", "w-b"), node("a", "w-a"), node("m", "m-z", role="manager")], [], INST, NOW
    )
    assert [r.name for r in rows] == ["m-z", "w-a", "w-b"]


def test_json_of_a_row_has_cpus_and_tasks_only_when_asked() -> None:
    row = node_row(node("w1", "h"), [task("w1")], INST, NOW)
    listed = row.to_json()
    assert listed["cpus"] == 2.0 and listed["reserved_cpus"] == 0.5
    assert "berth_tasks" not in listed
    detailed = row.to_json(with_tasks=True)
    assert [t["app"] for t in detailed["berth_tasks"]] == ["web"]


def test_the_local_node_is_this_machine_on_loopback() -> None:
    row = local_row("box", 16 << 30, 4_000_000_000, 3, NOW)
    assert (row.role, row.address, row.state, row.instances) == ("local", "127.0.0.1", "ready", 3)


def test_resolve_by_id_name_and_prefix_and_refuses_ambiguity() -> None:
    nodes = [node("abc123", "w1"), node("abd456", "w2"), node("x1", "dup"), node("x2", "dup")]
    assert resolve(nodes, "abc123")["ID"] == "abc123"
    assert resolve(nodes, "w2")["ID"] == "abd456"
    assert resolve(nodes, "abc")["ID"] == "abc123"
    with pytest.raises(ValueError) as two:
        resolve(nodes, "dup")
    assert two.value.args[0] == ["x1", "x2"]
    with pytest.raises(ValueError):
        resolve(nodes, "ab")
    with pytest.raises(LookupError):
        resolve(nodes, "nope")
    with pytest.raises(LookupError):
        resolve(nodes, "")
