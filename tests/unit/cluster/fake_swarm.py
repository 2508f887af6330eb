"""A fake Swarm manager API: the part of docker.APIClient that berth.cluster uses.

It answers with the same JSON shapes and the same errors (status, wording) as a real 20.10
manager, which ``swarm_contract`` checks against both (tests/cluster runs it on the real one).
"""

from __future__ import annotations

import copy
import itertools
import secrets
from typing import Any

import docker.errors
import requests

_ids = itertools.count(1)


def _new_id() -> str:
    return f"{next(_ids):04d}" + secrets.token_hex(11)[:21]


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(message, response=response, explanation=message)


NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster "
    "state. Please run this command on a manager node or promote the current node to a manager."
)
ALREADY = 'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.'  # noqa: E501


class FakeSwarm:
    """One engine: not in a swarm, a manager of one (``manager()``), or a worker."""

    def __init__(self, hostname: str = "fake-m1", address: str = "10.0.0.11") -> None:
        self.hostname = hostname
        self.address = address
        self.state = "inactive"  # LocalNodeState
        self.is_manager = False
        self.node_id = ""
        self.cluster_id = ""
        self.remote_managers: list[dict[str, str]] = []
        self._nodes: dict[str, dict[str, Any]] = {}
        self._tasks: list[dict[str, Any]] = []
        self.spec: dict[str, Any] = {}
        self.init_calls: list[dict[str, Any]] = []
        self.updates = 0
        self.tokens = {
            "Worker": "SWMTKN-1-fake-" + secrets.token_hex(8) + "-worker",
            "Manager": "SWMTKN-1-fake-" + secrets.token_hex(8) + "-manager",
        }
        self.init_error: docker.errors.APIError | None = None

    # -- building the world

    def manager(self) -> FakeSwarm:
        """Make this engine the manager of a new swarm (as init_swarm would)."""
        self.init_swarm(advertise_addr=self.address)
        return self

    def as_worker_of(self, manager_addr: str) -> FakeSwarm:
        self.state = "active"
        self.is_manager = False
        self.node_id = _new_id()
        self.remote_managers = [{"NodeID": _new_id(), "Addr": manager_addr}]
        return self

    def add_node(
        self,
        hostname: str,
        role: str = "worker",
        state: str = "ready",
        availability: str = "active",
        labels: dict[str, str] | None = None,
        memory_bytes: int = 4 << 30,
        nano_cpus: int = 2_000_000_000,
        address: str = "",
    ) -> str:
        node_id = _new_id()
        stamp = "2026-12-01T10:00:00.123456789Z"
        node: dict[str, Any] = {
            "ID": node_id,
            "Version": {"Index": 1},
            "CreatedAt": stamp,
            "UpdatedAt": stamp,
            "Spec": {
                "Labels": dict(labels or {}),
                "Role": role,
                "Availability": availability,
            },
            "Description": {
                "Hostname": hostname,
                "Platform": {"Architecture": "x86_64", "OS": "linux"},
                "Resources": {"NanoCPUs": nano_cpus, "MemoryBytes": memory_bytes},
                "Engine": {"EngineVersion": "20.10.24+dfsg1"},
            },
            "Status": {"State": state, "Addr": address or f"10.0.0.{10 + len(self._nodes) + 1}"},
        }
        if state == "down":
            node["Status"]["Message"] = "heartbeat failure"
        if role == "manager":
            node["ManagerStatus"] = {
                "Leader": False,
                "Reachability": "reachable" if state == "ready" else "unreachable",
                "Addr": f"{node['Status']['Addr']}:2377",
            }
        self._nodes[node_id] = node
        return node_id

    def set_state(self, node_id: str, state: str, stamp: str) -> None:
        node = self._nodes[node_id]
        node["Status"]["State"] = state
        node["UpdatedAt"] = stamp
        if state == "down":
            node["Status"]["Message"] = "heartbeat failure"
        if "ManagerStatus" in node:
            node["ManagerStatus"]["Reachability"] = (
                "unreachable" if state == "down" else "reachable"
            )

    def add_task(
        self,
        node_id: str,
        labels: dict[str, str] | None = None,
        state: str = "running",
        desired: str = "running",
        memory_bytes: int = 0,
        nano_cpus: int = 0,
    ) -> str:
        task_id = _new_id()
        self._tasks.append(
            {
                "ID": task_id,
                "NodeID": node_id,
                "ServiceID": "svc",
                "DesiredState": desired,
                "Status": {"State": state},
                "Spec": {
                    "ContainerSpec": {"Image": "x", "Labels": dict(labels or {})},
                    "Resources": {
                        "Reservations": {"MemoryBytes": memory_bytes, "NanoCPUs": nano_cpus}
                    },
                },
            }
        )
        return task_id

    # -- docker.APIClient's methods

    def _need_manager(self) -> None:
        if self.state != "active":
            raise api_error(
                503,
                'This node is not a swarm manager. Use "docker swarm init" or '
                '"docker swarm join" to connect this node to swarm and try again.',
            )
        if not self.is_manager:
            raise api_error(503, NOT_MANAGER)

    def info(self) -> dict[str, Any]:
        swarm: dict[str, Any] = {
            "NodeID": self.node_id,
            "NodeAddr": self.address if self.state == "active" else "",
            "LocalNodeState": self.state,
            "ControlAvailable": self.is_manager,
            "Error": "",
            "RemoteManagers": copy.deepcopy(self.remote_managers) or None,
        }
        if self.is_manager:
            swarm["Nodes"] = len(self._nodes)
            swarm["Managers"] = sum(
                1 for n in self._nodes.values() if n["Spec"]["Role"] == "manager"
            )
            swarm["Cluster"] = {"ID": self.cluster_id, "Spec": copy.deepcopy(self.spec)}
        return {"Swarm": swarm, "MemTotal": 4 << 30, "NCPU": 2}

    def inspect_swarm(self) -> dict[str, Any]:
        self._need_manager()
        return {
            "ID": self.cluster_id,
            "Version": {"Index": 10},
            "Spec": copy.deepcopy(self.spec),
            "JoinTokens": dict(self.tokens),
        }

    def nodes(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self._need_manager()
        out = list(self._nodes.values())
        if filters and "role" in filters:
            out = [n for n in out if n["Spec"]["Role"] == filters["role"]]
        return copy.deepcopy(out)

    def _lookup(self, ref: str) -> dict[str, Any]:
        if ref in self._nodes:
            return self._nodes[ref]
        named = [n for n in self._nodes.values() if n["Description"]["Hostname"] == ref]
        if len(named) == 1:
            return named[0]
        prefixed = [n for i, n in self._nodes.items() if i.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0]
        raise api_error(404, f"node {ref} not found")

    def inspect_node(self, node_id: str) -> dict[str, Any]:
        self._need_manager()
        return copy.deepcopy(self._lookup(node_id))

    def update_node(
        self, node_id: str, version: int, node_spec: dict[str, Any] | None = None
    ) -> bool:
        self._need_manager()
        node = self._lookup(node_id)
        if version != node["Version"]["Index"]:
            raise api_error(500, "rpc error: code = Unknown desc = update out of sequence")
        spec = copy.deepcopy(node_spec or {})
        if node["Spec"]["Role"] == "manager" and spec.get("Role") == "worker":
            managers = [n for n in self._nodes.values() if n["Spec"]["Role"] == "manager"]
            if len(managers) <= 1:
                raise api_error(
                    400,
                    "rpc error: code = FailedPrecondition desc = attempting to demote the "
                    "last manager of the swarm",
                )
            node.pop("ManagerStatus", None)
        node["Spec"] = {
            "Labels": dict(spec.get("Labels") or {}),
            "Role": spec.get("Role", "worker"),
            "Availability": spec.get("Availability", "active"),
        }
        node["Version"]["Index"] += 1
        self.updates += 1
        return True

    def remove_node(self, node_id: str, force: bool = False) -> bool:
        self._need_manager()
        node = self._lookup(node_id)
        if node.get("ManagerStatus"):
            raise api_error(
                400,
                f"rpc error: code = FailedPrecondition desc = node {node['ID']} is a cluster "
                "manager and is a member of the raft cluster. It must be demoted to worker "
                "before removal",
            )
        if node["Status"]["State"] != "down" and not force:
            raise api_error(
                400,
                f"rpc error: code = FailedPrecondition desc = node {node['ID']} is not down "
                "and can't be removed",
            )
        del self._nodes[node["ID"]]
        self._tasks = [t for t in self._tasks if t["NodeID"] != node["ID"]]
        return True

    def tasks(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self._need_manager()
        out = self._tasks
        if filters and "node" in filters:
            node = self._lookup(filters["node"])
            out = [t for t in out if t["NodeID"] == node["ID"]]
        return copy.deepcopy(out)

    def create_swarm_spec(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if kwargs.get("task_history_retention_limit") is not None:
            spec["Orchestration"] = {
                "TaskHistoryRetentionLimit": kwargs["task_history_retention_limit"]
            }
        if kwargs.get("dispatcher_heartbeat_period") is not None:
            spec["Dispatcher"] = {"HeartbeatPeriod": kwargs["dispatcher_heartbeat_period"]}
        return spec

    def init_swarm(
        self,
        advertise_addr: str | None = None,
        listen_addr: str = "0.0.0.0:2377",
        force_new_cluster: bool = False,
        swarm_spec: dict[str, Any] | None = None,
        default_addr_pool: list[str] | None = None,
        subnet_size: int | None = None,
        data_path_addr: str | None = None,
        data_path_port: int | None = None,
    ) -> str:
        self.init_calls.append(
            {
                "advertise_addr": advertise_addr,
                "listen_addr": listen_addr,
                "swarm_spec": swarm_spec,
                "default_addr_pool": default_addr_pool,
                "subnet_size": subnet_size,
            }
        )
        if self.state != "inactive":
            raise api_error(503, ALREADY)
        if self.init_error is not None:
            raise self.init_error
        address = advertise_addr or self.address
        self.state, self.is_manager = "active", True
        self.cluster_id = _new_id()
        self.spec = dict(swarm_spec or {})
        self.node_id = self.add_node(self.hostname, role="manager", address=address)
        self._nodes[self.node_id]["ManagerStatus"]["Leader"] = True
        self._nodes[self.node_id]["Spec"]["Availability"] = "active"
        self.address = address
        self.remote_managers = [{"NodeID": self.node_id, "Addr": f"{address}:2377"}]
        return self.node_id
