"""Health checks of running instances, from where the ingress runs, at the address and port
the backend reports (``HealthTargets``: this engine's containers, or any backend's instances).

An instance is healthy after one passing check and unhealthy after ``FAILURES_TO_UNHEALTHY``
failing checks in a row, or at once when its connection is refused (nothing listens: a lost
node's or a dead process's port). The check is an HTTP GET of the app's health path (any
2xx/3xx passes), or a TCP connect when the app has no health path. Results live in memory and
in the instance rows the reconciler writes: after a restart the first round runs before
anything is routed (see ``first_round``).

A new instance is not left for the next round: ``probe_soon`` (called when the reconciler starts
one, or the engine says one started) checks it at once and then every ``FAST_PROBE_STEP_SECONDS``
while it boots (``FAST_PROBE_BURST_SECONDS``), every ``FAST_PROBE_SLOW_STEP_SECONDS`` after that,
until its first pass, for at most ``FAST_PROBE_WINDOW_SECONDS``; after that the regular rounds
go on. A fast probe's pass counts like any check's (routing still waits for one); its
failures are not counted, so an app still booting shows as starting, not failing.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from berth.periodic import PeriodicLoop
from berth.runtime.protocol import LABEL_PORT, ContainerInfo, Runtime
from berth.workloads.protocol import LABEL_HEALTH_PATH as LABEL_HEALTH_PATH
from berth.workloads.protocol import WorkloadInstance, Workloads

FAILURES_TO_UNHEALTHY = 2
REFUSED = "connection refused"
UNREACHABLE = "no answer to connect"
CHECK_TIMEOUT_SECONDS = 2.0
# A connect is answered by the kernel in well under a millisecond on a LAN, busy app or not; no
# answer means the node is gone or cut off (a killed node's host-mode port is DNATed to a
# container that no longer exists, so its SYNs go unanswered rather than refused). Unrouting it
# must not wait for two full check timeouts, nor for Swarm to mark the node down (~5 s).
CONNECT_TIMEOUT_SECONDS = 0.5
# Most apps listen within a second or two of their start: probing often then puts the first
# route (and the deploy's first 200) within ~20 ms of the app's readiness; a slow starter is
# probed less often (fewer probes in all than one step of 50 ms over the whole window).
FAST_PROBE_STEP_SECONDS = 0.02
FAST_PROBE_BURST_SECONDS = 2.0
FAST_PROBE_SLOW_STEP_SECONDS = 0.1
FAST_PROBE_WINDOW_SECONDS = 10.0

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
class _Pending:
    next_at: float
    until: float
    since: float


@dataclass
class FastProbes:
    """When each newly started container is probed next (pure: the caller passes the time)."""

    step: float = FAST_PROBE_STEP_SECONDS
    window: float = FAST_PROBE_WINDOW_SECONDS
    burst: float = FAST_PROBE_BURST_SECONDS  # how long ``step`` applies, then ``slow_step``
    slow_step: float = FAST_PROBE_SLOW_STEP_SECONDS
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def add(self, container_id: str, now: float) -> None:
        """Probe ``container_id`` now, and again every ``step`` (``slow_step`` after ``burst``)
        until it passes or the window ends. A container added again (a restart) gets a new
        window."""
        self._pending[container_id] = _Pending(now, now + self.window, now)

    def discard(self, container_id: str) -> None:
        self._pending.pop(container_id, None)

    def due(self, now: float) -> list[str]:
        """The containers to probe at ``now``; those past their window are dropped."""
        for cid in [c for c, p in self._pending.items() if now >= p.until]:
            del self._pending[cid]
        return sorted(c for c, p in self._pending.items() if now >= p.next_at)

    def probed(self, container_id: str, now: float, passed: bool) -> None:
        """A probe ended: a pass ends the fast schedule, a failure tries again after a step."""
        pending = self._pending.get(container_id)
        if pending is None:
            return
        if passed:
            del self._pending[container_id]
        else:
            booting = now - pending.since < self.burst
            pending.next_at = now + (self.step if booting else self.slow_step)

    def next_at(self) -> float | None:
        """When the next probe (or the end of a window) is due; None when nothing is pending."""
        if not self._pending:
            return None
        return min(min(p.next_at, p.until) for p in self._pending.values())

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._pending


class HealthTargets(Protocol):
    """What to check: every running instance, and one instance looked up by its id."""

    def all(self) -> list[CheckTarget]: ...

    def lookup(self, instance_id: str) -> tuple[CheckTarget | None, bool]:
        """The instance's target (None: gone, stopped, or nothing to check) and whether it is
        still booting (then it is looked up again)."""
        ...


@dataclass
class RuntimeTargets:
    """The containers of one engine (the local backend)."""

    runtime: Runtime

    def all(self) -> list[CheckTarget]:
        return [t for t in (_target(c) for c in self.runtime.list()) if t is not None]

    def lookup(self, instance_id: str) -> tuple[CheckTarget | None, bool]:
        info = self.runtime.inspect(instance_id)
        if info is None:
            return None, False
        return _target(info), info.state in ("created", "restarting")


@dataclass
class WorkloadTargets:
    """The instances a workload backend reports, wherever they run (their address and port)."""

    workloads: Workloads

    def all(self) -> list[CheckTarget]:
        return [t for t in (instance_target(i) for i in self.workloads.instances()) if t]

    def lookup(self, instance_id: str) -> tuple[CheckTarget | None, bool]:
        for inst in self.workloads.instances():
            if inst.id == instance_id:
                return instance_target(inst), inst.state == "starting"
        return None, False


def instance_target(inst: WorkloadInstance) -> CheckTarget | None:
    """How to check one instance: HTTP at its address when it has a health path, else a TCP
    connect to where the app itself listens."""
    if inst.state != "running" or inst.address is None or inst.port is None:
        return None
    if inst.health_path:
        return CheckTarget(inst.id, inst.port, inst.health_path, inst.started_at, inst.address)
    host = inst.probe_address or inst.address
    port = inst.probe_port or inst.port
    return CheckTarget(inst.id, port, None, inst.started_at, host)


@dataclass
class HealthMonitor:
    runtime: Runtime | HealthTargets
    interval: float = 1.0
    on_change: Callable[[], None] = lambda: None
    host: str = "127.0.0.1"
    states: dict[str, HealthState] = field(default_factory=dict)
    first_round: threading.Event = field(default_factory=threading.Event)

    clock: Callable[[], float] = time.monotonic  # the fast-probe schedule's clock

    def __post_init__(self) -> None:
        source: Any = self.runtime
        self.targets: HealthTargets = (
            source if callable(getattr(source, "lookup", None)) else RuntimeTargets(source)
        )
        self._lock = threading.Lock()
        self._loop = PeriodicLoop("berth-health", self._round, self.interval)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="berth-health")
        # A new connection per check: a check on a kept-alive connection to a node that was
        # cut off waits out the whole check timeout instead of failing at the connect one.
        self._client = httpx.Client(
            timeout=httpx.Timeout(CHECK_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )
        # New instances: the schedule, what is known of each, and the thread that probes them.
        self._fast = FastProbes()
        self._fast_targets: dict[str, CheckTarget] = {}
        self._fast_wake = threading.Condition(self._lock)
        self._fast_stop = False
        self._fast_thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop.start()
        self._fast_stop = False
        self._fast_thread = threading.Thread(
            target=self._fast_run, name="berth-health-fast", daemon=True
        )
        self._fast_thread.start()

    def stop(self) -> None:
        self._loop.stop(timeout=5)
        with self._lock:
            self._fast_stop = True
            self._fast_wake.notify_all()
        if self._fast_thread is not None:
            self._fast_thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def seed(self, healthy: dict[str, float | None]) -> None:
        """What the store last recorded as healthy (instance id -> its start time): routing
        keeps those until a check of this process says otherwise, so a restarted server (or a
        new leader) does not unroute what serves while its first round runs."""
        with self._lock:
            for cid, started_at in healthy.items():
                self.states.setdefault(
                    cid, HealthState(healthy=True, last_checked=time.time(), started_at=started_at)
                )

    # -- new instances ------------------------------------------------------------------------

    def probe_soon(self, container: ContainerInfo | CheckTarget | str) -> None:
        """Check a container that has just started at once and then quickly until it passes.
        Given only an id (an engine event), its port is looked up in the probing thread."""
        if isinstance(container, CheckTarget):
            cid, target = container.container_id, container
        elif isinstance(container, str):
            cid, target = container, None
        else:
            cid, target = container.id, _target(container)
        with self._lock:
            if target is not None:
                self._fast_targets[cid] = target
            elif isinstance(container, str) and cid in self._fast:
                return  # already being probed (the reconciler started it): keep its target
            else:
                self._fast_targets.pop(cid, None)
            self._fast.add(cid, self.clock())
            self._fast_wake.notify_all()

    def forget(self, container_id: str) -> None:
        """A container stopped or is gone: not healthy any more, and no longer fast-probed."""
        changed = False
        with self._lock:
            self._fast.discard(container_id)
            self._fast_targets.pop(container_id, None)
            state = self.states.pop(container_id, None)
            changed = bool(state and state.healthy)
        if changed:
            self.on_change()

    def _fast_run(self) -> None:
        while True:
            with self._lock:
                while not self._fast_stop:
                    now = self.clock()
                    due = self._fast.due(now)
                    if due:
                        break
                    next_at = self._fast.next_at()
                    self._fast_wake.wait(None if next_at is None else max(0.0, next_at - now))
                if self._fast_stop:
                    return
                known = {cid: self._fast_targets.get(cid) for cid in due}
            try:
                self._fast_round(known)
            except Exception:  # the regular rounds still check everything
                log.exception("fast health probes failed")
                with self._lock:
                    for cid in due:
                        self._fast.probed(cid, self.clock(), passed=False)

    def _fast_round(self, known: dict[str, CheckTarget | None]) -> None:
        targets: dict[str, CheckTarget] = {}
        for cid, target in known.items():
            if target is None:
                # Gone, stopped, or running with nothing to check (no published port): leave
                # it to the regular rounds. Only one not running yet is looked up again.
                target, booting = self.targets.lookup(cid)
                if target is None and not booting:
                    with self._lock:
                        self._fast.discard(cid)
                    continue
            if target is None:
                with self._lock:
                    self._fast.probed(cid, self.clock(), passed=False)
                continue
            targets[cid] = target
        results = list(self._pool.map(self._probe, targets.values()))
        changed = False
        with self._lock:
            for target, (ok, error) in zip(targets.values(), results, strict=True):
                if target.container_id not in self._fast:
                    continue  # forgotten meanwhile (it died): its result is stale
                self._fast.probed(target.container_id, self.clock(), passed=ok)
                if ok:
                    self._fast_targets.pop(target.container_id, None)
                    changed |= self._record(target, ok, error)
                else:
                    # An app still booting is not "failing" in ``ps``: only the regular rounds
                    # count failures, as before.
                    self._fast_targets[target.container_id] = target
        if changed:
            self.on_change()

    # -- regular rounds -----------------------------------------------------------------------

    def is_healthy(self, container_id: str) -> bool:
        with self._lock:
            state = self.states.get(container_id)
            return bool(state and state.healthy)

    def state_of(self, container_id: str) -> HealthState | None:
        with self._lock:
            return self.states.get(container_id)

    def check_round(self) -> bool:
        """Check every running managed container once; returns whether any health changed."""
        targets = self.targets.all()
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
            if state.failures >= FAILURES_TO_UNHEALTHY or not before or _refused(error):
                state.healthy = False
        return before != state.healthy

    def _probe(self, target: CheckTarget) -> tuple[bool, str]:
        if target.path is None:
            return _tcp_check(target.host or self.host, target.port)
        url = f"http://{target.host or self.host}:{target.port}{target.path}"
        try:
            resp = self._client.get(url)
        except httpx.ConnectTimeout:
            return False, f"GET {target.path}: {UNREACHABLE}"
        except httpx.ConnectError as exc:
            refused = isinstance(exc.__cause__, ConnectionRefusedError) or "refused" in str(exc)
            return False, f"GET {target.path}: {REFUSED if refused else type(exc).__name__}"
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


def _refused(error: str) -> bool:
    """Nothing listens there (its node or process is gone) or nothing answers a connect (its
    node is gone or cut off): no second check is needed to stop routing to it, unlike a slow
    answer or an error answer, which may pass."""
    return error.endswith(REFUSED) or error.endswith(UNREACHABLE)


def _tcp_check(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
            return True, ""
    except ConnectionRefusedError:
        return False, f"TCP connect: {REFUSED}"
    except TimeoutError:
        return False, f"TCP connect: {UNREACHABLE}"
    except OSError as exc:
        return False, f"TCP connect: {exc.strerror or exc}"
