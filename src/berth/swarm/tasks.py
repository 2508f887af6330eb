"""What Swarm's tasks say about a group's instances (pure: no I/O).

One task is one instance. Swarm keeps a few old tasks per slot (its task history), so a slot
holds its current task and the ones it replaced: only the newest task of a slot that is not over
can be alive, the older ones are history (exited). Facts the manager may forget are remembered
by the caller in a TaskMemory: a task's host port (after a Raft leader change a running task was
seen re-reported with an empty PortStatus) and when it started running (Swarm's Status.Timestamp
moves on when the task ends).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from berth.swarm.specs import LABEL_SPEC as LABEL_SPEC_HASH
from berth.workloads.protocol import (
    LABEL_APP,
    LABEL_CPUS_MILLI,
    LABEL_GROUP,
    LABEL_HEALTH_PATH,
    LABEL_MEMORY_MB,
    LABEL_PORT,
    LABEL_PROCESS,
    LABEL_REVISION,
    LABEL_TENANT,
    InstanceState,
    WorkloadInstance,
)

Obj = dict[str, Any]

PENDING_STATES = frozenset({"new", "pending", "allocated"})
STARTING_STATES = frozenset({"assigned", "accepted", "preparing", "ready", "starting"})
ENDED_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
FAILED_STATES = frozenset({"failed", "rejected"})
CRASH_LOOP_AFTER = 3  # exits in a row before ``ps`` says "crash loop"
# A task that has run this long is no longer part of a crash loop: its slot's count restarts.
STABLE_SECONDS = 10.0

_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)$"
)


@dataclass(frozen=True)
class NodeView:
    """What an instance needs of its node."""

    name: str
    address: str
    state: str  # "ready", "down", ...


@dataclass
class TaskMemory:
    """What the caller remembers between observations, by task id."""

    ports: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    # A task's view as of its Version.Index and its node's state: Swarm bumps the version on
    # every change of the task, so an unchanged one is not read again (30,000 tasks a pass).
    views: dict[str, tuple[tuple[Any, ...], _View]] = field(default_factory=dict)
    instances: dict[str, tuple[tuple[Any, ...], WorkloadInstance]] = field(default_factory=dict)
    # A service's instances as of its version, its tasks' versions and their nodes: most of
    # 10,000 services do not change between two passes.
    services: dict[str, tuple[tuple[Any, ...], list[WorkloadInstance]]] = field(
        default_factory=dict
    )

    def forget(self, live_ids: Iterable[str], live_services: Iterable[str] = ()) -> None:
        keep = live_ids if isinstance(live_ids, (set, frozenset)) else set(live_ids)
        # Set differences of the keys: 30,000 live tasks a pass, most of them still live.
        for memo in (self.ports, self.started, self.views, self.instances):
            for task_id in memo.keys() - keep:
                del memo[task_id]
        for service_id in self.services.keys() - set(live_services):
            del self.services[service_id]


def parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds) as unix seconds; its zero time is None."""
    return _parse_time(text) if text else None


# A task's times do not change once written, and every pass reads them all again.
@functools.lru_cache(maxsize=1 << 18)
def _parse_time(text: str) -> float | None:
    if not text or text.startswith("0001-01-01"):
        return None
    match = _RFC3339.match(text)
    if match is None:
        return None
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    seconds = datetime.fromisoformat(match["base"] + zone).timestamp()
    fraction = match["fraction"] or ""
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def published_port(task: Mapping[str, Any], target: int | None) -> int | None:
    """The host-mode port Swarm published for ``target`` on the task's node."""
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for port in ports:
        if port.get("PublishedPort") and (target is None or port.get("TargetPort") == target):
            return int(port["PublishedPort"])
    return None


def crash_loop_reason(restarts: int, exit_code: int | None) -> str:
    code = "unknown" if exit_code is None else str(exit_code)
    return f"crash loop: exited {restarts} times in a row (last exit code {code})"


def instances_of_service(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeView],
    memory: TaskMemory,
    now: float,
) -> list[WorkloadInstance]:
    """Every task of one service as an instance; updates ``memory`` with what it learned."""
    key = _service_key(service, tasks, nodes)
    memo = memory.services.get(str(service.get("ID"))) if key is not None else None
    if memo is not None and memo[0] == key:
        return list(memo[1])
    out = _instances_of_service(service, tasks, nodes, memory, now)
    if key is not None:
        memory.services[str(service.get("ID"))] = (key, out)
    return list(out)


def _service_key(
    service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]], nodes: Mapping[str, NodeView]
) -> tuple[Any, ...] | None:
    """What a service's instances depend on; None when they also depend on the time (a failed
    task in a slot's history: the crash-loop count ends once the current task is stable) or
    the service has no version (one already removed)."""
    version = (service.get("Version") or {}).get("Index")
    if version is None:
        return None
    facts: list[tuple[Any, ...]] = []
    append, node_of = facts.append, nodes.get  # 30,000 tasks a pass
    try:
        # Subscripts for the fields every task the Engine API lists has (several times
        # cheaper than .get); a task without one is read leniently below.
        for task in tasks:
            if task["Status"]["State"] in FAILED_STATES:
                return None
            node = node_of(str(task.get("NodeID") or ""))
            append((task["ID"], task["Version"]["Index"], task["DesiredState"], node))
    except (KeyError, TypeError):
        return _lenient_service_key(version, tasks, nodes)
    return (version, tuple(facts))


def _lenient_service_key(
    version: Any, tasks: Sequence[Mapping[str, Any]], nodes: Mapping[str, NodeView]
) -> tuple[Any, ...] | None:
    facts = []
    for task in tasks:
        status = task.get("Status") or {}
        if status.get("State") in FAILED_STATES:
            return None
        facts.append(
            (
                task.get("ID"),
                (task.get("Version") or {}).get("Index"),
                task.get("DesiredState"),
                nodes.get(str(task.get("NodeID") or "")),
            )
        )
    return (version, tuple(facts))


def _instances_of_service(
    service: Mapping[str, Any],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeView],
    memory: TaskMemory,
    now: float,
) -> list[WorkloadInstance]:
    spec = service.get("Spec") or {}
    labels: Mapping[str, str] = spec.get("Labels") or {}
    name = str(spec.get("Name") or service.get("ID", ""))
    port_label = labels.get(LABEL_PORT, "")
    target = int(port_label) if port_label.isdigit() else None
    slots: dict[str, list[Mapping[str, Any]]] = {}
    for task in tasks:
        # A global service's tasks have no slot: their node is their slot.
        slot = str(task.get("Slot") or task.get("NodeID") or task.get("ID"))
        slots.setdefault(slot, []).append(task)
    out: list[WorkloadInstance] = []
    for slot, history in slots.items():
        if len(history) > 1:
            history.sort(key=lambda t: (parse_time(t.get("CreatedAt")) or 0.0, str(t.get("ID"))))
        newest_alive: str | None = None
        views = []
        for task in history:
            node = nodes.get(str(task.get("NodeID") or ""))
            key = (
                (task.get("Version") or {}).get("Index"),
                task.get("DesiredState"),
                node,
                target,
            )
            cached = memory.views.get(str(task["ID"]))
            if cached is not None and cached[0] == key and key[0] is not None:
                view = cached[1]
            else:
                view = _task_view(task, nodes, memory, target)
                memory.views[view.task_id] = (key, view)
            views.append(view)
            if view.state in ("pending", "starting", "running"):
                newest_alive = view.task_id  # sorted oldest first: the last one wins
        restarts, last_exit = _failures_in_a_row(history, now, memory)
        newest = views[-1].task_id if views else None
        for task, view in zip(history, views, strict=True):
            state, reason = view.state, view.reason
            if view.task_id != newest_alive and state in ("pending", "starting", "running"):
                # An older task Swarm still reports alive in a slot that has a newer one.
                state, reason = (
                    ("stopping", "replaced") if state == "running" else ("exited", "replaced")
                )
            if state == "exited" and (
                view.task_id != newest or task.get("DesiredState") in ("shutdown", "remove")
            ):
                # Swarm never starts an ended task again: replaced in its slot, or its slot
                # scaled away or drained. Its run is over for good (billed to its end), and
                # it is history, not an instance: the slot's live task carries the count.
                state = "removed"
            if view.task_id == newest_alive and restarts >= CRASH_LOOP_AFTER:
                reason = crash_loop_reason(restarts, last_exit)
            task_restarts = restarts if view.task_id == newest_alive else 0
            # The same facts give the same (immutable) instance: reuse it, most tasks do not
            # change between two passes.
            facts = (view, state, reason, task_restarts, name, labels.get(LABEL_SPEC_HASH))
            made = memory.instances.get(view.task_id)
            if made is not None and made[0] == facts:
                out.append(made[1])
                continue
            instance = WorkloadInstance(
                id=view.task_id,
                group=labels.get(LABEL_GROUP, ""),
                tenant_id=labels.get(LABEL_TENANT, ""),
                app_id=labels.get(LABEL_APP, ""),
                revision=labels.get(LABEL_REVISION, ""),
                state=state,
                node=view.node_name,
                process=labels.get(LABEL_PROCESS, "web"),
                address=view.address if view.port is not None else None,
                port=view.port,
                health_path=labels.get(LABEL_HEALTH_PATH) or None,
                started_at=view.started_at,
                finished_at=view.finished_at,
                exit_code=view.exit_code,
                restarts=task_restarts,
                reason=reason,
                memory_mb=_int(labels.get(LABEL_MEMORY_MB)),
                cpus_milli=_int(labels.get(LABEL_CPUS_MILLI)),
                seq=int((parse_time(view.created_at) or 0.0) * 1000),
                slot=f"{name}.{slot}",
            )
            memory.instances[view.task_id] = (facts, instance)
            out.append(instance)
    return out


@dataclass(frozen=True)
class _View:
    task_id: str
    state: InstanceState
    reason: str
    node_name: str
    address: str | None
    port: int | None
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    created_at: str


def _task_view(
    task: Mapping[str, Any], nodes: Mapping[str, NodeView], memory: TaskMemory, target: int | None
) -> _View:
    task_id = str(task["ID"])
    status = task.get("Status") or {}
    observed = str(status.get("State") or "new")
    desired = str(task.get("DesiredState") or "running")
    stamp = parse_time(status.get("Timestamp"))
    node = nodes.get(str(task.get("NodeID") or ""))
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
    port = published_port(task, target)
    if port is not None and observed == "running":
        memory.ports[task_id] = port
    port = port or memory.ports.get(task_id)
    if observed == "running" and stamp is not None:
        memory.started.setdefault(task_id, stamp)
    started_at = memory.started.get(task_id)
    err = str(status.get("Err") or "")
    message = str(status.get("Message") or "")
    state: InstanceState
    finished_at: float | None = None
    reason = ""
    wants_running = desired in ("running", "ready", "accepted", "assigned", "new", "pending")
    if observed in PENDING_STATES or observed in STARTING_STATES:
        if not wants_running:
            # Cancelled before it ran (a scale-down of a pending task): it never held anything.
            state, reason, finished_at = "exited", "cancelled before it ran", stamp
        elif observed in PENDING_STATES:
            state, reason = "pending", err or message
        else:
            state, reason = "starting", message
    elif observed == "running":
        if node is not None and node.state == "down" and not wants_running:
            # Swarm replaced it; its node is gone and will never report its end. Billed until
            # Swarm gave up on it (when it set the task to shut down).
            state = "exited"
            reason = f"node {node.name} is down"
            finished_at = parse_time(task.get("UpdatedAt")) or stamp
        elif wants_running:
            state = "running"
        else:
            state, reason = "stopping", "stopping"
    else:  # ended
        state, finished_at = "exited", stamp
        reason = err if observed in FAILED_STATES else (err or "")
    if state not in ("running", "stopping"):
        port = None if state != "exited" else port
    return _View(
        task_id=task_id,
        state=state,
        reason=reason,
        node_name=node.name if node is not None else "",
        address=node.address if node is not None else None,
        port=port if state in ("running", "stopping") else None,
        started_at=started_at,
        finished_at=finished_at,
        exit_code=int(exit_code) if state == "exited" and exit_code is not None else None,
        created_at=str(task.get("CreatedAt") or ""),
    )


def _failures_in_a_row(
    history: Sequence[Mapping[str, Any]], now: float, memory: TaskMemory
) -> tuple[int, int | None]:
    """Failed tasks in a row at the end of a slot's history (oldest first), and the last exit
    code. A current task that has run for STABLE_SECONDS ends the run of failures."""
    count = 0
    last_exit: int | None = None
    for task in reversed(history):
        status = task.get("Status") or {}
        observed = status.get("State")
        if observed in FAILED_STATES:
            count += 1
            if last_exit is None:
                code = (status.get("ContainerStatus") or {}).get("ExitCode")
                last_exit = int(code) if code is not None else None
            continue
        if observed in ENDED_STATES:
            break  # a clean stop (shutdown, complete) is not a crash
        if count == 0:
            started = memory.started.get(str(task.get("ID")))
            if observed == "running" and started is not None and now - started >= STABLE_SECONDS:
                return 0, None
            continue  # the current task: count the failures before it
        break
    return count, last_exit


def _int(text: str | None) -> int:
    try:
        return int(text or "0")
    except ValueError:
        return 0
