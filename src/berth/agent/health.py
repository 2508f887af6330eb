"""Health checks of running instances, from the node they run on.

An instance is healthy after one passing check and unhealthy after ``FAILURES_TO_UNHEALTHY``
failing checks in a row. The check is an HTTP GET of the app's health path (any 2xx/3xx passes),
or a TCP connect when the app has no health path. Results live in memory: after a restart the
first round runs before anything is routed (see ``first_round``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from berth.periodic import PeriodicLoop
from berth.runtime.protocol import LABEL_PORT, ContainerInfo, Runtime

LABEL_HEALTH_PATH = "berth.health-path"
FAILURES_TO_UNHEALTHY = 2
CHECK_TIMEOUT_SECONDS = 2.0

log = logging.getLogger(__name__)


@dataclass
class HealthState:
    healthy: bool = False
    failures: int = 0
    last_checked: float = 0.0
    last_error: str = ""
    started_at: float | None = None


@dataclass(frozen=True)
class CheckTarget:
    container_id: str
    port: int
    path: str | None
    started_at: float | None = None
    host: str | None = None  # None: the loopback address


@dataclass
class HealthMonitor:
    runtime: Runtime
    interval: float = 1.0
    on_change: Callable[[], None] = lambda: None
    host: str = "127.0.0.1"
    states: dict[str, HealthState] = field(default_factory=dict)
    first_round: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = PeriodicLoop("berth-health", self._round, self.interval)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="berth-health")
        self._client = httpx.Client(timeout=CHECK_TIMEOUT_SECONDS, follow_redirects=False)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def is_healthy(self, container_id: str) -> bool:
        with self._lock:
            state = self.states.get(container_id)
            return bool(state and state.healthy)

    def state_of(self, container_id: str) -> HealthState | None:
        with self._lock:
            return self.states.get(container_id)

    def check_round(self) -> bool:
        """Check every running managed container once; returns whether any health changed."""
        targets = [t for t in (_target(c) for c in self.runtime.list()) if t is not None]
        results = list(self._pool.map(self._probe, targets))
        changed = False
        with self._lock:
            live = {t.container_id for t in targets}
            for gone in set(self.states) - live:
                del self.states[gone]
                changed = True
            for target, (ok, error) in zip(targets, results, strict=True):
                changed |= self._record(target, ok, error)
        self.first_round.set()
        return changed

    def _record(self, target: CheckTarget, ok: bool, error: str) -> bool:
        state = self.states.get(target.container_id)
        if state is None or state.started_at != target.started_at:
            state = HealthState(started_at=target.started_at)  # a restart starts over
            self.states[target.container_id] = state
        before = state.healthy
        state.last_checked = time.time()
        if ok:
            state.healthy, state.failures, state.last_error = True, 0, ""
        else:
            state.failures += 1
            state.last_error = error
            if state.failures >= FAILURES_TO_UNHEALTHY or not before:
                state.healthy = False
        return before != state.healthy

    def _probe(self, target: CheckTarget) -> tuple[bool, str]:
        if target.path is None:
            return _tcp_check(target.host or self.host, target.port)
        url = f"http://{self.host}:{target.port}{target.path}"
        try:
            resp = self._client.get(url)
        except httpx.HTTPError as exc:
            return False, f"GET {target.path}: {type(exc).__name__}"
        if 200 <= resp.status_code < 400:
            return True, ""
        return False, f"GET {target.path}: HTTP {resp.status_code}"

    def _round(self) -> None:
        if self.check_round():
            self.on_change()


def _target(container: ContainerInfo) -> CheckTarget | None:
    if container.state != "running" or container.host_port is None:
        return None
    path = container.labels.get(LABEL_HEALTH_PATH) or None
    if path is None and container.address and container.labels.get(LABEL_PORT, "").isdigit():
        # A TCP check must reach the app itself: the loopback port is held by Docker's proxy,
        # which accepts connections even while nothing listens inside the container.
        port = int(container.labels[LABEL_PORT])
        return CheckTarget(container.id, port, None, container.started_at, container.address)
    return CheckTarget(container.id, container.host_port, path, container.started_at)


def _tcp_check(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT_SECONDS):
            return True, ""
    except OSError as exc:
        return False, f"TCP connect: {exc.strerror or exc}"
