"""Operator routes for many machines: `berth cluster init`, the join command, the nodes.

On the local backend (no Swarm manager wired) the one node is this machine; every change to
nodes answers 409 until `berth cluster init` ran.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from berth.api.deps import Operator, PlatformDep, SessionDep
from berth.api.schemas import Strict
from berth.cluster import init as cluster_init
from berth.cluster.init import EngineApi
from berth.cluster.labels import INGRESS
from berth.cluster.nodes import ENGINE_API_VERSION, ManagerClient, engine_call
from berth.cluster.views import NodeRow, local_row
from berth.errors import Conflict, NotFound
from berth.platform import Platform
from berth.registry.wiring import pin_releases
from berth.services import ingress_nodes
from berth.store.tables import Instance, NodeDrain

router = APIRouter(tags=["nodes"])

SINGLE_MACHINE = "this installation runs on one machine: run `berth cluster init` first"
NodeRef = Annotated[
    str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
LABEL_KEY_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"


class TaskPublic(BaseModel):
    id: str
    app: str
    tenant_id: str
    state: str
    desired_state: str
    memory_bytes: int
    nano_cpus: int


class NodePublic(BaseModel):
    id: str
    name: str
    address: str
    role: str
    availability: str
    state: str
    zone: str | None
    labels: dict[str, str]
    memory_bytes: int
    nano_cpus: int
    cpus: float
    reserved_memory_bytes: int
    reserved_nano_cpus: int
    reserved_cpus: float
    instances: int
    tasks: int
    leader: bool
    reachability: str
    message: str
    engine_version: str
    created_at: float | None
    updated_at: float | None
    last_seen: float | None
    berth_tasks: list[TaskPublic] | None = None
    guard: str = ""  # the node guard's task state there; "" when none is meant to run
    # Its ingress nginx (a node labelled ingress=true): "serving (generation N)", "behind ...",
    # "running, error: ...", the task's state while it starts; "" when it is no ingress node.
    ingress: str = ""


class LabelChange(Strict):
    set: dict[str, str] = Field(default_factory=dict, max_length=64)
    remove: list[Annotated[str, Field(max_length=63, pattern=LABEL_KEY_PATTERN)]] = Field(
        default_factory=list, max_length=64
    )


class AvailabilityPublic(BaseModel):
    node: NodePublic
    before: str
    changed: bool


class RemovalPublic(BaseModel):
    id: str
    name: str
    was_down: bool
    demoted: bool
    forced: bool
    message: str


class JoinPublic(BaseModel):
    role: str
    token: str
    address: str
    command: str


class ClusterInit(Strict):
    advertise_addr: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:%-]*$"
    )


class InitPublic(BaseModel):
    changed: bool
    backend: str
    backend_changed: bool
    node_id: str
    cluster_id: str
    address: str
    message: str
    next_step: str


class ClusterPublic(BaseModel):
    backend: str
    manager_node_id: str | None


def _public(
    row: NodeRow,
    with_tasks: bool = False,
    session: SessionDep | None = None,
    ingress_down: str = "",
) -> NodePublic:
    public = NodePublic.model_validate(row.to_json(with_tasks=with_tasks))
    if session is not None and row.ingress:
        generation = ingress_nodes.current_generation(session)
        report = ingress_nodes.reports(session).get(row.name)
        public.ingress = ingress_nodes.describe(row.ingress, report, generation, time.time())
    elif ingress_down and row.labels.get(INGRESS) == "true":
        # Labelled, but the leader cannot run the ingress service: say why, not nothing.
        public.ingress = f"not started: {ingress_down}"
    return public


def _ingress_down(platform: Platform) -> str:
    """Why the ingress nodes' service is not kept here, if it is not (the leader's last error)."""
    if platform.ingress_nodes is None:
        return "ingress nodes are off (BERTH_INGRESS_NODES=false)"
    return platform.ingress_nodes.last_error


def _manager(platform: Platform) -> ManagerClient:
    if platform.swarm_manager is None:
        raise Conflict(SINGLE_MACHINE, code="single_machine")
    return platform.swarm_manager


def _local_row(platform: Platform, session: SessionDep) -> NodeRow:
    memory = platform.runtime.memory_bytes() if platform.runtime is not None else 0
    running = session.scalar(select(func.count(Instance.id)).where(Instance.state == "running"))
    return local_row(
        name=socket.gethostname(),
        memory_bytes=memory,
        nano_cpus=(os.cpu_count() or 1) * 1_000_000_000,
        instances=int(running or 0),
        now=time.time(),
    )


def engine_api(platform: PlatformDep) -> Iterator[EngineApi]:
    """The engine Berth talks to (settings.docker_url), for `cluster init`."""
    if platform.swarm_manager is not None:
        yield platform.swarm_manager.api  # type: ignore[misc]
        return
    import docker

    url = platform.settings.docker_url
    # A pinned API version: the client connects at its first call, not here (a request
    # refused for its body never touches the engine).
    client: docker.APIClient = engine_call(
        "connecting to the engine",
        lambda: (
            docker.APIClient(base_url=url, version=ENGINE_API_VERSION)
            if url
            else docker.from_env(version=ENGINE_API_VERSION).api
        ),
    )
    try:
        yield client
    finally:
        # Kept open only when `cluster init` made it the platform's manager client.
        if platform.swarm_manager is None or platform.swarm_manager.api is not client:
            client.close()


EngineApiDep = Annotated[EngineApi, Depends(engine_api)]


# -- cluster ----------------------------------------------------------------------------------


@router.get("/admin/cluster")
def cluster_info(platform: PlatformDep, session: SessionDep, who: Operator) -> ClusterPublic:
    manager = platform.swarm_manager
    return ClusterPublic(
        backend=cluster_init.current_backend(session),
        manager_node_id=manager.self_id() if manager is not None else None,
    )


@router.post("/admin/cluster/init")
def cluster_init_route(
    who: Operator,  # first: a tenant is refused before the engine is touched
    platform: PlatformDep,
    session: SessionDep,
    api: EngineApiDep,
    body: ClusterInit,  # required: `{}` at least, so that no stray call founds a swarm
) -> InitPublic:
    """Make the engine a Swarm manager (nothing changes when it already is one) and move the
    installation to the swarm backend: the reconciler moves the apps over, start-first."""
    result = cluster_init.init_swarm(api, platform.settings, body.advertise_addr)
    if platform.registry is not None and cluster_init.current_backend(session) != "swarm":
        # What was built here goes to the platform registry first, pinned in the transaction
        # that records the move: no service of the Swarm names an image only this machine has.
        pin_releases(session, platform.registry, platform.settings.registry)
    moved = cluster_init.record_backend(session, "swarm")
    if platform.swarm_manager is None:
        platform.swarm_manager = ManagerClient(api, platform.installation)
    platform.trigger()
    return InitPublic(
        changed=result.changed,
        backend="swarm",
        backend_changed=moved,
        node_id=result.node_id,
        cluster_id=result.cluster_id,
        address=result.address,
        message=result.message,
        next_step=result.next_step,
    )


@router.get("/admin/cluster/join-command")
def join_command(
    platform: PlatformDep,
    who: Operator,
    manager: Annotated[bool, Query(description="join as a manager (else a worker)")] = False,
) -> JoinPublic:
    cmd = _manager(platform).join_command(manager=manager)
    return JoinPublic(role=cmd.role, token=cmd.token, address=cmd.address, command=cmd.command)


# -- nodes ------------------------------------------------------------------------------------


@router.get("/admin/nodes")
def list_nodes(platform: PlatformDep, session: SessionDep, who: Operator) -> list[NodePublic]:
    if platform.swarm_manager is None:
        return [_public(_local_row(platform, session))]
    down = _ingress_down(platform)
    return [
        _public(row, session=session, ingress_down=down) for row in platform.swarm_manager.list()
    ]


@router.get("/admin/nodes/{node}")
def node_info(
    node: NodeRef, platform: PlatformDep, session: SessionDep, who: Operator
) -> NodePublic:
    if platform.swarm_manager is None:
        row = _local_row(platform, session)
        if node not in (row.id, row.name):
            raise NotFound(
                f"no node {node!r}: this installation runs on one machine, {row.name}",
                code="node_not_found",
            )
        return _public(row, with_tasks=True)
    row = platform.swarm_manager.info(node)
    return _public(row, with_tasks=True, session=session, ingress_down=_ingress_down(platform))


@router.post("/admin/nodes/{node}/labels")
def label_node(
    node: NodeRef, body: LabelChange, platform: PlatformDep, who: Operator
) -> NodePublic:
    """Set and remove labels in one change (``zone`` and ``ingress`` are Berth's own)."""
    row = _manager(platform).label(node, body.set, body.remove)
    return _public(row, with_tasks=True)


def _availability(platform: Platform, node: str, availability: str) -> AvailabilityPublic:
    row, before, changed = _manager(platform).set_availability(node, availability)
    platform.trigger()
    return AvailabilityPublic(node=_public(row), before=before, changed=changed)


@router.post("/admin/nodes/{node}/cordon")
def cordon(node: NodeRef, platform: PlatformDep, who: Operator) -> AvailabilityPublic:
    """No new instances are placed on the node; those running there keep running."""
    return _availability(platform, node, "pause")


@router.post("/admin/nodes/{node}/uncordon")
def uncordon(
    node: NodeRef, platform: PlatformDep, session: SessionDep, who: Operator
) -> AvailabilityPublic:
    """New instances may land on the node again (this ends a drain of it, finished or not)."""
    answer = _availability(platform, node, "active")
    drain = session.get(NodeDrain, answer.node.id)
    if drain is not None:
        session.delete(drain)
        session.commit()
    return answer


class DrainRequestBody(Strict):
    timeout_seconds: float = Field(default=300.0, ge=1.0, le=86_400.0)


class DrainPublic(BaseModel):
    node_id: str
    node: str
    status: str  # draining | evicting | drained | timed_out
    message: str
    started_at: float
    deadline: float
    finished_at: float | None
    instances_on_node: int


def _drain_public(session: SessionDep, drain: NodeDrain) -> DrainPublic:
    left = session.scalar(
        select(func.count(Instance.id)).where(
            Instance.node == drain.node_name, Instance.state.in_(("starting", "running"))
        )
    )
    return DrainPublic(
        node_id=drain.node_id,
        node=drain.node_name,
        status=drain.status,
        message=drain.message,
        started_at=drain.started_at,
        deadline=drain.deadline,
        finished_at=drain.finished_at,
        instances_on_node=int(left or 0),
    )


@router.post("/admin/nodes/{node}/drain", status_code=202)
def drain_node(
    node: NodeRef,
    platform: PlatformDep,
    session: SessionDep,
    who: Operator,
    body: DrainRequestBody | None = None,
) -> DrainPublic:
    """Move the node's instances away start-first: the node is cordoned, each app's
    replacements start elsewhere and pass their checks, then the node's instances leave the
    ingress and stop. Follow it with GET .../drain; it times out after ``timeout_seconds``."""
    timeout = (body or DrainRequestBody()).timeout_seconds
    manager = _manager(platform)
    row, _, _ = manager.set_availability(node, "pause")
    now = time.time()
    drain = session.get(NodeDrain, row.id) or NodeDrain(node_id=row.id)
    drain.node_name = row.name
    drain.status = "draining"
    drain.message = "cordoned; starting replacements elsewhere"
    drain.started_at = now
    drain.deadline = now + timeout
    drain.finished_at = None
    session.merge(drain)
    session.commit()
    platform.trigger()
    merged = session.get(NodeDrain, row.id)
    assert merged is not None
    return _drain_public(session, merged)


@router.get("/admin/nodes/{node}/drain")
def drain_status(
    node: NodeRef, platform: PlatformDep, session: SessionDep, who: Operator
) -> DrainPublic:
    row = _manager(platform).info(node)
    drain = session.get(NodeDrain, row.id)
    if drain is None:
        raise NotFound(f"node {row.name} is not being drained", code="no_drain")
    return _drain_public(session, drain)


@router.delete("/admin/nodes/{node}")
def remove_node(
    node: NodeRef,
    platform: PlatformDep,
    who: Operator,
    force: Annotated[bool, Query(description="remove a live node that was not drained")] = False,
) -> RemovalPublic:
    """A node that is down can always be removed (a manager is demoted first); a live one
    must be drained first, or removed with ``force``."""
    done = _manager(platform).remove(node, force=force)
    platform.trigger()
    return RemovalPublic(**asdict(done))
