"""An in-memory Swarm with a toy scheduler: the unit tests' and the scale simulation's manager.

It implements SwarmAPI and passes the same contract suite as a real manager
(tests/cluster/test_swarm_api_contract.py). What it honours, because Berth relies on it:

- nodes: availability (active / pause / drain), state (ready / down; unknown or disconnected
  keep their tasks, as a real manager does until it declares the node down), role, and
  ``UpdatedAt`` moved on by every change; a task goes only to a ready, active node (a manager
  too, when it is active, as in Swarm);
- placement: constraints on ``node.labels.*``, ``node.role``, ``node.id``, ``node.hostname``
  (``==``/``!=``); memory reservations against the node's memory; spread over
  ``node.labels.zone`` (a node without the label is a branch of its own), then the node with
  the fewest tasks of the service, then the fewest tasks;
- Swarm's pending reasons, verbatim in shape: ``no suitable node (scheduling constraints not
  satisfied on 3 nodes; 1 node not available for new tasks)``, most failures first;
- a dynamic host-mode port per task and node, as Swarm publishes without a fixed port;
- a node going down: its tasks are set to shut down but still read ``running`` (the node never
  reports back, as with a real manager), replacements run elsewhere; back up, they read
  ``shutdown``. Draining shuts a node's tasks down and reschedules them.

Tasks start at once (``running``), so tests never wait on it. Reads are fast at 1,000 nodes and
30,000 tasks (a listing is a shallow copy of each object: the fake replaces an object's nested
dicts, it never changes them, so what a caller holds stays as it was): it is the scale
simulation's Swarm.
``writes`` counts the calls that change something, for idempotency tests.
"""

from __future__ import annotations

import heapq
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from berth.errors import RuntimeFailure

Obj = dict[str, Any]

FIRST_HOST_PORT = 30000
_ALIVE = frozenset({"pending", "running"})
_CONSTRAINT = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.-]+)\s*(?P<op>==|!=)\s*(?P<value>\S+)\s*$")


def _new_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(25))


class FakeSwarmAPI:
    def __init__(self, clock: Callable[[], float] = time.time, linger: bool = False) -> None:
        """``linger``: as a real manager, a removed service's tasks stay listed (desired
        ``remove``) while they stop; ``finish_removals()`` stops them, a second call drops them.
        Otherwise they go with the service."""
        self.clock = clock
        self.linger = linger
        self.writes = 0
        self._lock = threading.RLock()
        self._version = itertools.count(10)
        self._nodes: dict[str, Obj] = {}
        self._services: dict[str, Obj] = {}
        self._service_names: dict[str, str] = {}  # name -> id (names are unique)
        self._tasks: dict[str, Obj] = {}
        self._by_service: dict[str, dict[str, None]] = {}  # service id -> its task ids, in order
        self._on_node: dict[str, dict[str, None]] = {}  # node id -> live task ids on it
        self._reserved: dict[str, int] = {}  # node id -> memory reserved by its live tasks
        self._next_port: dict[str, int] = {}
        self._networks: dict[str, Obj] = {}
        self._logs: dict[str, str] = {}
        self._pending: dict[str, None] = {}
        self._lingering: dict[str, None] = {}  # tasks of removed services, still listed
        self._gone_labels: dict[str, dict[str, str]] = {}  # removed service id -> its labels

    # -- what a test does to the swarm (not part of SwarmAPI) --------------------------------

    def add_node(
        self,
        hostname: str,
        *,
        role: str = "worker",
        availability: str = "active",
        labels: Mapping[str, str] | None = None,
        memory_bytes: int = 8 * 1024**3,
        nano_cpus: int = 4_000_000_000,
        addr: str | None = None,
    ) -> str:
        with self._lock:
            node_id = _new_id()
            index = len(self._nodes) + 1
            self._nodes[node_id] = {
                "ID": node_id,
                "Version": {"Index": next(self._version)},
                "CreatedAt": self._stamp(),
                "UpdatedAt": self._stamp(),
                "Spec": {"Role": role, "Availability": availability, "Labels": dict(labels or {})},
                "Description": {
                    "Hostname": hostname,
                    "Resources": {"NanoCPUs": nano_cpus, "MemoryBytes": memory_bytes},
                },
                "Status": {
                    "State": "ready",
                    "Addr": addr or f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}",
                },
            }
            if role == "manager":
                self._nodes[node_id]["ManagerStatus"] = {"Leader": not self._managers()}
            self._on_node[node_id] = {}
            self._reserved[node_id] = 0
            self._schedule_pending()
            return node_id

    def set_node_state(self, node_id: str, state: str) -> None:
        """``down``: the node is lost (its tasks are replaced elsewhere); ``ready``: it is back."""
        with self._lock:
            node = self._node(node_id)
            was = node["Status"]["State"]
            node["Status"] = {**node["Status"], "State": state}
            node["UpdatedAt"] = self._stamp()
            if state == "down" and was != "down":
                for task_id in list(self._on_node[node_id]):
                    self._replace(self._tasks[task_id], keep_status=True)
            elif state == "ready" and was == "down":
                # The node reports its stale tasks stopped once it is back.
                for task in self._tasks.values():
                    stale = (
                        task["DesiredState"] == "shutdown" and task["Status"]["State"] == "running"
                    )
                    if stale and task.get("NodeID") == node_id:
                        self._end(task, "shutdown", "shutdown", exit_code=0)
            self._schedule_pending()

    def crash_task(self, task_id: str, exit_code: int = 1) -> str | None:
        """The task's process exits; the restart policy starts a new one in its slot."""
        with self._lock:
            task = self._tasks[task_id]
            self._end(task, "failed", "started", exit_code=exit_code,
                      err=f"task: non-zero exit ({exit_code})")  # fmt: skip
            service = self._services.get(task["ServiceID"])
            if service is None:
                return None
            return str(self._new_task(service, task["Slot"])["ID"])

    def set_task_logs(self, task_id: str, text: str) -> None:
        self._logs[task_id] = text

    def node_id(self, hostname: str) -> str:
        for node in self._nodes.values():
            if node["Description"]["Hostname"] == hostname:
                return str(node["ID"])
        raise KeyError(hostname)

    # -- SwarmAPI -----------------------------------------------------------------------------

    def info(self) -> Obj:
        managers = self._managers()
        return {
            "NodeID": managers[0] if managers else "",
            "LocalNodeState": "active",
            "ControlAvailable": True,
            "Nodes": len(self._nodes),
            "Managers": len(managers),
        }

    def nodes(self) -> list[Obj]:
        with self._lock:
            return [dict(n) for n in self._nodes.values()]

    def update_node(self, node_id: str, version: int, spec: Mapping[str, Any]) -> None:
        with self._lock:
            node = self._node(node_id)
            self._check_version(node, version, f"node {node_id}")
            self.writes += 1
            old = node["Spec"]
            node["Spec"] = {
                "Role": spec.get("Role", old["Role"]),
                "Availability": spec.get("Availability", old["Availability"]),
                "Labels": dict(spec.get("Labels") or {}),
            }
            node["Version"] = {"Index": next(self._version)}
            node["UpdatedAt"] = self._stamp()
            for task_id in list(self._on_node[node_id]):
                task = self._tasks[task_id]
                service = self._services[task["ServiceID"]]
                if node["Spec"]["Availability"] == "drain" or not self._satisfies(
                    node, _constraints(service)
                ):
                    self._replace(task, keep_status=False)
            self._schedule_pending()

    def services(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        with self._lock:
            return [
                dict(s) for s in self._services.values() if _has(s["Spec"].get("Labels"), labels)
            ]

    def create_service(self, spec: Mapping[str, Any]) -> str:
        with self._lock:
            name = str(spec.get("Name") or "")
            if not name or name in self._service_names:
                raise RuntimeFailure(
                    f"swarm: cannot create service {name}: "
                    + (
                        "a name is required"
                        if not name
                        else "name conflicts with an existing object"
                    )
                )
            spec = self._resolved(spec)
            self.writes += 1
            service_id = _new_id()
            now = self._stamp()
            service = {
                "ID": service_id,
                "Version": {"Index": next(self._version)},
                "CreatedAt": now,
                "UpdatedAt": now,
                "Spec": spec,
            }
            self._services[service_id] = service
            self._service_names[name] = service_id
            self._by_service[service_id] = {}
            self._scale(service)
            return service_id

    def update_service(self, service_id: str, version: int, spec: Mapping[str, Any]) -> None:
        with self._lock:
            service = self._services.get(service_id)
            if service is None:
                raise RuntimeFailure(f"swarm: cannot update service {service_id}: not found")
            self._check_version(service, version, f"service {service_id}")
            spec = self._resolved(spec)
            self.writes += 1
            changed = _without_mode(spec) != _without_mode(service["Spec"])
            self._service_names.pop(service["Spec"].get("Name", ""), None)
            self._service_names[str(spec.get("Name") or "")] = service_id
            service["Spec"] = spec
            service["Version"] = {"Index": next(self._version)}
            service["UpdatedAt"] = self._stamp()
            if changed:  # a new task template: every task is replaced (stop-first, at once)
                for task_id in list(self._by_service[service_id]):
                    task = self._tasks[task_id]
                    if task["DesiredState"] == "running":
                        self._replace(task, keep_status=False)
            self._scale(service)

    def remove_service(self, service_id: str) -> None:
        with self._lock:
            if service_id not in self._services:
                return
            self.writes += 1
            for task_id in self._by_service.pop(service_id):
                task = self._tasks[task_id]
                self._release(task)
                self._pending.pop(task_id, None)
                if self.linger:
                    task["DesiredState"] = "remove"
                    task["Version"] = {"Index": next(self._version)}
                    self._lingering[task_id] = None
                else:
                    del self._tasks[task_id]
                    self._logs.pop(task_id, None)
            if self.linger:
                self._gone_labels[service_id] = dict(self._services[service_id]["Spec"]["Labels"])
            self._service_names.pop(self._services[service_id]["Spec"].get("Name", ""), None)
            del self._services[service_id]
            self._schedule_pending()

    def finish_removals(self) -> None:
        """Lingering tasks that still run stop now; those already stopped are dropped."""
        with self._lock:
            for task_id in list(self._lingering):
                task = self._tasks[task_id]
                if task["Status"]["State"] in ("running", "new", "pending"):
                    self._end(task, "shutdown", "shutdown", exit_code=0, desired="remove")
                else:
                    del self._tasks[task_id]
                    del self._lingering[task_id]
                    self._logs.pop(task_id, None)
            still = {self._tasks[t]["ServiceID"] for t in self._lingering}
            for service_id in [s for s in self._gone_labels if s not in still]:
                del self._gone_labels[service_id]

    def tasks(
        self, service_id: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Obj]:
        with self._lock:
            found: Iterator[Obj]
            if service_id is not None:
                ids = self._by_service.get(service_id, {})
                found = (self._tasks[t] for t in ids)
            else:
                found = iter(self._tasks.values())
            if labels:
                matching = {
                    service_id
                    for service_id in (*self._services, *self._gone_labels)
                    if _has(self._labels_of_service(service_id), labels)
                }
                found = (t for t in found if t["ServiceID"] in matching)
            # Shallow copies: the fake replaces a task's nested dicts, never changes them.
            return [dict(t) for t in found]

    def networks(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        with self._lock:
            return [_copy(n) for n in self._networks.values() if _has(n.get("Labels"), labels)]

    def ensure_overlay(self, name: str, labels: Mapping[str, str]) -> str:
        with self._lock:
            for network in self._networks.values():
                if network["Name"] == name:
                    if not _has(network["Labels"], labels):
                        raise RuntimeFailure(
                            f"network {name!r} exists and is not this installation's overlay; "
                            "refusing to use it"
                        )
                    return str(network["Id"])
            self.writes += 1
            network_id = _new_id()
            self._networks[network_id] = {
                "Id": network_id,
                "Name": name,
                "Driver": "overlay",
                "Scope": "swarm",
                "Attachable": False,
                "Labels": dict(labels),
                "Created": self._stamp(),
            }
            return network_id

    def remove_network(self, network_id: str) -> None:
        with self._lock:
            if network_id not in self._networks:
                return
            for service in self._services.values():
                targets = {
                    n.get("Target") for n in service["Spec"]["TaskTemplate"].get("Networks") or []
                }
                if network_id in targets:
                    raise RuntimeFailure(
                        f"swarm: cannot remove network {network_id}: network {network_id} is in "
                        f"use by service {service['ID']}"
                    )
            for task_id in self._lingering:
                attached = self._tasks[task_id]["Spec"].get("Networks") or []
                if network_id in {n.get("Target") for n in attached}:
                    raise RuntimeFailure(
                        f"swarm: cannot remove network {network_id}: it is in use by task {task_id}"
                    )
            self.writes += 1
            del self._networks[network_id]

    def task_logs(self, task_id: str, tail: int = 100) -> str:
        with self._lock:
            if task_id not in self._tasks:
                raise RuntimeFailure(f"swarm: cannot read the logs of task {task_id}: not found")
            lines = self._logs.get(task_id, "").splitlines(keepends=True)
            return "".join(lines[-tail:] if tail > 0 else [])

    def follow_task_logs(
        self, task_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        text = self.task_logs(task_id, tail)
        return iter(text.splitlines())

    # -- the toy scheduler --------------------------------------------------------------------

    def _scale(self, service: Obj) -> None:
        """Keep one live task per slot 1..replicas; shut down those in higher slots."""
        replicas = int(service["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))
        live: dict[int, Obj] = {}
        for task_id in self._by_service[service["ID"]]:
            task = self._tasks[task_id]
            if task["DesiredState"] == "running":
                live[task["Slot"]] = task
        for slot, task in live.items():
            if slot > replicas:
                self._end(task, "shutdown", "shutdown", exit_code=0, desired="shutdown")
        missing = [slot for slot in range(1, replicas + 1) if slot not in live]
        if missing:
            self._place(service, [self._new_task(service, slot, place=False) for slot in missing])

    def _new_task(self, service: Obj, slot: int, place: bool = True) -> Obj:
        task_id = _new_id()
        now = self._stamp()
        task: Obj = {
            "ID": task_id,
            "Version": {"Index": next(self._version)},
            "CreatedAt": now,
            "UpdatedAt": now,
            "Labels": {},
            "Spec": service["Spec"]["TaskTemplate"],
            "ServiceID": service["ID"],
            "Slot": slot,
            "Status": {"Timestamp": now, "State": "new", "Message": "created"},
            "DesiredState": "running",
        }
        self._tasks[task_id] = task
        self._by_service[service["ID"]][task_id] = None
        if place:
            self._place(service, [task])
        return task

    def _place(self, service: Obj, tasks: list[Obj]) -> None:
        """Place tasks of one service: per zone a heap of candidate nodes (service's tasks on it,
        tasks on it, hostname); the zone with the fewest of the service's tasks goes first."""
        constraints = _constraints(service)
        need = _reservation(service)
        heaps: dict[str, list[tuple[int, int, str, str]]] = {}
        zone_count: dict[str, int] = {}
        per_node: dict[str, int] = {}
        for task_id in self._by_service[service["ID"]]:
            other = self._tasks[task_id]
            if other["DesiredState"] == "running" and other.get("NodeID"):
                per_node[other["NodeID"]] = per_node.get(other["NodeID"], 0) + 1
        for node_id, node in self._nodes.items():
            if not _ready(node) or not self._satisfies(node, constraints):
                continue
            zone = node["Spec"]["Labels"].get("zone", "")
            entry = (per_node.get(node_id, 0), len(self._on_node[node_id]),
                     node["Description"]["Hostname"], node_id)  # fmt: skip
            heaps.setdefault(zone, []).append(entry)
            zone_count[zone] = zone_count.get(zone, 0) + per_node.get(node_id, 0)
        for heap in heaps.values():
            heapq.heapify(heap)
        for task in tasks:
            placed = False
            for zone in sorted(heaps, key=lambda z: (zone_count[z], z)):
                heap = heaps[zone]
                while heap:
                    count, load, hostname, node_id = heap[0]
                    node = self._nodes[node_id]
                    if self._reserved[node_id] + need > _memory(node):
                        heapq.heappop(heap)  # full for this service's size from now on
                        continue
                    self._run_on(task, node_id, need)
                    heapq.heapreplace(heap, (count + 1, load + 1, hostname, node_id))
                    zone_count[zone] += 1
                    placed = True
                    break
                if placed:
                    break
            if not placed:
                self._set_pending(task, service)

    def _run_on(self, task: Obj, node_id: str, need: int) -> None:
        port = self._next_port.get(node_id, FIRST_HOST_PORT)
        self._next_port[node_id] = port + 1
        ports = [
            {
                "Protocol": p.get("Protocol", "tcp"),
                "TargetPort": p["TargetPort"],
                "PublishedPort": port,
                "PublishMode": "host",
            }
            for p in _spec_of(task, self._services).get("EndpointSpec", {}).get("Ports") or []
            if p.get("PublishMode") == "host" and not p.get("PublishedPort")
        ]
        task["NodeID"] = node_id
        task["Status"] = {
            "Timestamp": self._stamp(),
            "State": "running",
            "Message": "started",
            "ContainerStatus": {"ContainerID": _new_id() + _new_id(), "PID": 1, "ExitCode": 0},
            "PortStatus": {"Ports": ports} if ports else {},
        }
        task["Version"] = {"Index": next(self._version)}
        self._on_node[node_id][task["ID"]] = None
        self._reserved[node_id] += need
        self._pending.pop(task["ID"], None)

    def _set_pending(self, task: Obj, service: Obj) -> None:
        task["Status"] = {
            "Timestamp": self._stamp(),
            "State": "pending",
            "Message": "pending task scheduling",
            "Err": f"no suitable node ({self._explain(service)})",
            "PortStatus": {},
        }
        self._pending[task["ID"]] = None

    def _explain(self, service: Obj) -> str:
        """Swarm's pipeline: each node counts against the first filter it fails."""
        constraints = _constraints(service)
        need = _reservation(service)
        failures = {"ready": 0, "resources": 0, "constraints": 0}
        for node_id, node in self._nodes.items():
            if not _ready(node):
                failures["ready"] += 1
            elif self._reserved[node_id] + need > _memory(node):
                failures["resources"] += 1
            elif not self._satisfies(node, constraints):
                failures["constraints"] += 1
        texts = {
            "ready": lambda n: f"{n} node{'s' if n != 1 else ''} not available for new tasks",
            "resources": lambda n: f"insufficient resources on {n} node{'s' if n != 1 else ''}",
            "constraints": lambda n: (
                f"scheduling constraints not satisfied on {n} node{'s' if n != 1 else ''}"
            ),
        }
        ordered = sorted((k for k in failures if failures[k]), key=lambda k: -failures[k])
        return "; ".join(texts[k](failures[k]) for k in ordered)

    def _schedule_pending(self) -> None:
        by_service: dict[str, list[Obj]] = {}
        for task_id in list(self._pending):
            task = self._tasks[task_id]
            if task["DesiredState"] == "running":
                by_service.setdefault(task["ServiceID"], []).append(task)
        for service_id, tasks in by_service.items():
            self._place(self._services[service_id], tasks)

    def _replace(self, task: Obj, keep_status: bool) -> None:
        """Swarm gives up on a task (its node is down or drained): a new one takes its slot."""
        if keep_status:  # the node is gone: it never reports the task's end
            task["DesiredState"] = "shutdown"
            task["UpdatedAt"] = self._stamp()
            task["Version"] = {"Index": next(self._version)}
            self._release(task)
        else:
            self._end(task, "shutdown", "shutdown", exit_code=0, desired="shutdown")
        service = self._services[task["ServiceID"]]
        if int(service["Spec"]["Mode"]["Replicated"]["Replicas"]) >= task["Slot"]:
            self._new_task(service, task["Slot"])

    def _end(
        self, task: Obj, state: str, message: str, exit_code: int, err: str = "",
        desired: str | None = None,
    ) -> None:  # fmt: skip
        status = {**task["Status"], "Timestamp": self._stamp(), "State": state, "Message": message}
        if task["Status"].get("State") == "running":
            status["ContainerStatus"] = {**status.get("ContainerStatus", {}), "ExitCode": exit_code}
        if err:
            status["Err"] = err
        if state != "running":
            status["PortStatus"] = {}
        task["Status"] = status
        task["DesiredState"] = desired or "shutdown"
        task["UpdatedAt"] = self._stamp()
        task["Version"] = {"Index": next(self._version)}
        self._release(task)
        self._pending.pop(task["ID"], None)

    def _release(self, task: Obj) -> None:
        node_id = task.get("NodeID")
        if node_id and task["ID"] in self._on_node.get(node_id, {}):
            del self._on_node[node_id][task["ID"]]
            self._reserved[node_id] -= _reservation(self._services[task["ServiceID"]])

    # -- helpers ------------------------------------------------------------------------------

    def _satisfies(self, node: Obj, constraints: list[tuple[str, str, str]]) -> bool:
        for key, op, value in constraints:
            if key.startswith("node.labels."):
                actual = node["Spec"]["Labels"].get(key[len("node.labels.") :])
            elif key == "node.role":
                actual = node["Spec"]["Role"]
            elif key == "node.id":
                actual = node["ID"]
            elif key == "node.hostname":
                actual = node["Description"]["Hostname"]
            else:
                actual = None
            if (actual == value) != (op == "=="):
                return False
        return True

    def _resolved(self, spec: Mapping[str, Any]) -> Obj:
        """A copy of ``spec`` with its networks named by id, as a manager stores it."""
        out: Obj = _copy(dict(spec))
        template = out.setdefault("TaskTemplate", {})
        for attachment in template.get("Networks") or []:
            target = attachment.get("Target")
            found = next(
                (n["Id"] for n in self._networks.values() if target in (n["Id"], n["Name"])), None
            )
            if found is None:
                raise RuntimeFailure(f"swarm: network {target} not found")
            attachment["Target"] = found
        out.setdefault("Mode", {"Replicated": {"Replicas": 1}})
        for constraint in (template.get("Placement") or {}).get("Constraints") or []:
            if _CONSTRAINT.match(constraint) is None:
                raise RuntimeFailure(f"swarm: invalid constraint {constraint!r}")
        return out

    def _labels_of_service(self, service_id: str) -> dict[str, str]:
        service = self._services.get(service_id)
        if service is not None:
            labels: dict[str, str] = service["Spec"].get("Labels") or {}
            return labels
        return self._gone_labels.get(service_id, {})

    def _check_version(self, obj: Obj, version: int, what: str) -> None:
        if int(version) != obj["Version"]["Index"]:
            raise RuntimeFailure(f"swarm: cannot update {what}: update out of sequence")

    def _node(self, node_id: str) -> Obj:
        node = self._nodes.get(node_id)
        if node is None:
            raise RuntimeFailure(f"swarm: node {node_id} not found")
        return node

    def _managers(self) -> list[str]:
        return [i for i, n in self._nodes.items() if n["Spec"]["Role"] == "manager"]

    def _stamp(self) -> str:
        moment = datetime.fromtimestamp(self.clock(), UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _ready(node: Obj) -> bool:
    return bool(node["Status"]["State"] == "ready" and node["Spec"]["Availability"] == "active")


def _memory(node: Obj) -> int:
    return int(node["Description"]["Resources"]["MemoryBytes"])


def _reservation(service: Obj) -> int:
    resources = service["Spec"]["TaskTemplate"].get("Resources") or {}
    return int((resources.get("Reservations") or {}).get("MemoryBytes") or 0)


def _constraints(service: Obj) -> list[tuple[str, str, str]]:
    placement = service["Spec"]["TaskTemplate"].get("Placement") or {}
    out = []
    for text in placement.get("Constraints") or []:
        match = _CONSTRAINT.match(text)
        if match is not None:
            out.append((match["key"], match["op"], match["value"]))
    return out


def _spec_of(task: Obj, services: Mapping[str, Obj]) -> Obj:
    spec: Obj = services[task["ServiceID"]]["Spec"]
    return spec


def _without_mode(spec: Mapping[str, Any]) -> Obj:
    return {k: v for k, v in spec.items() if k != "Mode"}


def _has(actual: Mapping[str, str] | None, wanted: Mapping[str, str] | None) -> bool:
    if not wanted:
        return True
    actual = actual or {}
    return all(actual.get(k) == v for k, v in wanted.items())


def _copy(value: Any) -> Any:
    """A deep copy of plain JSON-shaped data (much faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
