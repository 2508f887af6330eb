"""An in-memory runtime for unit tests and the scale simulation.

It keeps the Docker driver's contract (tests/contract runs against both): containers carry this
installation's labels, foreign containers are invisible and untouchable, images are never pulled,
a container joins an existing network, the host port is published on start and released on exit
(a restart gets a new one, as with Docker), and remove is idempotent.

A ``FakeEngine`` is one node's engine. Several ``FakeRuntime`` objects (one per installation, or
per simulated node) may share an engine; test helpers make its "processes" print, crash or die.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from berth.runtime.protocol import (
    WRITABLE_PATHS,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    EngineUnavailable,
    RuntimeFailure,
    container_labels,
    is_owned,
    owner_labels,
)

FIRST_HOST_PORT = 30000
LAST_HOST_PORT = 65535
FAKE_VERSION = "fake-20.10"
SIGKILL_EXIT_CODE = 137
FAKE_MEMORY_BYTES = 16 * 1024**3
READ_ONLY_FS = "Read-only file system"
NO_SPACE = "No space left on device"


@dataclass
class _FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    image_id: str
    network: str
    state: ContainerState = "created"
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    host_port: int | None = None
    pid: int = 0
    oom_killed: bool = False
    output: str = ""
    removed: bool = False
    disk_bytes: int = 0
    # Bytes written to each tmpfs mount in this run (tmpfs is empty again after a restart).
    written: dict[str, int] = field(default_factory=dict)

    def info(self) -> ContainerInfo:
        stopped = self.state in ("exited", "dead")
        return ContainerInfo(
            id=self.id,
            name=self.name,
            labels=dict(self.labels),
            state=self.state,
            exit_code=self.exit_code if stopped else None,
            started_at=self.started_at,
            finished_at=self.finished_at if stopped else None,
            host_port=self.host_port,
            oom_killed=self.oom_killed,
            pid=self.pid,
            image=self.image_id,
            address=f"10.254.{self.pid // 250 % 250}.{self.pid % 250 + 1}"
            if self.state == "running"
            else None,
        )


@dataclass
class FakeEngine:
    """The state of one fake container engine.

    Guard every access with ``lock``, a Condition that is notified on every change.
    """

    containers: dict[str, _FakeContainer] = field(default_factory=dict)
    networks: dict[str, dict[str, str]] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    reachable: bool = True
    memory_bytes: int = FAKE_MEMORY_BYTES
    # Test switches: remove() (the container keeps running) or start() fails with a
    # RuntimeFailure; the attempts are counted either way.
    refuse_removal: bool = False
    refuse_start: bool = False
    removal_attempts: int = 0
    start_attempts: int = 0
    lock: threading.Condition = field(default_factory=lambda: threading.Condition())
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _pids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _next_port: int = FIRST_HOST_PORT

    def new_id(self, node: str) -> str:
        return f"{node}-{next(self._ids):06d}"

    def new_pid(self) -> int:
        return next(self._pids)

    def allocate_port(self) -> int:
        """The next free host port from FIRST_HOST_PORT upward, wrapping around at the end."""
        in_use = {c.host_port for c in self.containers.values() if c.host_port is not None}
        for _ in range(LAST_HOST_PORT - FIRST_HOST_PORT + 1):
            port = self._next_port
            self._next_port = port + 1 if port < LAST_HOST_PORT else FIRST_HOST_PORT
            if port not in in_use:
                return port
        raise RuntimeFailure("fake engine: no free host port left")


class FakeRuntime:
    """The Runtime protocol, in memory. Thread-safe."""

    def __init__(
        self,
        installation: str,
        node: str = "local",
        clock: Callable[[], float] | None = None,
        engine: FakeEngine | None = None,
    ) -> None:
        if not installation:
            raise ValueError("installation id must not be empty")
        self.installation = installation
        self.node = node
        self.engine = engine if engine is not None else FakeEngine()
        self._clock = clock if clock is not None else time.time

    # -- engine -------------------------------------------------------------------------------

    def ping(self) -> bool:
        with self.engine.lock:
            return self.engine.reachable

    def version(self) -> str:
        with self.engine.lock:
            self._check_reachable()
            return FAKE_VERSION

    def memory_bytes(self) -> int:
        with self.engine.lock:
            self._check_reachable()
            return self.engine.memory_bytes

    # -- networks -----------------------------------------------------------------------------

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        with self.engine.lock:
            self._check_reachable()
            existing = self.engine.networks.get(name)
            if existing is None:
                self.engine.networks[name] = {**labels, **owner_labels(self.installation)}
            elif not is_owned(existing, self.installation):
                raise _foreign_network(name, self.installation, "use")

    def remove_network(self, name: str) -> None:
        with self.engine.lock:
            self._check_reachable()
            existing = self.engine.networks.get(name)
            if existing is None:
                return
            if not is_owned(existing, self.installation):
                raise _foreign_network(name, self.installation, "remove")
            if any(c.network == name and c.state == "running" for c in self._all()):
                raise RuntimeFailure(f"fake: cannot remove network {name}: it has active endpoints")
            del self.engine.networks[name]

    def list_networks(self) -> list[str]:
        with self.engine.lock:
            self._check_reachable()
            return sorted(
                name
                for name, labels in self.engine.networks.items()
                if is_owned(labels, self.installation)
            )

    # -- containers ---------------------------------------------------------------------------

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        labels = container_labels(spec, self.installation, self.node)
        with self.engine.lock:
            self._check_reachable()
            image_id = self._require_image(spec.image)
            self._require_network(spec.network)
            if any(c.name == spec.name for c in self._all()):
                raise RuntimeFailure(f"fake: cannot create container {spec.name}: name in use")
            container = _FakeContainer(
                id=self.engine.new_id(self.node),
                name=spec.name,
                labels=labels,
                image_id=image_id,
                network=spec.network,
                disk_bytes=spec.disk_bytes,
            )
            self.engine.containers[container.id] = container
            self._start_process(container)
            return container.info()

    def start(self, container_id: str) -> ContainerInfo:
        with self.engine.lock:
            container = self._owned(container_id, "start")
            self.engine.start_attempts += 1
            if self.engine.refuse_start:
                raise RuntimeFailure(f"fake: cannot start container {container_id}: refused")
            self._require_network(container.network)
            if container.state != "running":
                self._start_process(container)
            return container.info()

    def remove(self, container_id: str, stop_timeout: float = 10.0) -> float | None:
        with self.engine.lock:
            self._check_reachable()
            container = self._find(container_id)
            if container is None:
                return None
            if not is_owned(container.labels, self.installation):
                raise _foreign(container_id, "remove")
            self.engine.removal_attempts += 1
            if self.engine.refuse_removal:
                raise RuntimeFailure(f"fake: cannot remove container {container_id}: refused")
            if container.state == "running":
                container.finished_at = self._clock()  # the stop ends the process now
            container.removed = True
            container.host_port = None
            del self.engine.containers[container.id]
            self.engine.lock.notify_all()
            return container.finished_at if container.started_at is not None else None

    def list(self, labels: Mapping[str, str] | None = None) -> list[ContainerInfo]:
        wanted = dict(labels or {})
        with self.engine.lock:
            self._check_reachable()
            return [
                c.info()
                for c in self._all()
                if is_owned(c.labels, self.installation)
                and all(c.labels.get(key) == value for key, value in wanted.items())
            ]

    def inspect(self, container_id: str) -> ContainerInfo | None:
        with self.engine.lock:
            self._check_reachable()
            container = self._find(container_id)
            if container is None or not is_owned(container.labels, self.installation):
                return None
            return container.info()

    def logs(self, container_id: str, tail: int = 100) -> str:
        with self.engine.lock:
            container = self._owned(container_id, "read the logs of")
            return "".join(_last_lines(container.output, tail))

    def follow_logs(
        self, container_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        """Lines (without their line break) printed by the container, until it stops or
        ``stop`` is set."""
        with self.engine.lock:
            container = self._owned(container_id, "follow the logs of")
            backlog = "".join(_last_lines(container.output, tail))
            position = len(container.output)
        return self._follow(container, backlog, position, stop or threading.Event())

    # -- images -------------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        with self.engine.lock:
            self._check_reachable()
            return self.engine.images.get(ref)

    # -- test and simulation helpers ----------------------------------------------------------

    def add_image(self, ref: str) -> str:
        """Make ``ref`` present on this engine (as a build or load would); returns its id."""
        image_id = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        with self.engine.lock:
            self.engine.images[ref] = image_id
        return image_id

    def write_output(self, container_id: str, text: str) -> None:
        """The container's process prints ``text`` (stdout and stderr are one log)."""
        with self.engine.lock:
            container = self._existing(container_id)
            container.output += text
            self.engine.lock.notify_all()

    def write_file(self, container_id: str, path: str, size_bytes: int) -> str:
        """The container's process writes ``size_bytes`` to ``path``: "" when it fits, else the
        error text the kernel would give (the root filesystem is read-only; each tmpfs mount at
        WRITABLE_PATHS holds ``spec.disk_bytes``)."""
        with self.engine.lock:
            container = self._existing(container_id)
            mount = next(
                (m for m in WRITABLE_PATHS if path == m or path.startswith(m.rstrip("/") + "/")),
                None,
            )
            if mount is None:
                return READ_ONLY_FS
            used = container.written.get(mount, 0)
            if used + size_bytes > container.disk_bytes:
                container.written[mount] = container.disk_bytes
                return NO_SPACE
            container.written[mount] = used + size_bytes
            return ""

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        """The container's main process exits with ``exit_code``."""
        with self.engine.lock:
            self._stop_process(self._existing(container_id), exit_code)

    def kill_process(self, container_id: str, oom: bool = False) -> None:
        """The container's main process is killed (SIGKILL), by the OOM killer when ``oom``."""
        with self.engine.lock:
            container = self._existing(container_id)
            self._stop_process(container, SIGKILL_EXIT_CODE)
            container.oom_killed = oom

    def set_reachable(self, reachable: bool) -> None:
        """Make the engine (un)reachable: while down, ping() is False and every call fails."""
        with self.engine.lock:
            self.engine.reachable = reachable

    # -- helpers (call with the engine lock held) ---------------------------------------------

    def _all(self) -> Iterator[_FakeContainer]:
        return iter(self.engine.containers.values())

    def _check_reachable(self) -> None:
        if not self.engine.reachable:
            raise EngineUnavailable(f"fake: the engine on node {self.node!r} is unreachable")

    def _find(self, container_id: str) -> _FakeContainer | None:
        """By id, or by name as Docker also accepts."""
        container = self.engine.containers.get(container_id)
        if container is not None:
            return container
        return next((c for c in self._all() if c.name == container_id), None)

    def _existing(self, container_id: str) -> _FakeContainer:
        container = self._find(container_id)
        if container is None:
            raise RuntimeFailure(f"fake: no such container: {container_id}")
        return container

    def _owned(self, container_id: str, action: str) -> _FakeContainer:
        self._check_reachable()
        container = self._find(container_id)
        if container is None:
            raise RuntimeFailure(f"cannot {action} container {container_id}: no such container")
        if not is_owned(container.labels, self.installation):
            raise _foreign(container_id, action)
        return container

    def _require_image(self, ref: str) -> str:
        image_id = self.engine.images.get(ref)
        if image_id is None and ref in self.engine.images.values():
            image_id = ref  # an image id, as Docker also accepts
        if image_id is None:
            raise RuntimeFailure(
                f"image {ref!r} is not present on node {self.node!r}; "
                "Berth never pulls images, build or load it first"
            )
        return image_id

    def _require_network(self, name: str) -> None:
        if name not in self.engine.networks:
            raise RuntimeFailure(f"fake: network {name} not found")

    def _start_process(self, container: _FakeContainer) -> None:
        container.state = "running"
        container.exit_code = None
        container.oom_killed = False
        container.started_at = self._clock()
        container.written = {}
        container.host_port = self.engine.allocate_port()
        container.pid = self.engine.new_pid()
        self.engine.lock.notify_all()

    def _stop_process(self, container: _FakeContainer, exit_code: int) -> None:
        if container.state != "running":
            return
        container.state = "exited"
        container.exit_code = exit_code
        container.finished_at = self._clock()
        container.host_port = None
        container.pid = 0
        self.engine.lock.notify_all()

    def _follow(
        self, container: _FakeContainer, backlog: str, position: int, stop: threading.Event
    ) -> Generator[str, None, None]:
        pending = backlog
        while True:
            *lines, pending = pending.split("\n")
            yield from lines
            with self.engine.lock:
                while not self.engine.lock.wait_for(
                    partial(_has_news, container, position), timeout=0.2
                ):
                    if stop.is_set():
                        return
                fresh = container.output[position:]
                position = len(container.output)
                done = not fresh and not _is_alive(container)
            if done:
                if pending:
                    yield pending
                return
            pending += fresh


def _has_news(container: _FakeContainer, position: int) -> bool:
    """True when the container printed past ``position`` or stopped running."""
    return len(container.output) > position or not _is_alive(container)


def _is_alive(container: _FakeContainer) -> bool:
    return container.state == "running" and not container.removed


def _last_lines(text: str, tail: int) -> list[str]:
    if tail <= 0:
        return []
    return text.splitlines(keepends=True)[-tail:]


def _foreign(container_id: str, action: str) -> RuntimeFailure:
    return RuntimeFailure(
        f"container {container_id} is not managed by this Berth installation; "
        f"refusing to {action} it"
    )


def _foreign_network(name: str, installation: str, action: str) -> RuntimeFailure:
    return RuntimeFailure(
        f"network {name!r} is not managed by Berth installation {installation!r}; "
        f"refusing to {action} it"
    )
