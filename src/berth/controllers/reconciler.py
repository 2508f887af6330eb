"""The reconcile loop: observe the engine, plan with the pure planner, act, record status.

One pass (``run_once``) is level-triggered: it reads desired state from the store and observed
state from the engine every time, never from a cache. Passes run every few seconds and at once
when something changes (an API write, a health change, an engine event: see
berth.controllers.engine_events), and when a crashed instance's restart falls due. Failed
starts, restarts and removals back off per app or container (berth.controllers.backoff owns the
policy). A removed container stays billed until the engine confirms it is gone, and an instance
starts only when its memory fits the node (berth.domain.admission); otherwise it stays pending
with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from berth.agent.health import LABEL_HEALTH_PATH, HealthMonitor
from berth.controllers.backoff import Backoff
from berth.controllers.metering import (
    LABEL_CPUS_MILLI,
    LABEL_MEMORY_MB,
    close_interval,
    record_intervals,
)
from berth.controllers.snapshot import AppView, load_apps, release_env
from berth.domain.admission import MB, NodeMemory, admit
from berth.domain.model import ObservedInstance, Revision
from berth.domain.reconcile import (
    FinishDeployment,
    Plan,
    RemoveInstance,
    RestartInstance,
    StartInstance,
    next_restart_count,
    plan_reconcile,
)
from berth.periodic import PeriodicLoop
from berth.proxy.model import Route, RouteState, Upstream
from berth.proxy.nginx import NginxManager
from berth.runtime.protocol import (
    LABEL_APP,
    LABEL_APP_NAME,
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_REVISION,
    LABEL_TENANT,
    ContainerInfo,
    ContainerSpec,
    Runtime,
)
from berth.services.apps import purge_app
from berth.settings import Settings
from berth.store.tables import App, Deployment, Instance, Meta, PlanRow, Tenant, new_id

log = logging.getLogger(__name__)

NETWORK_PREFIX = "berth-t-"
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 20


def tenant_network(tenant_id: str) -> str:
    return f"{NETWORK_PREFIX}{tenant_id}"


# Containers that hold memory on the node (an exited one holds none until it starts again).
_HOLDING_MEMORY = frozenset({"created", "running", "restarting", "paused", "removing"})


def _app_key(app_id: str) -> str:
    return f"app:{app_id}"


def _restart_key(container_id: str) -> str:
    return f"restart:{container_id}"


def _remove_key(container_id: str) -> str:
    return f"remove:{container_id}"


@dataclass
class Reconciler:
    settings: Settings
    sessions: sessionmaker[Session]
    runtime: Runtime
    nginx: NginxManager
    health: HealthMonitor
    node: str = "local"
    clock: Callable[[], float] = time.time
    network_ready: Callable[[str], None] = lambda network: None  # the egress filter's hook
    on_started: Callable[[ContainerInfo], object] = lambda info: None  # health: probe it now
    routed: set[str] = field(default_factory=set)
    passes: int = 0

    def __post_init__(self) -> None:
        # Adopted instances are not routed (nor unrouted) before one full health round.
        self._loop = PeriodicLoop(
            "berth-reconciler",
            self.run_once,
            self.settings.reconcile_interval_seconds,
            before_first=lambda: self.health.first_round.wait(timeout=10),
        )
        self._lock = threading.Lock()  # one pass at a time
        self._backoff = Backoff()  # touched only inside a pass
        self._refused: dict[str, str] = {}  # app id -> why its instance did not fit, this pass
        self._node_memory_mb: int | None = None  # the engine's MemTotal, read once
        self._routes_hash: str | None = None
        self._generation = 0
        self._seq = int(self.clock() * 1000)
        # Removals run in the background; their outcome waits here for the next pass.
        self._removal_lock = threading.Lock()
        self._removing: set[str] = set()
        self._removed: dict[str, float | None] = {}  # container id -> engine's stop time
        self._removal_failed: dict[str, str] = {}  # container id -> error
        self._removals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="berth-remove")
        # A pass at the moment a crashed instance's restart is due, not at the next interval.
        self._timer_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._timer_due = 0.0

    # -- loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
        self._removals.shutdown(wait=False)

    def trigger(self) -> None:
        self._loop.wake()

    @property
    def last_error(self) -> str:
        return self._loop.last_error

    # -- one pass ---------------------------------------------------------------------------

    def run_once(self) -> Plan:
        with self._lock:
            now = self.clock()
            with self.sessions() as session:
                apps = load_apps(session)
                self._settle_removals(session, now)
                # Every container, also those being removed: until the engine confirms that one
                # is gone it keeps its row and its open run interval (it may still be running).
                containers = self.runtime.list()
                self._record_observed(session, containers, now)
                record_intervals(session, containers, now)
                observed = self._observe(session, self._without_removing(containers))
                # Planned as of the observation: the engine may hold a dying container's inspect
                # for a while, and a restart due by then belongs in this pass, not the next.
                plan = plan_reconcile([a.desired for a in apps], observed, self.clock())
                by_id = {a.id: a for a in apps}
                self._finish_deployments(session, plan)
                self._start_and_restart(session, plan, by_id, containers, now)
                # What the engine now runs is recorded before anything later can fail.
                session.commit()
                removing = {a.container_id for a in plan.actions if isinstance(a, RemoveInstance)}
                apps = load_apps(session)  # finished deployments changed serving/target
                routed_before = set(self.routed)
                self._sync_routes(session, apps, removing)
                if self.routed - routed_before:
                    self.trigger()  # newly routed: finish the rollout now, not next interval
                self._remove(plan, now)
                self._record_waiting(session, plan, now)
                self._remove_unused_networks(apps)
                self._purge_deleted_apps(session)
                session.commit()
            self.passes += 1
            if plan.waiting:
                self._wake_at(min(w.until for w in plan.waiting))
            return plan

    def _wake_at(self, due: float) -> None:
        """Run a pass at ``due`` (one timer, for the earliest: a pass plans again anyway)."""
        delay = due - self.clock()  # from now: the pass itself took time (an nginx reload)
        with self._timer_lock:
            if self._timer is not None and self._timer.is_alive() and self._timer_due <= due:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(max(0.0, delay), self.trigger)
            self._timer.daemon = True
            self._timer_due = due
            self._timer.start()

    def _observe(self, session: Session, containers: list[ContainerInfo]) -> list[ObservedInstance]:
        rows = {
            r.container_id: r
            for r in session.scalars(select(Instance).where(Instance.container_id.is_not(None)))
        }
        observed = []
        for c in containers:
            row = rows.get(c.id)
            observed.append(
                ObservedInstance(
                    container_id=c.id,
                    app_id=c.labels.get(LABEL_APP, ""),
                    revision=c.labels.get(LABEL_REVISION, ""),
                    state=c.state,
                    healthy=self.health.is_healthy(c.id),
                    routed=c.id in self.routed,
                    restarts=row.restarts if row else 0,
                    exit_code=c.exit_code,
                    finished_at=c.finished_at,
                    created_seq=row.seq if row else 0,
                )
            )
        return observed

    def _record_observed(
        self, session: Session, containers: list[ContainerInfo], now: float
    ) -> None:
        """Mirror what the engine reports into instance rows (the status that ``ps`` shows)."""
        rows = {
            r.container_id: r
            for r in session.scalars(select(Instance).where(Instance.node == self.node))
            if r.container_id
        }
        with self._removal_lock:
            removing = set(self._removing)
        for c in containers:
            row = rows.pop(c.id, None)
            if row is None:
                row = self._adopt(session, c)
            self._update_row(row, c)
            if c.id in removing:
                row.reason = "stopping"
        for gone in rows.values():  # the container vanished (removed behind our back)
            session.delete(gone)
        session.flush()

    def _adopt(self, session: Session, c: ContainerInfo) -> Instance:
        rev = Revision.parse(c.labels.get(LABEL_REVISION, ":0"))
        row = Instance(
            id=c.labels.get(LABEL_INSTANCE) or new_id(),
            app_id=c.labels.get(LABEL_APP, ""),
            tenant_id=c.labels.get(LABEL_TENANT, ""),
            release_id=rev.release_id,
            generation=rev.generation,
            node=self.node,
            container_id=c.id,
            seq=self._next_seq(),
        )
        session.add(row)
        return row

    def _update_row(self, row: Instance, c: ContainerInfo) -> None:
        health = self.health.state_of(c.id)
        if c.state != "running" and c.finished_at and c.finished_at != row.finished_at:
            # A new exit: count it (unless it had run long enough) and keep its last words.
            ran = c.finished_at - c.started_at if c.started_at else None
            row.restarts = next_restart_count(row.restarts, ran)
            row.exit_code = c.exit_code
            row.finished_at = c.finished_at
            row.last_log = self._tail_logs(c.id)
        row.state = c.state
        row.host_port = c.host_port
        row.started_at = c.started_at
        row.healthy = bool(health and health.healthy and c.state == "running")
        if c.state == "running":
            if health is None or health.last_checked == 0:
                row.reason = "waiting for the first health check"
            elif not health.healthy:
                row.reason = f"failing health check: {health.last_error}"
            else:
                row.reason = ""
        elif c.oom_killed:
            row.reason = "killed: out of memory"

    def _tail_logs(self, container_id: str) -> str:
        try:
            return "\n".join(
                self.runtime.logs(container_id, tail=LOG_TAIL_LINES).splitlines()[-LOG_TAIL_LINES:]
            )
        except Exception:
            return ""

    # -- actions ----------------------------------------------------------------------------

    def _finish_deployments(self, session: Session, plan: Plan) -> None:
        for action in plan.actions:
            if not isinstance(action, FinishDeployment):
                continue
            app = session.get(App, action.app_id)
            dep = session.get(Deployment, action.deployment_id)
            if app is None or dep is None or app.deployment_id != dep.id:
                continue
            dep.status = "succeeded" if action.succeeded else "failed"
            dep.message = action.reason
            dep.finished_at = self.clock()
            if action.succeeded:
                app.serving_release_id = app.target_release_id
                app.serving_generation = app.target_generation
            else:
                app.target_release_id = app.serving_release_id
                app.target_generation = app.serving_generation
            app.deployment_id = None
            log.info("deployment %s of app %s %s: %s", dep.id, app.name, dep.status, dep.message)
        session.flush()

    def _start_and_restart(
        self,
        session: Session,
        plan: Plan,
        apps: dict[str, AppView],
        containers: list[ContainerInfo],
        now: float,
    ) -> None:
        self._refused = {}
        # What the node has promised, including containers still being removed.
        committed_mb = sum(_memory_mb(c) for c in containers if c.state in _HOLDING_MEMORY)
        disks = self._disk_mb_by_tenant(session)
        by_container = {c.id: c for c in containers}
        for action in plan.actions:
            if isinstance(action, StartInstance):
                app = apps.get(action.app_id)
                if app is None or not self._backoff.ready(_app_key(app.id), now):
                    continue
                revision = Revision.parse(action.revision)
                release = app.releases.get(revision.release_id)
                need_mb = release.memory_mb if release is not None else 0
                refusal = self._admit(committed_mb, need_mb)
                if refusal is not None:
                    self._refused[app.id] = refusal
                    continue
                try:
                    self._start_instance(session, app, revision, disks.get(app.tenant_id))
                    self._backoff.forget(_app_key(app.id))
                    committed_mb += need_mb
                except Exception as exc:
                    self._backoff.failed(_app_key(app.id), now, f"could not start: {exc}")
                    log.warning("start of %s failed: %s", app.name, exc)
            elif isinstance(action, RestartInstance):
                cid = action.container_id
                if not self._backoff.ready(_restart_key(cid), now):
                    continue
                row = session.scalar(select(Instance).where(Instance.container_id == cid))
                current = by_container.get(cid)
                need_mb = _memory_mb(current) if current is not None else 0
                refusal = self._admit(committed_mb, need_mb)
                if refusal is not None:
                    if row is not None:
                        row.reason = refusal
                    continue
                try:
                    info = self.runtime.start(cid)
                except Exception as exc:
                    due = self._backoff.failed(_restart_key(cid), now)
                    if row is not None:
                        row.reason = f"restart failed: {exc}; retrying in {due - now:.0f}s"
                    log.warning("restart of %s failed: %s", cid, exc)
                    continue
                self._backoff.forget(_restart_key(cid))
                self.on_started(info)
                committed_mb += need_mb
                if row is not None:
                    row.restarts += 1
                    row.state = info.state
                    row.host_port = info.host_port
                    row.reason = f"restarted after exit code {row.exit_code}"
        session.flush()

    def _admit(self, committed_mb: int, need_mb: int) -> str | None:
        """Why an instance of ``need_mb`` does not fit this node now, or None when it does."""
        total_mb = self._node_memory()
        if total_mb is None:
            return None  # the engine did not say; starting will tell
        node = NodeMemory(self.node, total_mb, self.settings.host_memory_reserve_mb)
        refusal = admit(node, committed_mb, need_mb)
        return refusal.reason if refusal is not None else None

    def _node_memory(self) -> int | None:
        if self._node_memory_mb is None:
            try:
                self._node_memory_mb = self.runtime.memory_bytes() // MB
            except Exception as exc:
                log.warning("cannot read the node's memory: %s", exc)
        return self._node_memory_mb

    def _disk_mb_by_tenant(self, session: Session) -> dict[str, int]:
        """Each tenant's plan's tmpfs size where the plan sets one (else the setting applies)."""
        rows = session.execute(
            select(Tenant.id, PlanRow.instance_disk_mb)
            .join(PlanRow, PlanRow.id == Tenant.plan_id)
            .where(PlanRow.instance_disk_mb.is_not(None))
        )
        return {tenant_id: disk for tenant_id, disk in rows if disk is not None}

    def _start_instance(
        self, session: Session, app: AppView, revision: Revision, disk_mb: int | None
    ) -> None:
        release = app.releases.get(revision.release_id)
        if release is None:
            raise LookupError(f"release {revision.release_id} is gone")
        network = tenant_network(app.tenant_id)
        labels = {LABEL_MANAGED: "true", LABEL_INSTALLATION: self.runtime.installation}
        self.runtime.ensure_network(network, {**labels, LABEL_TENANT: app.tenant_id})
        self.network_ready(network)  # egress rules in place before anything runs on it
        instance_id = new_id()
        command = tuple(json.loads(release.command_json)) if release.command_json else None
        spec = ContainerSpec(
            name=f"berth-{app.name}-v{release.version}-{instance_id[:8]}",
            image=release.image_id,
            port=release.port,
            memory_bytes=release.memory_mb * 1024 * 1024,
            nano_cpus=release.cpus_milli * 1_000_000,
            pids_limit=self.settings.pids_limit,
            network=network,
            labels={
                **labels,
                LABEL_TENANT: app.tenant_id,
                LABEL_APP: app.id,
                LABEL_APP_NAME: app.name,
                LABEL_RELEASE: release.id,
                LABEL_REVISION: revision.key,
                LABEL_INSTANCE: instance_id,
                LABEL_NODE: self.node,
                LABEL_HEALTH_PATH: release.health_path or "",
                LABEL_PORT: str(release.port),
                LABEL_MEMORY_MB: str(release.memory_mb),
                LABEL_CPUS_MILLI: str(release.cpus_milli),
            },
            env=release_env(release),
            command=command,
            disk_bytes=(disk_mb or self.settings.instance_disk_mb) * MB,
        )
        info = self.runtime.run(spec)
        self.on_started(info)
        session.add(
            Instance(
                id=instance_id,
                app_id=app.id,
                tenant_id=app.tenant_id,
                release_id=release.id,
                generation=revision.generation,
                node=self.node,
                container_id=info.id,
                state=info.state,
                host_port=info.host_port,
                started_at=info.started_at,
                reason="waiting for the first health check",
                seq=self._next_seq(),
            )
        )
        session.execute(
            delete(Instance).where(Instance.app_id == app.id, Instance.container_id.is_(None))
        )

    def _remove(self, plan: Plan, now: float) -> None:
        """Stop and remove in the background: a process that ignores SIGTERM holds its stop for
        the whole timeout, and that must not hold up the loop. Until the engine's answer is
        settled by a pass, the container is left out of the planner's input (no pass plans it
        twice) but keeps its row and its open run interval: it is billed while it may run."""
        for action in plan.actions:
            if not isinstance(action, RemoveInstance):
                continue
            cid = action.container_id
            if not self._backoff.ready(_remove_key(cid), now):
                continue
            with self._removal_lock:
                if cid in self._removing or cid in self._removed or cid in self._removal_failed:
                    continue
                self._removing.add(cid)
            self.routed.discard(cid)
            self._removals.submit(self._remove_container, cid)

    def _remove_container(self, container_id: str) -> None:
        try:
            stopped_at = self.runtime.remove(container_id, stop_timeout=STOP_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("removing %s failed (will retry with backoff): %s", container_id, exc)
            with self._removal_lock:
                self._removal_failed[container_id] = str(exc)
                self._removing.discard(container_id)
            # No wake-up: the retry waits for its backoff, and the periodic pass comes anyway.
            return
        with self._removal_lock:
            self._removed[container_id] = stopped_at
            self._removing.discard(container_id)
        self.trigger()  # settle its billing and status now

    def _settle_removals(self, session: Session, now: float) -> None:
        """Apply the engine's answers to removals: a confirmed one ends the container's run
        interval at the engine's stop time; a failed one backs off before the next attempt."""
        with self._removal_lock:
            removed, self._removed = self._removed, {}
            failed, self._removal_failed = self._removal_failed, {}
        for cid, stopped_at in removed.items():
            self._backoff.forget(_remove_key(cid))
            close_interval(session, cid, stopped_at if stopped_at is not None else now)
        for cid, error in failed.items():
            self._backoff.failed(_remove_key(cid), now, error)
        session.flush()

    def _without_removing(self, containers: list[ContainerInfo]) -> list[ContainerInfo]:
        with self._removal_lock:
            removing = set(self._removing)
        return [c for c in containers if c.id not in removing]

    def _list(self) -> list[ContainerInfo]:
        return self._without_removing(self.runtime.list())

    def _record_waiting(self, session: Session, plan: Plan, now: float) -> None:
        for wait in plan.waiting:
            row = session.scalar(select(Instance).where(Instance.container_id == wait.container_id))
            if row is not None and not self._backoff.failures(_restart_key(wait.container_id)):
                row.reason = ("crash loop: " if row.restarts >= 3 else "") + wait.reason
        # One pending row per app that should start an instance and cannot: why, for `ps`.
        pending = {
            key.removeprefix("app:"): message
            for key, message in self._backoff.waiting(now).items()
            if key.startswith("app:")
        }
        pending.update(self._refused)
        stale = select(Instance).where(Instance.container_id.is_(None), Instance.node == self.node)
        for row in session.scalars(stale):
            if pending.get(row.app_id) == row.reason:
                del pending[row.app_id]  # already says so
            else:
                session.delete(row)
        for app_id, reason in pending.items():
            app = session.get(App, app_id)
            if app is not None:
                session.add(
                    Instance(
                        id=new_id(),
                        app_id=app_id,
                        tenant_id=app.tenant_id,
                        release_id=app.target_release_id or "",
                        node=self.node,
                        state="pending",
                        reason=reason,
                        seq=self._next_seq(),
                    )
                )
        session.flush()

    # -- routing ----------------------------------------------------------------------------

    def _sync_routes(self, session: Session, apps: list[AppView], removing: set[str]) -> None:
        """Route every running, healthy instance that is not about to go; reload on change."""
        containers = {c.id: c for c in self._list() if c.state == "running"}
        routes = []
        routed: set[str] = set()
        for app in apps:
            keep = {r.key for r in (app.desired.target, app.desired.serving) if r is not None}
            ups = []
            for c in containers.values():
                if (
                    c.labels.get(LABEL_APP) == app.id
                    and c.labels.get(LABEL_REVISION) in keep
                    and c.id not in removing
                    and c.host_port
                    and self.health.is_healthy(c.id)
                ):
                    ups.append(Upstream("127.0.0.1", c.host_port))
                    routed.add(c.id)
            hostnames = (f"{app.name}.{self.settings.base_domain}", *app.domains)
            state: RouteState = (
                "suspended" if app.suspended else ("serving" if ups else "no_instances")
            )
            routes.append(
                Route(
                    app.id,
                    app.name,
                    app.tenant_id,
                    hostnames,
                    tuple(sorted(ups, key=lambda u: u.port)),
                    state,
                )
            )
        self._apply_routes(session, tuple(routes))
        self.routed = routed

    def _apply_routes(self, session: Session, routes: tuple[Route, ...]) -> None:
        digest = hashlib.sha256(repr(routes).encode()).hexdigest()
        # Unchanged routes still need a live nginx: apply() restarts one that died.
        if digest == self._routes_hash and self.nginx.is_running():
            return
        stored = session.get(Meta, "proxy_generation")
        generation, stored_digest = (0, "")
        if stored is not None:
            gen_text, _, stored_digest = stored.value.partition(":")
            generation = int(gen_text)
        if stored_digest != digest:
            generation += 1
        cfg = self.nginx.config(routes, generation)
        changed = self.nginx.apply(cfg)
        if changed:
            self.nginx.wait_for_generation(generation, timeout=10)
        session.merge(Meta(key="proxy_generation", value=f"{generation}:{digest}"))
        self._routes_hash = digest
        self._generation = generation

    # -- app deletion -----------------------------------------------------------------------

    def _purge_deleted_apps(self, session: Session) -> None:
        """An app being deleted (load_apps leaves it out, so its instances go) loses its rows
        once the engine has none of its containers left, asked now, after this pass's starts.
        From then on its name is free."""
        deleting = list(session.scalars(select(App).where(App.deleting_at.is_not(None))))
        if not deleting:
            return
        left = {c.labels.get(LABEL_APP, "") for c in self.runtime.list()}
        for app in deleting:
            if app.id not in left:
                purge_app(session, app)
                log.info("app %s is deleted: none of its containers is left", app.name)

    # -- helpers ----------------------------------------------------------------------------

    def _remove_unused_networks(self, apps: list[AppView]) -> None:
        in_use = {tenant_network(a.tenant_id) for a in apps}
        in_use |= {tenant_network(c.labels.get(LABEL_TENANT, "")) for c in self.runtime.list()}
        for name in self.runtime.list_networks():
            if name.startswith(NETWORK_PREFIX) and name not in in_use:
                try:
                    self.runtime.remove_network(name)
                except Exception as exc:
                    log.warning("removing network %s failed: %s", name, exc)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


def _memory_mb(c: ContainerInfo) -> int:
    try:
        return int(c.labels.get(LABEL_MEMORY_MB, "0"))
    except ValueError:
        return 0
