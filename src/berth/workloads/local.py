"""The local backend: process groups as containers on this machine's engine.

Berth itself keeps each group at its replicas here (the pure container planner in
berth.domain.reconcile): it starts missing containers when their memory fits the node
(berth.domain.admission), restarts crashed ones in place with exponential backoff, and removes
extras and every container of a group that is no longer wanted. Removals run in the background
(a process that ignores SIGTERM holds its stop for the whole timeout); until the engine confirms
one, its instance is reported as ``stopping`` (and stays billed), then once as ``removed`` with
the engine's stop time.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from berth.agent.health import LABEL_HEALTH_PATH
from berth.controllers.backoff import Backoff
from berth.domain.admission import MB, NodeMemory, admit
from berth.domain.model import ObservedInstance
from berth.domain.placement import unsatisfied_reason
from berth.domain.reconcile import (
    Plan,
    RemoveInstance,
    RestartInstance,
    StartInstance,
    Waiting,
    next_restart_count,
    plan_containers,
)
from berth.domain.rollout import GroupTarget
from berth.runtime.protocol import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_NODE,
    LABEL_PORT,
    LABEL_REVISION,
    LABEL_TENANT,
    ContainerInfo,
    ContainerSpec,
    Runtime,
    owner_labels,
)
from berth.workloads.protocol import (
    LABEL_CPUS_MILLI,
    LABEL_GROUP,
    LABEL_MEMORY_MB,
    LABEL_PROCESS,
    BackendKind,
    InstanceState,
    NodeSummary,
    ProcessGroup,
    WorkloadInstance,
    group_labels,
)

log = logging.getLogger(__name__)

NETWORK_PREFIX = "berth-t-"
STOP_TIMEOUT_SECONDS = 10.0
# A removed instance is reported this long (every caller sees its stop time at least once).
REMOVED_REPORT_SECONDS = 60.0
# A tenant network nothing uses any more is kept this long: deleting a tenant's only app and
# creating one again (or scaling to none and back) does not make and egress-filter a new
# network (~0.1 s more on that start) and churn the subnet pool.
NETWORK_IDLE_SECONDS = 15.0

_STATES: dict[str, InstanceState] = {
    "created": "starting",
    "restarting": "starting",
    "running": "running",
    "paused": "running",
    "exited": "exited",
    "dead": "exited",
    "removing": "stopping",
}
# Containers that hold memory on the node (an exited one holds none until it starts again).
_HOLDING_MEMORY = frozenset({"created", "running", "restarting", "paused", "removing"})


def tenant_network(tenant_id: str) -> str:
    return f"{NETWORK_PREFIX}{tenant_id}"


@dataclass
class _Removed:
    instance: WorkloadInstance
    reported_until: float


@dataclass
class LocalWorkloads:
    runtime: Runtime
    host_memory_reserve_mb: int = 1024
    node: str = "local"
    clock: Callable[[], float] = time.time
    healthy: Callable[[str], bool] = lambda instance_id: False
    network_ready: Callable[[str], None] = lambda network: None  # the egress filter's hook
    on_started: Callable[[ContainerInfo], object] = lambda info: None  # health: probe it now
    on_change: Callable[[], None] = lambda: None  # wake the controllers (a removal is done)
    before_stop: Callable[[set[str]], None] = lambda ids: None  # routing: unroute these first
    # What an earlier server remembered: container id -> (restarts in a row, creation order).
    seed: Callable[[], Mapping[str, tuple[int, int]]] = dict
    # This node's labels (the node_labels setting): a group's constraints must hold on them.
    node_labels: Mapping[str, str] = field(default_factory=dict)
    # Tenant networks something other than an app holds (a tenant's dedicated database
    # servers, berth.databases.dedicated_local): never removed as idle.
    held_networks: Callable[[], set[str]] = lambda: set()
    kind: BackendKind = field(default="local", init=False)

    def __post_init__(self) -> None:
        self.installation = self.runtime.installation
        self._lock = threading.Lock()  # one apply at a time
        self._backoff = Backoff()
        self._restarts: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self._last_exit: dict[str, float] = {}
        self._seeded = False
        self._next_seq = int(self.clock() * 1000)
        self._refused: dict[str, str] = {}  # group key -> why its next instance did not start
        self._waiting: dict[str, Waiting] = {}  # container id -> why it is not restarted yet
        self._restart_failed: dict[str, str] = {}
        self._groups: dict[tuple[str, str], ProcessGroup] = {}
        self._node_memory_mb: int | None = None
        self._removal_lock = threading.Lock()
        self._removing: dict[str, WorkloadInstance] = {}
        self._removed: dict[str, _Removed] = {}
        self._removal_failed: dict[str, str] = {}
        self._removals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="berth-remove")
        self._timer_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._timer_due = 0.0
        self._idle_networks: dict[str, float] = {}  # network -> since when nothing uses it
        # Networks made and egress-filtered by this backend that still exist (as of the last
        # pass's listing): a start on one asks the engine nothing more first. A start that
        # fails drops its network from here, so the next one checks it again.
        self._ready_networks: set[str] = set()
        self.last_plan = Plan()  # the container plan of the last apply (what it did, and why)

    # -- the seam ---------------------------------------------------------------------------

    def apply(self, groups: Sequence[ProcessGroup]) -> None:
        with self._lock:
            now = self.clock()
            self._seed_once()
            self._settle_removals(now)
            containers = self.runtime.list()
            self._count_exits(containers)
            self._groups = {(g.app_id, g.revision): g for g in groups}
            with self._removal_lock:
                removing = set(self._removing)
            observed = [self._observed(c) for c in containers if c.id not in removing]
            targets = [GroupTarget(g.app_id, g.revision, g.replicas) for g in groups]
            plan = plan_containers(targets, observed, now)
            self.last_plan = plan
            self._start_and_restart(plan.actions, containers, now)
            removals = [a for a in plan.actions if isinstance(a, RemoveInstance)]
            if removals:
                # Out of the ingress (and the reload live) before anything is stopped.
                self.before_stop({a.container_id for a in removals})
            self._remove(removals, containers)
            self._waiting = {w.container_id: w for w in plan.waiting}
            self._remove_unused_networks(groups, containers)
            if plan.waiting:
                self._wake_at(min(w.until for w in plan.waiting))

    def instances(self) -> list[WorkloadInstance]:
        now = self.clock()
        containers = self.runtime.list()
        with self._removal_lock:
            removing = dict(self._removing)
            removed = [r.instance for r in self._removed.values() if r.reported_until >= now]
            live = {c.id for c in containers}
            for cid in [c for c, r in self._removed.items() if r.reported_until < now]:
                del self._removed[cid]
        out = [self._instance(c, stopping=c.id in removing) for c in containers]
        out += [r for r in removed if r.id not in live]
        out += self._pending()
        return out

    def nodes(self) -> list[NodeSummary]:
        total = self._node_memory() or 0
        ready = self.runtime.ping()
        return [
            NodeSummary(
                id=self.node,
                name=self.node,
                address="127.0.0.1",
                role="local",
                availability="active",
                state="ready" if ready else "down",
                labels=dict(self.node_labels),
                memory_bytes=total * MB,
                # The one engine answers each listing itself: what it says is current.
                last_seen=self.clock() if ready else None,
            )
        ]

    def logs(self, instance_id: str, tail: int = 100) -> str:
        return self.runtime.logs(instance_id, tail=tail)

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        return self.runtime.follow_logs(instance_id, tail=tail, stop=stop)

    def close(self) -> None:
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
        self._removals.shutdown(wait=False)

    def wait_for_removals(self) -> None:
        """Let the removals in flight finish (tests move time; a server just waits)."""
        self._removals.shutdown(wait=True)
        self._removals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="berth-remove")

    # -- observing --------------------------------------------------------------------------

    def _seed_once(self) -> None:
        if self._seeded:
            return
        self._seeded = True
        try:
            for cid, (restarts, seq) in self.seed().items():
                self._restarts.setdefault(cid, restarts)
                self._seq.setdefault(cid, seq)
        except Exception as exc:  # a fresh count is safe: backoff starts over
            log.warning("could not read the instances' restart counts: %s", exc)

    def _count_exits(self, containers: Sequence[ContainerInfo]) -> None:
        """A new exit: count it (unless the instance had run long enough to be healthy)."""
        for c in containers:
            if c.state == "running" or not c.finished_at:
                continue
            if self._last_exit.get(c.id) == c.finished_at:
                continue
            self._last_exit[c.id] = c.finished_at
            ran = c.finished_at - c.started_at if c.started_at else None
            self._restarts[c.id] = next_restart_count(self._restarts.get(c.id, 0), ran)

    def _observed(self, c: ContainerInfo) -> ObservedInstance:
        return ObservedInstance(
            container_id=c.id,
            app_id=c.labels.get(LABEL_APP, ""),
            revision=c.labels.get(LABEL_REVISION, ""),
            state=c.state,
            healthy=self.healthy(c.id),
            restarts=self._restarts.get(c.id, 0),
            exit_code=c.exit_code,
            finished_at=c.finished_at,
            created_seq=self._seq_of(c.id),
        )

    def _seq_of(self, cid: str) -> int:
        if cid not in self._seq:
            self._next_seq += 1
            self._seq[cid] = self._next_seq
        return self._seq[cid]

    def _instance(self, c: ContainerInfo, stopping: bool = False) -> WorkloadInstance:
        labels = c.labels
        app_port = labels.get(LABEL_PORT, "")
        state: InstanceState = "stopping" if stopping else _STATES.get(c.state, "exited")
        return WorkloadInstance(
            id=c.id,
            # Containers started before groups had a label: the same key from their labels.
            group=labels.get(LABEL_GROUP)
            or f"{labels.get(LABEL_APP, '')}/{labels.get(LABEL_PROCESS, 'web')}/"
            f"{labels.get(LABEL_REVISION, '')}",
            tenant_id=labels.get(LABEL_TENANT, ""),
            app_id=labels.get(LABEL_APP, ""),
            revision=labels.get(LABEL_REVISION, ""),
            state=state,
            node=labels.get(LABEL_NODE, self.node),
            process=labels.get(LABEL_PROCESS, "web"),
            address="127.0.0.1" if c.host_port else None,
            port=c.host_port,
            # Docker's loopback proxy accepts connections while nothing listens: a TCP check
            # goes to the container's own address.
            probe_address=c.address,
            probe_port=int(app_port) if app_port.isdigit() else None,
            health_path=labels.get(LABEL_HEALTH_PATH) or None,
            started_at=c.started_at,
            finished_at=c.finished_at if c.state != "running" else None,
            exit_code=c.exit_code,
            restarts=self._restarts.get(c.id, 0),
            reason="stopping" if stopping else self._reason(c),
            memory_mb=_int(labels.get(LABEL_MEMORY_MB)),
            cpus_milli=_int(labels.get(LABEL_CPUS_MILLI)),
            seq=self._seq_of(c.id),
            slot=c.name,
        )

    def _reason(self, c: ContainerInfo) -> str:
        if c.state == "running":
            return ""
        failed = self._restart_failed.get(c.id)
        if failed:
            return failed
        wait = self._waiting.get(c.id)
        if wait is not None:
            loop = "crash loop: " if self._restarts.get(c.id, 0) >= 3 else ""
            return loop + wait.reason
        if c.oom_killed:
            return "killed: out of memory"
        return ""

    def _pending(self) -> list[WorkloadInstance]:
        """One pending instance per group that should start one and cannot, with why."""
        now = self.clock()
        reasons = dict(self._refused)
        for key, message in self._backoff.waiting(now).items():
            if key.startswith("group:"):
                reasons[key.removeprefix("group:")] = message
        out = []
        for (app_id, revision), group in sorted(self._groups.items()):
            reason = reasons.get(group.key)
            if reason is None:
                continue
            out.append(
                WorkloadInstance(
                    id=f"pending:{group.key}",
                    group=group.key,
                    tenant_id=group.tenant_id,
                    app_id=app_id,
                    revision=revision,
                    state="pending",
                    node=self.node,
                    process=group.process,
                    reason=reason,
                    memory_mb=group.memory_mb,
                    cpus_milli=group.cpus_milli,
                )
            )
        return out

    # -- acting -----------------------------------------------------------------------------

    def _start_and_restart(
        self, actions: Sequence[object], containers: Sequence[ContainerInfo], now: float
    ) -> None:
        self._refused = {}
        committed_mb = sum(
            _int(c.labels.get(LABEL_MEMORY_MB)) for c in containers if c.state in _HOLDING_MEMORY
        )
        by_container = {c.id: c for c in containers}
        starts: list[ProcessGroup] = []  # admitted: started together after this loop
        for action in actions:
            if isinstance(action, StartInstance):
                group = self._groups.get((action.app_id, action.revision))
                if group is None:
                    continue
                key = f"group:{group.key}"
                if not self._backoff.ready(key, now):
                    continue
                # Never started here rather than started in breach: the instance waits as
                # pending, in Swarm's words, as it would on a swarm of this one node.
                refusal = unsatisfied_reason(group.constraints, [self.node_labels])
                if refusal is None:
                    refusal = self._admit(committed_mb, group.memory_mb)
                if refusal is not None:
                    self._refused[group.key] = refusal
                    continue
                starts.append(group)
                committed_mb += group.memory_mb
            elif isinstance(action, RestartInstance):
                cid = action.container_id
                key = f"restart:{cid}"
                if not self._backoff.ready(key, now):
                    continue
                current = by_container.get(cid)
                need_mb = _int(current.labels.get(LABEL_MEMORY_MB)) if current else 0
                refusal = self._admit(committed_mb, need_mb)
                if refusal is not None:
                    self._restart_failed[cid] = refusal
                    continue
                try:
                    info = self.runtime.start(cid)
                except Exception as exc:
                    due = self._backoff.failed(key, now)
                    self._restart_failed[cid] = (
                        f"restart failed: {exc}; retrying in {due - now:.0f}s"
                    )
                    log.warning("restart of %s failed: %s", cid, exc)
                    continue
                self._backoff.forget(key)
                self._restart_failed.pop(cid, None)
                self._restarts[cid] = self._restarts.get(cid, 0) + 1
                committed_mb += need_mb
                self.on_started(info)
        if starts:
            self._start_all(starts, now)

    def _start_all(self, groups: Sequence[ProcessGroup], now: float) -> None:
        """Start the admitted instances side by side: a deploy of N replicas takes about as
        long as one. Each network is made (and filtered) once, before anything runs on it."""
        ready: list[ProcessGroup] = []
        for network in dict.fromkeys(g.network for g in groups):
            mine = [g for g in groups if g.network == network]
            try:
                if network not in self._ready_networks:
                    self._prepare_network(mine[0])
                    self._ready_networks.add(network)
                ready += mine
            except Exception as exc:
                for group in mine:
                    self._backoff.failed(f"group:{group.key}", now, f"could not start: {exc}")
                log.warning("network %s is not ready: %s", network, exc)
        if len(ready) <= 1:
            errors: list[Exception | None] = [self._try_run(g) for g in ready]
        else:
            with ThreadPoolExecutor(max_workers=min(4, len(ready))) as pool:
                errors = list(pool.map(self._try_run, ready))
        for group, error in zip(ready, errors, strict=True):
            key = f"group:{group.key}"
            if error is None:
                self._backoff.forget(key)
            else:
                self._ready_networks.discard(group.network)
                self._backoff.failed(key, now, f"could not start: {error}")
                log.warning("start of %s failed: %s", group.app_name, error)

    def _try_run(self, group: ProcessGroup) -> Exception | None:
        try:
            self._run(group)
        except Exception as exc:
            return exc
        return None

    def _admit(self, committed_mb: int, need_mb: int) -> str | None:
        total_mb = self._node_memory()
        if total_mb is None:
            return None  # the engine did not say; starting will tell
        refusal = admit(
            NodeMemory(self.node, total_mb, self.host_memory_reserve_mb), committed_mb, need_mb
        )
        return refusal.reason if refusal is not None else None

    def _node_memory(self) -> int | None:
        if self._node_memory_mb is None:
            try:
                self._node_memory_mb = self.runtime.memory_bytes() // MB
            except Exception as exc:
                log.warning("cannot read the node's memory: %s", exc)
        return self._node_memory_mb

    def _prepare_network(self, group: ProcessGroup) -> None:
        labels = owner_labels(self.installation)
        self.runtime.ensure_network(group.network, {**labels, LABEL_TENANT: group.tenant_id})
        self.network_ready(group.network)  # egress rules in place before anything runs on it

    def _run(self, group: ProcessGroup) -> None:
        labels = owner_labels(self.installation)
        instance_id = _new_instance_id()
        spec = ContainerSpec(
            name=f"berth-{group.app_name}-v{group.release_version}-{instance_id[:8]}",
            image=group.image,
            port=group.port or 8080,
            memory_bytes=group.memory_mb * MB,
            nano_cpus=group.cpus_milli * 1_000_000,
            pids_limit=group.pids_limit,
            network=group.network,
            labels={
                **labels,
                **group_labels(group),
                LABEL_INSTANCE: instance_id,
                LABEL_NODE: self.node,
            },
            env=dict(group.env),
            command=group.command,
            disk_bytes=group.disk_mb * MB,
        )
        info = self.runtime.run(spec)
        self._seq_of(info.id)
        self.on_started(info)

    def _remove(
        self, actions: Sequence[RemoveInstance], containers: Sequence[ContainerInfo]
    ) -> None:
        now = self.clock()
        by_id = {c.id: c for c in containers}
        for action in actions:
            cid = action.container_id
            if not self._backoff.ready(f"remove:{cid}", now) or cid not in by_id:
                continue
            with self._removal_lock:
                if cid in self._removing or cid in self._removed:
                    continue
                self._removing[cid] = self._instance(by_id[cid])
            self._removals.submit(self._remove_container, cid)

    def _remove_container(self, container_id: str) -> None:
        try:
            stopped_at = self.runtime.remove(container_id, stop_timeout=STOP_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("removing %s failed (will retry with backoff): %s", container_id, exc)
            with self._removal_lock:
                self._removal_failed[container_id] = str(exc)
                self._removing.pop(container_id, None)
            return  # the retry waits for its backoff; the periodic pass comes anyway
        now = self.clock()
        with self._removal_lock:
            last = self._removing.pop(container_id, None)
            if last is not None:
                gone = replace(
                    last,
                    state="removed",
                    finished_at=stopped_at if stopped_at is not None else now,
                    reason="removed",
                )
                self._removed[container_id] = _Removed(gone, now + REMOVED_REPORT_SECONDS)
        self.on_change()  # settle its billing and status now

    def _settle_removals(self, now: float) -> None:
        with self._removal_lock:
            failed, self._removal_failed = self._removal_failed, {}
            done = [cid for cid in self._removed]
        for cid in done:
            self._backoff.forget(f"remove:{cid}")
            self._restarts.pop(cid, None)
            self._last_exit.pop(cid, None)
            self._waiting.pop(cid, None)
            self._restart_failed.pop(cid, None)
        for cid, error in failed.items():
            self._backoff.failed(f"remove:{cid}", now, error)

    def _remove_unused_networks(
        self, groups: Sequence[ProcessGroup], containers: Sequence[ContainerInfo]
    ) -> None:
        in_use = {g.network for g in groups}
        in_use |= {tenant_network(c.labels.get(LABEL_TENANT, "")) for c in containers}
        try:
            in_use |= self.held_networks()
        except Exception as exc:  # not knowing what is held, remove nothing this pass
            log.warning("cannot tell which networks dedicated databases hold: %s", exc)
            return
        now = self.clock()
        listed = self.runtime.list_networks()
        self._ready_networks &= set(listed)
        idle = {
            name: self._idle_networks.get(name, now)
            for name in listed
            if name.startswith(NETWORK_PREFIX) and name not in in_use
        }
        self._idle_networks = dict(idle)
        for name, since in idle.items():
            if now - since < NETWORK_IDLE_SECONDS:
                self._wake_at(since + NETWORK_IDLE_SECONDS)  # a pass then removes it
                continue
            try:
                self._ready_networks.discard(name)
                self.runtime.remove_network(name)
                del self._idle_networks[name]
            except Exception as exc:
                log.warning("removing network %s failed: %s", name, exc)

    def _wake_at(self, due: float) -> None:
        """Wake the controllers when a crashed instance's restart (or an idle network's
        removal) is due (one timer, for the earliest)."""
        delay = due - self.clock()
        with self._timer_lock:
            if self._timer is not None and self._timer.is_alive() and self._timer_due <= due:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(max(0.0, delay), self.on_change)
            self._timer.daemon = True
            self._timer_due = due
            self._timer.start()


def release_command(command_json: str | None) -> tuple[str, ...] | None:
    return tuple(json.loads(command_json)) if command_json else None


def _new_instance_id() -> str:
    return secrets.token_hex(8)  # like the store's ids: safe in labels and names


def _int(text: str | None) -> int:
    try:
        return int(text or "0")
    except ValueError:
        return 0
