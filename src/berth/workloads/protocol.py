"""The workload seam: what the controllers ask of a backend, and what a backend reports.

The unit a backend runs is a *process group*: one process type (``web`` today; ``worker`` and
one-off runs next) of one revision of one app, at a replica count, under limits. The
controllers decide which groups should exist and how many replicas each has (the rollout,
pure: berth.domain.rollout); a backend makes its instances exist and reports them, wherever
they run. Two backends implement it:

- **local** (berth.workloads.local): containers on this machine's engine, restarted in place
  by Berth with backoff, admitted against this node's memory.
- **swarm** (berth.workloads.swarm): one Swarm service per group; Swarm places, restarts and
  heals the tasks, Berth reads them back.

One contract suite (tests/contract/test_workloads_contract.py) runs against every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# Labels every backend puts on what it creates for a group (containers, services, tasks).
from berth.runtime.protocol import (
    LABEL_APP as LABEL_APP,
)
from berth.runtime.protocol import (
    LABEL_APP_NAME as LABEL_APP_NAME,
)
from berth.runtime.protocol import (
    LABEL_INSTALLATION as LABEL_INSTALLATION,
)
from berth.runtime.protocol import (
    LABEL_MANAGED as LABEL_MANAGED,
)
from berth.runtime.protocol import LABEL_PORT as LABEL_PORT
from berth.runtime.protocol import (
    LABEL_RELEASE as LABEL_RELEASE,
)
from berth.runtime.protocol import (
    LABEL_REVISION as LABEL_REVISION,
)
from berth.runtime.protocol import (
    LABEL_TENANT as LABEL_TENANT,
)

LABEL_HEALTH_PATH = "berth.health-path"  # the check berth.agent.health runs
LABEL_MEMORY_MB = "berth.memory-mb"  # the instance's size: admission and billing read it
LABEL_CPUS_MILLI = "berth.cpus-milli"
LABEL_PROCESS = "berth.process"  # the process type: "web", "worker", ...
LABEL_GROUP = "berth.group"  # ProcessGroup.key

BackendKind = Literal["local", "swarm"]

# What an instance is doing, the same words on every backend:
# pending  - wanted, not started: no room, no node satisfies its constraints, backing off
# starting - created or started, not running yet (pulling, assigned, preparing)
# running  - its process runs (healthy or not: health is Berth's, see berth.agent.health)
# stopping - being stopped or removed; it may still be running (and is billed)
# exited   - its process ended (crash, exit); it may be restarted
# removed  - gone for good; reported once, with the time it stopped, then no more
InstanceState = Literal["pending", "starting", "running", "stopping", "exited", "removed"]
ALIVE = frozenset({"starting", "running"})
# States during which an instance may hold memory and CPU on its node (and is billed).
HOLDING = frozenset({"starting", "running", "stopping"})


@dataclass(frozen=True)
class ProcessGroup:
    """Run ``replicas`` instances of one process type of one revision of an app.

    ``port`` is where the process listens inside its container (None for a process that serves
    nothing, a worker). ``constraints`` are placement rules over node labels
    (``zone==b``, ``zone!=a``); a backend with one node satisfies only those its node meets.
    """

    tenant_id: str
    app_id: str
    app_name: str
    revision: str  # berth.domain.model.Revision.key: "<release id>:<generation>"
    release_id: str
    release_version: int
    image: str
    replicas: int
    memory_mb: int
    cpus_milli: int
    pids_limit: int
    disk_mb: int
    network: str  # the tenant's network: the only one the group's instances join
    process: str = "web"
    port: int | None = 8080
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    health_path: str | None = None
    constraints: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Unique per (app, process, revision); stable, so a group is found again by it."""
        return f"{self.app_id}/{self.process}/{self.revision}"


def group_labels(group: ProcessGroup) -> dict[str, str]:
    """The labels of every instance of a group, on every backend (with the owner labels)."""
    return {
        LABEL_TENANT: group.tenant_id,
        LABEL_APP: group.app_id,
        LABEL_APP_NAME: group.app_name,
        LABEL_RELEASE: group.release_id,
        LABEL_REVISION: group.revision,
        LABEL_PROCESS: group.process,
        LABEL_GROUP: group.key,
        LABEL_HEALTH_PATH: group.health_path or "",
        LABEL_PORT: str(group.port or ""),
        LABEL_MEMORY_MB: str(group.memory_mb),
        LABEL_CPUS_MILLI: str(group.cpus_milli),
    }


@dataclass(frozen=True)
class WorkloadInstance:
    """One instance of a group as its backend reports it.

    ``address``/``port`` are where the ingress and the health checks reach it (loopback and a
    published port locally; a node's address and a host-mode port on Swarm); None while it has
    none. ``started_at``/``finished_at`` are the backend's own times (unix seconds), so billing
    is right however long Berth was away.
    """

    id: str  # the backend's id: a container id (local), a task id (swarm)
    group: str  # ProcessGroup.key
    tenant_id: str
    app_id: str
    revision: str
    state: InstanceState
    node: str = ""
    process: str = "web"
    address: str | None = None
    port: int | None = None
    # Where a TCP-only health check must connect when ``address``/``port`` reach a proxy that
    # accepts connections whether or not the app listens (Docker's userland proxy does).
    probe_address: str | None = None
    probe_port: int | None = None
    health_path: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0  # exits in a row (the backoff's count)
    reason: str = ""  # why pending, why it exited ("killed: out of memory"), "crash loop: ..."
    memory_mb: int = 0
    cpus_milli: int = 0
    seq: int = 0  # creation order within the backend: older instances are kept first
    slot: str = ""  # the backend's own stable name for the instance (a container name, a slot)

    @property
    def alive(self) -> bool:
        return self.state in ALIVE


@dataclass(frozen=True)
class NodeSummary:
    """One node as a backend sees it (``berth nodes`` shows more on Swarm)."""

    id: str
    name: str
    address: str
    role: str  # "manager" | "worker" | "local"
    availability: str  # "active" | "pause" | "drain"
    state: str  # "ready" | "down" | "unknown" | "disconnected"
    labels: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int = 0
    nano_cpus: int = 0
    # When the backend last knew the node good: the listing's time while it is ready; otherwise
    # when its status last changed (since when it is down, unknown, ...). Billing's watermark
    # (berth.billing.watermark) waits for a node that is neither ready nor down from then on.
    last_seen: float | None = None


@runtime_checkable
class Workloads(Protocol):
    """A backend that runs process groups of one Berth installation."""

    installation: str

    @property
    def kind(self) -> BackendKind: ...

    def apply(self, groups: Sequence[ProcessGroup]) -> None:
        """Converge towards exactly ``groups``: each at its replicas, every other group of this
        installation removed. Level-triggered and idempotent: calling it again with the same
        groups changes nothing. Raises EngineUnavailable when the backend cannot be reached;
        a failure of one group (a start refused) is reported as that group's pending
        instances, not raised."""
        ...

    def instances(self) -> list[WorkloadInstance]:
        """Every instance of every group of this installation, in every state, including
        pending ones (with why) and, once, those removed since the last call."""
        ...

    def nodes(self) -> list[NodeSummary]:
        """Every node with its state and ``last_seen``. Read before ``instances()`` in a pass,
        the instances then report at least what the nodes had reported by then."""
        ...

    def logs(self, instance_id: str, tail: int = 100) -> str: ...

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]: ...

    def close(self) -> None:
        """Stop background work (removals in flight finish on their own)."""
        ...
