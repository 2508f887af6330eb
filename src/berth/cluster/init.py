"""``berth cluster init``: make the engine Berth talks to a Swarm manager, safely twice.

The swarm is set up for what this machine's kernel and engines showed (see the README):
a dispatcher heartbeat of 2 s (a dead node is Down after ~5 s; 1 s made a new Raft leader
mark live workers Down), overlays from Berth's own pool in /24s, and a short task history
(Berth reads instances from live tasks; old ones only slow every task list down).

The backend the installation runs on is recorded in the store (Meta ``backend``): the
reconciler reads it with ``current_backend`` and moves the apps over, start-first.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from berth.cluster.nodes import SWARM_PORT, SwarmApi, engine_call, manager_address
from berth.errors import Conflict, EngineError, InvalidInput
from berth.settings import Settings
from berth.store.tables import Meta
from berth.workloads.protocol import BackendKind

BACKEND_KEY = "backend"
TASK_HISTORY_LIMIT = 5
SUBNET_SIZE = 24
NEXT_STEP = "berth nodes join-command"
_INTERFACE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")


class EngineApi(SwarmApi, Protocol):
    """A SwarmApi that can also found a swarm (docker.APIClient is one)."""

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
    ) -> str: ...

    def create_swarm_spec(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class InitResult:
    changed: bool  # a swarm was created now (False: this engine already managed one)
    backend_changed: bool  # the installation moved to the swarm backend now
    node_id: str
    cluster_id: str
    address: str  # where other machines join (host:port)
    message: str
    next_step: str = NEXT_STEP


def current_backend(session: Session) -> BackendKind:
    """The backend the installation runs on: "swarm" once `berth cluster init` recorded it."""
    row = session.get(Meta, BACKEND_KEY)
    return "swarm" if row is not None and row.value == "swarm" else "local"


def record_backend(session: Session, kind: BackendKind) -> bool:
    """Record the backend (committed); True when it changed."""
    before = current_backend(session)
    session.merge(Meta(key=BACKEND_KEY, value=kind))
    session.commit()
    return before != kind


def check_advertise_addr(value: str) -> str:
    """An address other machines reach this one at: an IP (not loopback) or an interface."""
    text = value.strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        if _INTERFACE.fullmatch(text):
            return text
        raise InvalidInput(
            f"advertise address {value[:80]!r} is neither an IP address nor an interface name",
            code="invalid_address",
        ) from None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise InvalidInput(
            f"advertise address {text} cannot be reached by other machines: "
            "give this machine's address on the network the nodes share",
            code="invalid_address",
        )
    return text


def listen_addr(advertise: str) -> str:
    if ":" in advertise:  # IPv6
        return f"[{advertise}]:{SWARM_PORT}"
    return f"{advertise}:{SWARM_PORT}"


def swarm_state(info: dict[str, Any]) -> tuple[str, bool]:
    swarm = info.get("Swarm") or {}
    return str(swarm.get("LocalNodeState") or "inactive"), bool(swarm.get("ControlAvailable"))


def refusal(info: dict[str, Any]) -> str:
    """Why this engine cannot become (or stay) Berth's manager; "" when it can. Pure."""
    state, manager = swarm_state(info)
    swarm = info.get("Swarm") or {}
    if state == "active" and not manager:
        managers = ", ".join(
            str(m.get("Addr")) for m in swarm.get("RemoteManagers") or [] if m.get("Addr")
        )
        return (
            "this engine is a worker of another swarm"
            + (f" (managers: {managers})" if managers else "")
            + ": run Berth on a manager of it, or `docker swarm leave` this engine first"
        )
    if state == "pending":
        return "this engine is joining a swarm now: wait until it has joined, or leave it"
    if state == "locked":
        return "this engine's swarm is locked: `docker swarm unlock` it first"
    if state == "error":
        return f"this engine's swarm is in error: {swarm.get('Error') or 'unknown'}"
    return ""


def init_swarm(api: EngineApi, settings: Settings, advertise_addr: str | None = None) -> InitResult:
    """Found a swarm on the engine, or find it already a manager (nothing changed).

    Does not record the backend: the caller does, in the store, once this returned."""
    wanted = advertise_addr or settings.swarm_advertise_addr or None
    if wanted is not None:
        wanted = check_advertise_addr(wanted)
    info = engine_call("reading the engine", api.info)
    why = refusal(info)
    if why:
        raise Conflict(why, code="swarm_member")
    state, _ = swarm_state(info)
    if state == "active":
        swarm = info.get("Swarm") or {}
        return InitResult(
            changed=False,
            backend_changed=False,
            node_id=str(swarm.get("NodeID") or ""),
            cluster_id=str((swarm.get("Cluster") or {}).get("ID") or ""),
            address=manager_address(swarm),
            message="this engine is already a manager of a swarm: nothing changed",
        )
    spec = api.create_swarm_spec(
        dispatcher_heartbeat_period=int(settings.swarm_dispatcher_heartbeat_seconds * 1e9),
        task_history_retention_limit=TASK_HISTORY_LIMIT,
    )
    try:
        node_id = engine_call(
            "initialising the swarm",
            lambda: api.init_swarm(
                advertise_addr=wanted,
                listen_addr=listen_addr(wanted) if wanted else f"0.0.0.0:{SWARM_PORT}",
                swarm_spec=spec,
                default_addr_pool=[settings.swarm_default_addr_pool],
                subnet_size=SUBNET_SIZE,
            ),
        )
    except Conflict as exc:
        # The engine's 400s here are about the address ("could not choose an IP address to
        # advertise", "not a system address"): the operator's input to fix.
        raise InvalidInput(
            f"{exc.message}; give --advertise-addr with this machine's address",
            code="invalid_address",
        ) from None
    info = engine_call("reading the engine", api.info)
    swarm = info.get("Swarm") or {}
    if not swarm.get("ControlAvailable"):
        raise EngineError("the swarm was created but this engine does not report it as manager")
    return InitResult(
        changed=True,
        backend_changed=False,
        node_id=str(node_id or swarm.get("NodeID") or ""),
        cluster_id=str((swarm.get("Cluster") or {}).get("ID") or ""),
        address=manager_address(swarm),
        message="this engine is now the manager of a new swarm",
    )
