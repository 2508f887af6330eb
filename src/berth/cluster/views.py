"""Rows for ``berth nodes list/info``, pure: from the JSON Docker answers for nodes and tasks.

Nothing here talks to an engine; ``berth.cluster.nodes`` reads the JSON and hands it over.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from berth.cluster.labels import ZONE
from berth.swarm.guard_service import LABEL_GUARD
from berth.swarm.ingress_service import LABEL_SERVICE as LABEL_INGRESS_SERVICE
from berth.workloads.protocol import LABEL_APP_NAME, LABEL_INSTALLATION, LABEL_TENANT

# Task states in which a task holds (or is about to hold) its reservation on its node.
RESERVING_STATES = frozenset(
    {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
)


@dataclass(frozen=True)
class TaskRow:
    """A task of Berth's on a node (``nodes info``)."""

    id: str
    app: str
    tenant_id: str
    state: str
    desired_state: str
    memory_bytes: int
    nano_cpus: int


@dataclass(frozen=True)
class NodeRow:
    id: str
    name: str
    address: str
    role: str  # "manager" | "worker" | "local"
    availability: str  # "active" | "pause" | "drain"
    state: str  # "ready" | "down" | "unknown" | "disconnected"
    zone: str | None
    labels: Mapping[str, str]
    memory_bytes: int
    nano_cpus: int
    reserved_memory_bytes: int  # reservations of the tasks running or about to run there
    reserved_nano_cpus: int
    instances: int  # Berth's tasks running there
    tasks: int  # every task running there (Berth's and others')
    leader: bool = False
    reachability: str = ""  # managers: "reachable" | "unreachable" | "unknown"
    message: str = ""  # Swarm's word on its state ("heartbeat failure")
    engine_version: str = ""
    created_at: float | None = None
    updated_at: float | None = None
    # A node that is ready answers heartbeats: seen now. Otherwise: when its status last
    # changed (the Swarm keeps no other time), i.e. since when it is down.
    last_seen: float | None = None
    berth_tasks: Sequence[TaskRow] = field(default_factory=tuple)
    # Berth's node guard there (berth.swarm.guard_service): its task's state ("running",
    # "starting", "failed", ...); "" when none is meant to run there (no guard, or drained).
    guard: str = ""
    # Its ``berth-ingress`` task's state (berth.swarm.ingress_service); "" when it is no
    # ingress node.
    ingress: str = ""

    def to_json(self, with_tasks: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = dict(self.labels)
        out["cpus"] = round(self.nano_cpus / 1e9, 3)
        out["reserved_cpus"] = round(self.reserved_nano_cpus / 1e9, 3)
        tasks = out.pop("berth_tasks")
        if with_tasks:
            out["berth_tasks"] = tasks
        return out


def parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 times with nanoseconds ("2026-12-01T11:45:19.123456789Z")."""
    if not value or value.startswith("0001-"):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, sep, rest = text.partition(".")
    if sep:
        count = len(rest) - len(rest.lstrip("0123456789"))
        digits, zone = rest[:count], rest[count:]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _labels_of_task(task: Mapping[str, Any]) -> Mapping[str, str]:
    spec = task.get("Spec") or {}
    labels: dict[str, str] = dict((spec.get("ContainerSpec") or {}).get("Labels") or {})
    labels.update(task.get("Labels") or {})
    return labels


def is_guard(task: Mapping[str, Any]) -> bool:
    return _labels_of_task(task).get(LABEL_GUARD) == "true"


def is_ingress_node_task(task: Mapping[str, Any]) -> bool:
    return _labels_of_task(task).get(LABEL_INGRESS_SERVICE) == "true"


def guard_state(tasks: Iterable[Mapping[str, Any]]) -> str:
    """The state of the newest guard task meant to run among ``tasks`` (one node's)."""
    return _newest_state(tasks, is_guard)


def ingress_task_state(tasks: Iterable[Mapping[str, Any]]) -> str:
    """The state of the newest ``berth-ingress`` task meant to run among ``tasks``."""
    return _newest_state(tasks, is_ingress_node_task)


def _newest_state(
    tasks: Iterable[Mapping[str, Any]], kind: Callable[[Mapping[str, Any]], bool]
) -> str:
    meant = [t for t in tasks if kind(t) and t.get("DesiredState") in ("running", "ready")]
    if not meant:
        return ""
    newest = max(meant, key=lambda t: int((t.get("Version") or {}).get("Index") or 0))
    return task_state(newest)


def is_berths(task: Mapping[str, Any], installation: str) -> bool:
    return _labels_of_task(task).get(LABEL_INSTALLATION) == installation


def _reservation(task: Mapping[str, Any]) -> tuple[int, int]:
    res = ((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
    return int(res.get("MemoryBytes") or 0), int(res.get("NanoCPUs") or 0)


def task_state(task: Mapping[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "unknown")


def _address(node: Mapping[str, Any]) -> str:
    addr = str((node.get("Status") or {}).get("Addr") or "")
    manager_addr = str((node.get("ManagerStatus") or {}).get("Addr") or "")
    # A manager may report 0.0.0.0 in Status.Addr; its Raft address is the real one.
    if (not addr or addr == "0.0.0.0") and manager_addr:
        host = manager_addr.rsplit(":", 1)[0]
        return host.strip("[]")
    return addr


def node_row(
    node: Mapping[str, Any], tasks: Iterable[Mapping[str, Any]], installation: str, now: float
) -> NodeRow:
    """One node's row; ``tasks`` may be every task of the swarm (those of other nodes are
    ignored)."""
    node_id = str(node.get("ID", ""))
    spec = node.get("Spec") or {}
    desc = node.get("Description") or {}
    status = node.get("Status") or {}
    manager = node.get("ManagerStatus") or {}
    resources = desc.get("Resources") or {}
    labels = {str(k): str(v) for k, v in (spec.get("Labels") or {}).items()}
    reserved_mem = reserved_cpu = instances = running = 0
    berth_tasks: list[TaskRow] = []
    here = [task for task in tasks if task.get("NodeID") == node_id]
    for task in here:
        state = task_state(task)
        desired = str(task.get("DesiredState") or "")
        mem, cpu = _reservation(task)
        holding = state in RESERVING_STATES and desired in ("running", "ready", "")
        if holding:
            reserved_mem += mem
            reserved_cpu += cpu
        if state == "running":
            running += 1
        if is_berths(task, installation):
            if state == "running":
                instances += 1
            if holding or state == "running":
                labels_of = _labels_of_task(task)
                berth_tasks.append(
                    TaskRow(
                        id=str(task.get("ID", "")),
                        app=labels_of.get(LABEL_APP_NAME, ""),
                        tenant_id=labels_of.get(LABEL_TENANT, ""),
                        state=state,
                        desired_state=desired,
                        memory_bytes=mem,
                        nano_cpus=cpu,
                    )
                )
    state = str(status.get("State") or "unknown")
    updated = parse_time(node.get("UpdatedAt"))
    return NodeRow(
        id=node_id,
        name=str(desc.get("Hostname") or spec.get("Name") or node_id[:12]),
        address=_address(node),
        role=str(spec.get("Role") or "worker"),
        availability=str(spec.get("Availability") or "active"),
        state=state,
        zone=labels.get(ZONE),
        labels=labels,
        memory_bytes=int(resources.get("MemoryBytes") or 0),
        nano_cpus=int(resources.get("NanoCPUs") or 0),
        reserved_memory_bytes=reserved_mem,
        reserved_nano_cpus=reserved_cpu,
        instances=instances,
        tasks=running,
        leader=bool(manager.get("Leader")),
        reachability=str(manager.get("Reachability") or ""),
        message=str(status.get("Message") or ""),
        engine_version=str((desc.get("Engine") or {}).get("EngineVersion") or ""),
        created_at=parse_time(node.get("CreatedAt")),
        updated_at=updated,
        last_seen=now if state == "ready" else updated,
        berth_tasks=tuple(sorted(berth_tasks, key=lambda t: (t.app, t.id))),
        guard=guard_state(here),
        ingress=ingress_task_state(here),
    )


def node_rows(
    nodes: Iterable[Mapping[str, Any]],
    tasks: Iterable[Mapping[str, Any]],
    installation: str,
    now: float,
) -> list[NodeRow]:
    """Every node's row: managers first, then by name (and id, for names seen twice)."""
    task_list = list(tasks)
    rows = [node_row(n, task_list, installation, now) for n in nodes]
    return sorted(rows, key=lambda r: (r.role != "manager", r.name, r.id))


def local_row(name: str, memory_bytes: int, nano_cpus: int, instances: int, now: float) -> NodeRow:
    """The one node of an installation on the local backend (no Swarm)."""
    return NodeRow(
        id="local",
        name=name,
        address="127.0.0.1",
        role="local",
        availability="active",
        state="ready",
        zone=None,
        labels={},
        memory_bytes=memory_bytes,
        nano_cpus=nano_cpus,
        reserved_memory_bytes=0,
        reserved_nano_cpus=0,
        instances=instances,
        tasks=instances,
        last_seen=now,
    )


def resolve(nodes: Sequence[Mapping[str, Any]], ref: str) -> Mapping[str, Any]:
    """The node a user means by ``ref``: its id, its name, or a unique prefix of its id.

    Raises LookupError (no such node) or ValueError (ambiguous: the candidates' ids).
    """
    by_id = [n for n in nodes if n.get("ID") == ref]
    if by_id:
        return by_id[0]
    by_name = [n for n in nodes if (n.get("Description") or {}).get("Hostname") == ref]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise ValueError(sorted(str(n.get("ID")) for n in by_name))
    by_prefix = [n for n in nodes if ref and str(n.get("ID", "")).startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise ValueError(sorted(str(n.get("ID")) for n in by_prefix))
    raise LookupError(ref)
