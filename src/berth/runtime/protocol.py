"""The container runtime interface. The Docker driver and the fake driver both implement it, and
one contract test suite (tests/contract) runs against both.

Every container Berth creates carries the labels below; a runtime never lists, changes or removes a
container that lacks ``berth.managed=true`` and this installation's ``berth.installation`` id.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# Raised by every runtime: RuntimeFailure (the engine refused, 502) and EngineUnavailable (the
# engine cannot be reached, 503) are BerthErrors, so the API answers them without a traceback.
from berth.errors import EngineUnavailable as EngineUnavailable
from berth.errors import RuntimeFailure as RuntimeFailure

LABEL_MANAGED = "berth.managed"
LABEL_INSTALLATION = "berth.installation"
LABEL_TENANT = "berth.tenant"
LABEL_APP = "berth.app"  # app id
LABEL_APP_NAME = "berth.app-name"
LABEL_RELEASE = "berth.release"  # release id
LABEL_REVISION = "berth.revision"  # "<release id>:<generation>", the rollout unit
LABEL_INSTANCE = "berth.instance"  # instance id, unique per container
LABEL_NODE = "berth.node"
LABEL_PORT = "berth.port"  # the port the app listens on inside the container

ContainerState = Literal["created", "running", "restarting", "paused", "exited", "dead", "removing"]

# Capabilities kept after ``cap_drop=ALL``. Documented in the README (Isolation):
# NET_BIND_SERVICE lets an app bind a port below 1024 inside its own network namespace;
# SETUID/SETGID/CHOWN let an entrypoint drop from root to an unprivileged user (gosu, su-exec).
# With no-new-privileges none of them can be gained back by a setuid binary.
KEPT_CAPABILITIES: tuple[str, ...] = ("CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE")

# The only writable paths of a tenant container (tmpfs, ContainerSpec.disk_bytes each): the root
# filesystem is read-only, because the writable layer of overlay2 on ext4 cannot be size-limited
# and would otherwise fill the disk that holds Berth's store.
WRITABLE_PATHS: tuple[str, ...] = ("/tmp", "/var/tmp", "/run")  # noqa: S108 (in the container)


@dataclass(frozen=True)
class ContainerSpec:
    """What to run. ``labels`` must include the managed and installation labels."""

    name: str
    image: str
    port: int
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    network: str
    labels: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    # The root filesystem is read-only; an app writes only to size-limited tmpfs mounts at
    # WRITABLE_PATHS, each of ``disk_bytes`` (tmpfs pages count against the memory limit).
    disk_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class ContainerInfo:
    """What the engine reports for one managed container."""

    id: str
    name: str
    labels: Mapping[str, str]
    state: ContainerState
    exit_code: int | None = None
    started_at: float | None = None  # unix seconds
    finished_at: float | None = None  # unix seconds, for exited containers
    host_port: int | None = None  # the loopback port published for the app port
    oom_killed: bool = False
    pid: int = 0  # main process id on the host, 0 when not running
    image: str = ""
    address: str | None = None  # the container's own address on its network, while running


@runtime_checkable
class Runtime(Protocol):
    """A container engine on one node, scoped to one Berth installation."""

    installation: str

    def ping(self) -> bool: ...

    def version(self) -> str: ...

    def memory_bytes(self) -> int:
        """The node's memory as the engine sees it (MemTotal): admission control's capacity."""
        ...

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None: ...

    def remove_network(self, name: str) -> None: ...

    def list_networks(self) -> list[str]: ...

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start a container; returns its info once started (host port known)."""
        ...

    def start(self, container_id: str) -> ContainerInfo:
        """Start an existing (exited) managed container again."""
        ...

    def remove(self, container_id: str, stop_timeout: float = 10.0) -> float | None:
        """Stop (SIGTERM, then SIGKILL after the timeout) and remove. Missing is not an error.

        Returns the engine's time (unix seconds) at which the container's process stopped, the
        end of its last run interval; None when the container was already gone or never ran.
        Raises (and the container stays) when the engine refuses: callers must not treat a
        container as gone before this returns."""
        ...

    def list(self, labels: Mapping[str, str] | None = None) -> list[ContainerInfo]:
        """All managed containers of this installation, in every state, optionally filtered."""
        ...

    def inspect(self, container_id: str) -> ContainerInfo | None: ...

    def logs(self, container_id: str, tail: int = 100) -> str: ...

    def follow_logs(
        self, container_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        """Printed lines (without line breaks) until the container stops, or until ``stop`` is
        set (from any thread: the engine connection is released even while no line comes).
        ``close()`` the generator to stop following early from the thread that iterates it."""
        ...

    def image_id(self, ref: str) -> str | None:
        """The local image id (sha256:...) for a reference, or None when absent."""
        ...


# Network modes that would share the host's (or another container's) network namespace, or leave
# the app unreachable. A tenant container always joins its tenant's bridge network.
_REFUSED_NETWORKS = frozenset({"", "host", "none"})


def owner_labels(installation: str) -> dict[str, str]:
    """The labels that mark an object as created by this Berth installation."""
    return {LABEL_MANAGED: "true", LABEL_INSTALLATION: installation}


def is_owned(labels: Mapping[str, str] | None, installation: str) -> bool:
    """True when ``labels`` carry this installation's managed and installation labels."""
    if not labels:
        return False
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_INSTALLATION) == installation


def container_labels(spec: ContainerSpec, installation: str, node: str) -> dict[str, str]:
    """The labels a runtime puts on the container for ``spec``; raises ValueError on a bad spec.

    Missing owner labels are added; conflicting ones are refused, because a container labelled
    for another installation would be invisible to (and unmanageable by) the one creating it.
    """
    if spec.network in _REFUSED_NETWORKS or spec.network.startswith("container:"):
        raise ValueError(f"network {spec.network!r} is not allowed for a tenant container")
    if not 0 < spec.port < 65536:
        raise ValueError(f"port {spec.port} is out of range")
    labels = dict(spec.labels)
    for key, value in owner_labels(installation).items():
        if labels.setdefault(key, value) != value:
            raise ValueError(f"label {key}={labels[key]!r} conflicts with this runtime ({value!r})")
    labels[LABEL_NODE] = node
    return labels
