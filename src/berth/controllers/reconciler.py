"""The reconcile loop: observe the engine, plan with the pure planner, act, record status.

One pass (``run_once``) is level-triggered: it reads desired state from the store and observed
state from the engine every time, never from a cache. Passes run every few seconds and at once
when something changes (an API write, a health change). Failures back off per app.
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
from berth.controllers.metering import (
    LABEL_CPUS_MILLI,
    LABEL_MEMORY_MB,
    close_interval,
    record_intervals,
)
from berth.controllers.snapshot import AppView, load_apps, release_env
from berth.domain.model import ObservedInstance, Revision
from berth.domain.reconcile import (
    FinishDeployment,
    Plan,
    RemoveInstance,
    RestartInstance,
    StartInstance,
    next_restart_count,
    plan_reconcile,
    restart_backoff,
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
from berth.settings import Settings
from berth.store.tables import App, Deployment, Instance, Meta, new_id

log = logging.getLogger(__name__)

NETWORK_PREFIX = "berth-t-"
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 20


def tenant_network(tenant_id: str) -> str:
    return f"{NETWORK_PREFIX}{tenant_id}"


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    message: str = ""


@dataclass
class Reconciler:
    settings: Settings
    sessions: sessionmaker[Session]
    runtime: Runtime
    nginx: NginxManager
    health: HealthMonitor
    node: str = "local"
    clock: Callable[[], float] = time.time
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
        self._backoff: dict[str, _Backoff] = {}
        self._routes_hash: str | None = None
        self._generation = 0
        self._seq = int(self.clock() * 1000)
        self._removing: set[str] = set()
        self._removals = ThreadPoolExecutor(max_workers=8, thread_name_prefix="berth-remove")

    # -- loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
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
                containers = self._list()
                self._record_observed(session, containers, now)
                record_intervals(session, containers, now)
                observed = self._observe(session, containers)
                plan = plan_reconcile([a.desired for a in apps], observed, now)
                by_id = {a.id: a for a in apps}
                self._finish_deployments(session, plan)
                self._start_and_restart(session, plan, by_id, now)
                # What the engine now runs is recorded before anything later can fail.
                session.commit()
                removing = {a.container_id for a in plan.actions if isinstance(a, RemoveInstance)}
                apps = load_apps(session)  # finished deployments changed serving/target
                self._sync_routes(session, apps, removing)
                self._remove(session, plan)
                self._record_waiting(session, plan)
                self._remove_unused_networks(apps)
                session.commit()
            self.passes += 1
            return plan

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
        for c in containers:
            row = rows.pop(c.id, None)
            if row is None:
                row = self._adopt(session, c)
            self._update_row(row, c)
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
        self, session: Session, plan: Plan, apps: dict[str, AppView], now: float
    ) -> None:
        for action in plan.actions:
            if isinstance(action, StartInstance):
                app = apps.get(action.app_id)
                if app is None or not self._may_try(app.id, now):
                    continue
                try:
                    self._start_instance(session, app, Revision.parse(action.revision))
                    self._backoff.pop(app.id, None)
                except Exception as exc:
                    self._fail(app.id, now, f"could not start an instance: {exc}")
                    log.warning("start of %s failed: %s", app.name, exc)
            elif isinstance(action, RestartInstance):
                row = session.scalar(
                    select(Instance).where(Instance.container_id == action.container_id)
                )
                try:
                    info = self.runtime.start(action.container_id)
                except Exception as exc:
                    log.warning("restart of %s failed: %s", action.container_id, exc)
                    continue
                if row is not None:
                    row.restarts += 1
                    row.state = info.state
                    row.host_port = info.host_port
                    row.reason = f"restarted after exit code {row.exit_code}"
        session.flush()

    def _start_instance(self, session: Session, app: AppView, revision: Revision) -> None:
        release = app.releases.get(revision.release_id)
        if release is None:
            raise LookupError(f"release {revision.release_id} is gone")
        network = tenant_network(app.tenant_id)
        labels = {LABEL_MANAGED: "true", LABEL_INSTALLATION: self.runtime.installation}
        self.runtime.ensure_network(network, {**labels, LABEL_TENANT: app.tenant_id})
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
        )
        info = self.runtime.run(spec)
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

    def _remove(self, session: Session, plan: Plan) -> None:
        """Stop and remove in the background: a process that ignores SIGTERM holds its stop for
        the whole timeout, and that must not hold up the loop. Until the engine confirms, the
        container is left out of every observation, so no pass plans it twice."""
        for action in plan.actions:
            if not isinstance(action, RemoveInstance) or action.container_id in self._removing:
                continue
            self._removing.add(action.container_id)
            self.routed.discard(action.container_id)
            close_interval(session, action.container_id, self.clock())
            session.execute(delete(Instance).where(Instance.container_id == action.container_id))
            self._removals.submit(self._remove_container, action.container_id)
        session.flush()

    def _remove_container(self, container_id: str) -> None:
        try:
            self.runtime.remove(container_id, stop_timeout=STOP_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("removing %s failed (will retry): %s", container_id, exc)
        finally:
            self._removing.discard(container_id)
            self.trigger()

    def _list(self) -> list[ContainerInfo]:
        return [c for c in self.runtime.list() if c.id not in self._removing]

    def _record_waiting(self, session: Session, plan: Plan) -> None:
        for wait in plan.waiting:
            row = session.scalar(select(Instance).where(Instance.container_id == wait.container_id))
            if row is not None:
                row.reason = ("crash loop: " if row.restarts >= 3 else "") + wait.reason
        now = self.clock()
        for app_id, backoff in self._backoff.items():
            if backoff.until <= now:
                continue
            session.execute(
                delete(Instance).where(Instance.app_id == app_id, Instance.container_id.is_(None))
            )
            app = session.get(App, app_id)
            if app is not None:
                session.add(
                    Instance(
                        id=new_id(),
                        app_id=app_id,
                        tenant_id=app.tenant_id,
                        release_id=app.target_release_id or "",
                        state="pending",
                        reason=backoff.message,
                        seq=self._next_seq(),
                    )
                )

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

    def _may_try(self, app_id: str, now: float) -> bool:
        backoff = self._backoff.get(app_id)
        return backoff is None or now >= backoff.until

    def _fail(self, app_id: str, now: float, message: str) -> None:
        backoff = self._backoff.setdefault(app_id, _Backoff())
        backoff.failures += 1
        backoff.until = now + restart_backoff(backoff.failures - 1)
        backoff.message = message

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
