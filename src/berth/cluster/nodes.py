"""Node operations over a Swarm manager's API: list, inspect, label, cordon, remove, join.

The API is docker-py's low-level ``APIClient`` of a manager (``SwarmApi`` names the part of
it used here; the tests' fake Swarm implements the same part). The decisions (which node a
name means, whether a node may be removed, the labels after a change) are pure and live in
``berth.cluster.views`` / ``berth.cluster.labels``; this module reads, decides and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import docker.errors
import requests.exceptions

from berth.cluster import labels as label_rules
from berth.cluster.views import NodeRow, node_row, node_rows, resolve
from berth.errors import BerthError, Conflict, EngineError, EngineUnavailable, NotFound

SWARM_PORT = 2377
DEAD_STATES = frozenset({"down", "disconnected"})
VERSION_RETRIES = 5  # another writer bumped the node's version between our read and write
DEMOTE_WAIT_SECONDS = 15.0

T = TypeVar("T")


class SwarmApi(Protocol):
    """What Berth calls on a manager's engine (a subset of ``docker.APIClient``)."""

    def info(self) -> dict[str, Any]: ...

    def inspect_swarm(self) -> dict[str, Any]: ...

    def nodes(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def inspect_node(self, node_id: str) -> dict[str, Any]: ...

    def update_node(
        self, node_id: str, version: int, node_spec: dict[str, Any] | None = None
    ) -> bool: ...

    def remove_node(self, node_id: str, force: bool = False) -> bool: ...

    def tasks(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def engine_call(what: str, fn: Callable[[], T]) -> T:
    """Run one engine call; its failures become Berth's errors (never a 500)."""
    try:
        return fn()
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise translate(what, exc) from None


def translate(what: str, exc: Exception) -> BerthError:
    """Berth's error for a failed engine call: 404, 409 (the Swarm refused), 502, 503."""
    if isinstance(exc, docker.errors.NotFound):
        return NotFound(f"{what}: {_explain(exc)}", code="node_not_found")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        text = _explain(exc)
        if status == 503 and "not a swarm manager" in text.lower():
            return Conflict(f"{what}: this engine is not a Swarm manager", code="not_a_manager")
        if 400 <= status < 500:
            return Conflict(f"{what}: {text}", code="swarm_refused")
        return EngineError(f"{what}: {text}")
    return EngineUnavailable(f"{what}: the Swarm manager cannot be reached ({exc})")


def _explain(exc: docker.errors.APIError) -> str:
    text = exc.explanation if isinstance(exc.explanation, str) else str(exc)
    return text.replace("rpc error: code = ", "").strip()[:500]


@dataclass(frozen=True)
class JoinCommand:
    role: str  # "worker" | "manager"
    token: str
    address: str  # host:port of a manager
    command: str  # the one line the new machine runs


@dataclass(frozen=True)
class Removal:
    id: str
    name: str
    was_down: bool
    demoted: bool
    forced: bool
    message: str


class ManagerClient:
    """Berth's view and operations of the Swarm's nodes, through one manager."""

    def __init__(self, api: SwarmApi, installation: str) -> None:
        self.api = api
        self.installation = installation

    # -- reading

    def _nodes(self) -> list[dict[str, Any]]:
        return engine_call("listing the nodes", self.api.nodes)

    def _tasks(self) -> list[dict[str, Any]]:
        return engine_call("listing the tasks", self.api.tasks)

    def _find(self, ref: str) -> dict[str, Any]:
        nodes = self._nodes()
        try:
            return dict(resolve(nodes, ref))
        except LookupError:
            raise NotFound(f"no node {ref[:100]!r} in the swarm", code="node_not_found") from None
        except ValueError as exc:
            ids = ", ".join(i[:12] for i in exc.args[0])
            raise Conflict(
                f"{ref[:100]!r} names several nodes ({ids}): give the node id",
                code="ambiguous_node",
            ) from None

    def self_id(self) -> str:
        info = engine_call("reading the engine", self.api.info)
        return str((info.get("Swarm") or {}).get("NodeID") or "")

    def list(self, now: float | None = None) -> list[NodeRow]:
        return node_rows(self._nodes(), self._tasks(), self.installation, now or time.time())

    def info(self, ref: str, now: float | None = None) -> NodeRow:
        node = self._find(ref)
        tasks = engine_call(
            "listing the node's tasks", lambda: self.api.tasks(filters={"node": node["ID"]})
        )
        return node_row(node, tasks, self.installation, now or time.time())

    def _row_of(self, node_id: str) -> NodeRow:
        node = engine_call("reading the node", lambda: self.api.inspect_node(node_id))
        tasks = engine_call(
            "listing the node's tasks", lambda: self.api.tasks(filters={"node": node_id})
        )
        return node_row(node, tasks, self.installation, time.time())

    # -- writing

    def _update_spec(
        self, ref_or_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> tuple[str, bool]:
        """Apply ``change`` to the node's spec (None: nothing to change); retried when another
        writer moved the node's version in between. Returns (node id, changed)."""
        node = self._find(ref_or_id)
        node_id = str(node["ID"])
        for _ in range(VERSION_RETRIES):
            spec = change(dict(node.get("Spec") or {}))
            if spec is None:
                return node_id, False
            version = int((node.get("Version") or {}).get("Index") or 0)
            try:
                self.api.update_node(node_id, version, spec)
                return node_id, True
            except docker.errors.APIError as exc:
                if "out of sequence" not in _explain(exc):
                    raise translate("updating the node", exc) from None
            except requests.exceptions.ConnectionError as exc:
                raise translate("updating the node", exc) from None
            node = engine_call("reading the node", lambda: self.api.inspect_node(node_id))
        raise Conflict("the node kept changing under the update: try again", code="node_busy")

    def label(self, ref: str, add: Mapping[str, str], remove: Sequence[str]) -> NodeRow:
        for key, value in add.items():  # refused before anything is read
            label_rules.check_value(label_rules.check_key(key), value)

        def change(spec: dict[str, Any]) -> dict[str, Any] | None:
            new = label_rules.apply_change(spec.get("Labels") or {}, add, remove)
            if new == (spec.get("Labels") or {}):
                return None
            return {**spec, "Labels": new}

        node_id, _ = self._update_spec(ref, change)
        return self._row_of(node_id)

    def set_availability(self, ref: str, availability: str) -> tuple[NodeRow, str, bool]:
        """Cordon ("pause") or uncordon ("active"). Returns (row, availability before, changed).

        Cordoning a drained node changes nothing: it already takes no work and runs none."""
        before: list[str] = []

        def change(spec: dict[str, Any]) -> dict[str, Any] | None:
            current = str(spec.get("Availability") or "active")
            before[:] = [current]
            if current == availability or (availability == "pause" and current == "drain"):
                return None
            return {**spec, "Availability": availability}

        node_id, changed = self._update_spec(ref, change)
        return self._row_of(node_id), before[0], changed

    def remove(self, ref: str, force: bool = False) -> Removal:
        node = self._find(ref)
        node_id = str(node["ID"])
        row = node_row(node, self._tasks(), self.installation, time.time())
        decision = removal_refusal(row, node_id == self.self_id(), force)
        if decision:
            raise Conflict(decision, code="node_in_use")
        dead = row.state in DEAD_STATES
        demoted = False
        if row.role == "manager":
            managers = [n for n in self._nodes() if (n.get("Spec") or {}).get("Role") == "manager"]
            if len(managers) <= 1:
                raise Conflict("the swarm's last manager cannot be removed", code="last_manager")
            self._update_spec(node_id, lambda s: {**s, "Role": "worker"})
            demoted = True
            self._wait_demoted(node_id)
        # Docker removes a live node only with force (its engine is not told; see the message).
        engine_call("removing the node", lambda: self.api.remove_node(node_id, force=not dead))
        if dead:
            message = f"removed {row.name} (it was {row.state})"
        else:
            message = (
                f"removed {row.name}; its engine still thinks it is in the swarm: "
                "run `docker swarm leave --force` on it"
            )
        return Removal(node_id, row.name, dead, demoted, not dead, message)

    def _wait_demoted(self, node_id: str) -> None:
        """A demotion leaves Raft asynchronously; Docker refuses to remove a Raft member."""
        deadline = time.monotonic() + DEMOTE_WAIT_SECONDS
        while time.monotonic() < deadline:
            node = engine_call("reading the node", lambda: self.api.inspect_node(node_id))
            if not node.get("ManagerStatus"):
                return
            time.sleep(0.2)
        raise Conflict(
            "the manager was demoted but has not left Raft yet: try the removal again",
            code="demotion_pending",
        )

    # -- joining

    def join_command(self, manager: bool = False) -> JoinCommand:
        swarm = engine_call("reading the swarm", self.api.inspect_swarm)
        role = "manager" if manager else "worker"
        token = str((swarm.get("JoinTokens") or {}).get(role.capitalize()) or "")
        info = engine_call("reading the engine", self.api.info).get("Swarm") or {}
        if not token or not info.get("ControlAvailable"):
            raise Conflict("this engine is not a Swarm manager", code="not_a_manager")
        address = manager_address(info)
        return JoinCommand(
            role=role,
            token=token,
            address=address,
            command=f"docker swarm join --token {token} {address}",
        )


ENGINE_API_VERSION = "1.41"  # Docker 20.10's; later engines still speak it


def connect_manager(docker_url: str, installation: str) -> ManagerClient | None:
    """The manager client of the engine at ``docker_url`` ("" for the environment's), or None
    when that engine is no Swarm manager (the local backend) or cannot be reached now."""
    import docker

    try:
        api = (
            docker.APIClient(base_url=docker_url, version=ENGINE_API_VERSION)
            if docker_url
            else docker.from_env(version=ENGINE_API_VERSION).api
        )
    except docker.errors.DockerException:
        return None
    try:
        swarm = api.info().get("Swarm") or {}
    except (docker.errors.DockerException, requests.exceptions.ConnectionError):
        api.close()
        return None
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        api.close()
        return None
    return ManagerClient(api, installation)


def manager_address(swarm_info: Mapping[str, Any]) -> str:
    """host:port where new nodes reach this manager (its own entry among RemoteManagers)."""
    me = swarm_info.get("NodeID")
    remotes = list(swarm_info.get("RemoteManagers") or [])
    for remote in remotes:
        if remote.get("NodeID") == me and remote.get("Addr"):
            return str(remote["Addr"])
    if remotes and remotes[0].get("Addr"):
        return str(remotes[0]["Addr"])
    addr = str(swarm_info.get("NodeAddr") or "")
    if not addr:
        raise EngineError("the manager reports no address")
    return f"[{addr}]:{SWARM_PORT}" if ":" in addr else f"{addr}:{SWARM_PORT}"


def removal_refusal(row: NodeRow, is_self: bool, force: bool) -> str:
    """Why the node may not be removed now ("" when it may). Pure.

    A dead node can always go; a live one needs --force, or to be drained of Berth's work."""
    if is_self:
        return f"{row.name} is the manager Berth talks to: it cannot remove itself"
    if row.state in DEAD_STATES or force:
        return ""
    if row.availability != "drain":
        return (
            f"{row.name} is {row.state} and takes work: drain it first "
            f"(`berth nodes drain {row.name}`) or remove it with --force"
        )
    running = [t for t in row.berth_tasks if t.state == "running"]
    if running:
        return (
            f"{row.name} still runs {len(running)} instance(s) of Berth's: wait until the drain "
            "is done, or remove it with --force"
        )
    return ""
