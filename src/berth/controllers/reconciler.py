"""The reconcile loop: observe, plan (pure), act. Whatever the workload backend.

One pass (``run_once``) is level-triggered: it reads desired state from the store and the
instances from the backend every time, never from a cache, then

1. **observes**: mirrors the instances into the store (the status ``ps`` shows, the readiness
   that routing used) and records their run intervals (metering, from the backend's times);
2. **plans**, purely: which process groups run at how many replicas and which deployments are
   finished (berth.domain.rollout), and the routes (berth.domain.routing);
3. **acts**: finishes deployments, routes away from instances about to go and waits for the
   reload, then hands the groups to the backend (``Workloads.apply``).

Passes run every few seconds and at once when something changes (an API write, a health
change, an engine or Swarm event: berth.controllers.engine_events). A pass that fails for one
app does not stop the others: the backend reports a group it could not start as pending, with
why, and retries it with backoff.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.lease import StaleLeader
from berth.controllers.metering import pass_watermark, record_intervals, record_watermark
from berth.controllers.snapshot import AppView, ReleaseView, load_apps, release_env
from berth.domain.drain import DrainRequest, plan_drains
from berth.domain.model import ObservedInstance, Revision
from berth.domain.rollout import FinishDeployment, RolloutPace, RolloutPlan, plan_rollout
from berth.domain.routing import RoutedApp, plan_routes
from berth.periodic import PeriodicLoop
from berth.proxy.model import Route
from berth.proxy.nginx import NginxManager
from berth.services.apps import purge_app
from berth.settings import Settings
from berth.store.tables import (
    App,
    Deployment,
    Instance,
    Meta,
    NodeDrain,
    PlanRow,
    Tenant,
    new_id,
)
from berth.workloads.local import release_command, tenant_network
from berth.workloads.protocol import ProcessGroup, WorkloadInstance, Workloads

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
# Instances the planner reasons about (a pending one is a promise, not an instance yet; a
# stopping or removed one is on its way out).
_PLANNED_STATES = frozenset({"starting", "running", "exited"})


class Health(Protocol):
    first_round: threading.Event

    def is_healthy(self, instance_id: str) -> bool: ...

    def state_of(self, instance_id: str) -> object | None: ...


@dataclass
class Reconciler:
    settings: Settings
    sessions: sessionmaker[Session]
    workloads: Workloads
    nginx: NginxManager
    health: Health
    clock: Callable[[], float] = time.time
    # A new instance seen running (one Berth did not start itself: a Swarm task): check it now.
    on_running: Callable[[WorkloadInstance], object] = lambda inst: None
    # Called in each transaction before it commits: raises when this server no longer holds
    # the controllers' lease (a stale leader's writes are refused; berth.controllers.lease).
    fence: Callable[[Session], None] = lambda session: None
    # Checked (locally, cheaply) right before the pass acts on the engine or nginx: a leader
    # whose term ran out while it was paused does not act on what it read before.
    may_act: Callable[[], bool] = lambda: True
    # Other servers' ingresses route from the store, polling (berth.controllers.ingress_sync):
    # an instance counts as routed for a rollout only once they have had time to see it.
    ingress_settle_seconds: float = 0.0
    # Swarm's availability of a node, by name (a drain hands the node to Swarm's drain last).
    set_node_availability: Callable[[str, str], object] = lambda node, availability: None
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
        self._routes_hash: str | None = None
        self._routed_at: dict[str, float] = {}  # instance id -> when this server first routed it
        self._routes: tuple[Route, ...] | None = None  # as last applied
        self._generation = 0
        self._tls_version = 0  # the certificates' version the live config carries
        self._seq = int(self.clock() * 1000)
        # The pass in progress: what the backend's before_stop hook routes from.
        self._pass_session: Session | None = None
        self._pass_apps: list[AppView] = []
        self._pass_instances: list[WorkloadInstance] = []
        self._leaving: frozenset[str] = frozenset()
        self._observed_memo: dict[str, tuple[WorkloadInstance, bool, bool, ObservedInstance]] = {}
        self._groups_memo: dict[tuple[object, ...], ProcessGroup] = {}
        if hasattr(self.workloads, "before_stop"):
            self.workloads.before_stop = self._unroute  # type: ignore[attr-defined]

    # -- loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self.workloads.close()

    def trigger(self) -> None:
        self._loop.wake()

    @property
    def last_error(self) -> str:
        return self._loop.last_error

    # -- one pass ---------------------------------------------------------------------------

    def run_once(self) -> RolloutPlan:
        with self._lock:
            now = self.clock()
            with self.sessions() as session:
                apps = load_apps(session)
                # observe: the nodes first, so that the instances report at least what the
                # nodes had reported by then (billing's watermark, committed with the intervals)
                nodes = self.workloads.nodes()
                instances = self.workloads.instances()
                self._record_observed(session, instances)
                record_intervals(session, instances, now)
                mark = pass_watermark(self.settings, self.workloads.kind, nodes, now)
                record_watermark(session, mark)
                observed = self._observe_all(instances)
                # plan
                pace = RolloutPace(
                    self.settings.rollout_parallelism, self.settings.rollout_delay_seconds
                )
                rollout = plan_rollout([a.desired for a in apps], observed, self.clock(), pace)
                # act: the store first (what is decided is recorded before anything can fail)
                self._finish_deployments(session, rollout.finished)
                self.fence(session)
                session.commit()
                if rollout.finished:
                    apps = load_apps(session)  # finished deployments changed serving/target
                groups = self._groups(session, apps, rollout)
                wanted = {(g.app_id, g.revision) for g in groups}
                leaving = frozenset(i.id for i in instances if (i.app_id, i.revision) not in wanted)
                groups, drained_away, evict = self._drains(session, groups, instances, now)
                leaving |= drained_away
                self._pass_session, self._pass_apps = session, apps
                self._pass_instances, self._leaving = instances, leaving
                if not self.may_act():
                    raise StaleLeader("fenced: this server's term ended; it does not act")
                try:
                    routed_before = set(self.routed)
                    self._sync_routes(session, apps, instances, leaving)
                    # Routed away (the reload is live): now Swarm may stop the node's tasks.
                    for node in evict:
                        self.set_node_availability(node, "drain")
                    written = getattr(self.workloads, "writes", None)
                    self.workloads.apply(groups)
                    # What the apply started may already pass its check: route it now. A backend
                    # that counts its writes and wrote nothing started nothing: what was just
                    # observed still holds (30,000 instances are not listed twice a pass).
                    unchanged = written is not None and written == getattr(
                        self.workloads, "writes", 0
                    )
                    if evict or not unchanged:
                        after = self.workloads.instances()
                        self._sync_routes(session, apps, after, self._leaving)
                    else:
                        after = instances
                finally:
                    self._pass_session = None
                if self.routed - routed_before:
                    self.trigger()  # newly routed: finish the rollout now, not next interval
                self._purge_deleted_apps(session, after)
                self.fence(session)
                session.commit()
            self.passes += 1
            return rollout

    def _observe_all(self, instances: list[WorkloadInstance]) -> list[ObservedInstance]:
        """The planner's view of the instances it reasons about. An instance the backend
        reports as the same (immutable) object, with the same health and routing, gives the same
        view: most of 30,000 do not change between two passes."""
        now = self.clock()
        settle = self.ingress_settle_seconds
        routed, routed_at, is_healthy = self.routed, self._routed_at, self.health.is_healthy
        last = self._observed_memo
        memo: dict[str, tuple[WorkloadInstance, bool, bool, ObservedInstance]] = {}
        out = []
        for inst in instances:
            if inst.state not in _PLANNED_STATES:
                continue
            healthy = is_healthy(inst.id)
            # Routed here, and long enough for every other server's ingress to have it too.
            is_routed = inst.id in routed and now - routed_at.get(inst.id, 0.0) >= settle
            known = last.get(inst.id)
            if (
                known is not None
                and known[0] is inst
                and known[1] == healthy
                and known[2] == is_routed
            ):
                view = known[3]
            else:
                view = _observed(inst, healthy, is_routed)
            memo[inst.id] = (inst, healthy, is_routed, view)
            out.append(view)
        self._observed_memo = memo
        return out

    def _unroute(self, instance_ids: set[str]) -> None:
        """The backend is about to stop these: take them out of the ingress first."""
        session = self._pass_session
        if session is None or not instance_ids & self.routed:
            return
        self._leaving = self._leaving | frozenset(instance_ids)
        self._sync_routes(session, self._pass_apps, self._pass_instances, self._leaving)

    # -- observing --------------------------------------------------------------------------

    def _record_observed(self, session: Session, instances: list[WorkloadInstance]) -> None:
        """Mirror what the backend reports into instance rows (the status ``ps`` shows).

        Rows are read as plain columns and compared first: only those whose status changed are
        loaded and written (a pass over 30,000 unchanged instances writes nothing)."""
        pending_rows: dict[str, Instance] = {}
        for r in session.scalars(select(Instance).where(Instance.container_id.is_(None))):
            if r.app_id in pending_rows:
                session.delete(r)
            else:
                pending_rows[r.app_id] = r
        columns = [getattr(Instance, name) for name in _MIRRORED]
        mirrored = select(Instance.id, Instance.container_id, Instance.finished_at, *columns)
        session.flush()
        # Through the session's connection (same transaction) in one fetch: plain rows, 30,000
        # a pass, without the ORM's per-row result processing.
        rows = session.connection().execute(mirrored.where(Instance.container_id.is_not(None)))
        # container id -> (row id, finished_at, the mirrored columns as a tuple)
        shown = {row[1]: (row[0], row[2], row[3:]) for row in rows.all()}
        superseded = _superseded(instances)
        stale: dict[str, WorkloadInstance] = {}  # row id -> what it must show now
        for inst in instances:
            if inst.state == "removed" or inst.id in superseded:
                continue
            if inst.state == "pending":
                self._record_pending(session, pending_rows, inst)
                continue
            known = shown.pop(inst.id, None)
            if known is None:
                self._update_row(self._adopt(session, inst), inst)
            elif known[2] != self._shown(inst) or _new_exit(inst, known[1]):
                stale[known[0]] = inst
        for row in _rows_by_id(session, list(stale)):
            self._update_row(row, stale[row.id])
        for gone in _rows_by_id(session, [row_id for row_id, _, _ in shown.values()]):
            session.delete(gone)
        for gone in pending_rows.values():
            session.delete(gone)
        session.flush()

    def _record_pending(
        self, session: Session, pending_rows: dict[str, Instance], inst: WorkloadInstance
    ) -> None:
        row = pending_rows.pop(inst.app_id, None)
        rev = Revision.parse(inst.revision or ":0")
        if row is None:
            row = Instance(
                id=new_id(),
                app_id=inst.app_id,
                tenant_id=inst.tenant_id,
                release_id=rev.release_id,
                generation=rev.generation,
                node=inst.node,
                state="pending",
                seq=self._next_seq(),
            )
            session.add(row)
        row.reason = inst.reason
        row.release_id = rev.release_id
        row.state = "pending"

    def _adopt(self, session: Session, inst: WorkloadInstance) -> Instance:
        rev = Revision.parse(inst.revision or ":0")
        row = Instance(
            id=new_id(),
            app_id=inst.app_id,
            tenant_id=inst.tenant_id,
            release_id=rev.release_id,
            generation=rev.generation,
            node=inst.node,
            container_id=inst.id,
            seq=inst.seq or self._next_seq(),
        )
        session.add(row)
        return row

    def _update_row(self, row: Instance, inst: WorkloadInstance) -> None:
        if _new_exit(inst, row.finished_at):
            # A new exit: keep its last words.
            row.exit_code = inst.exit_code
            row.finished_at = inst.finished_at
            row.last_log = self._tail_logs(inst.id)
        if inst.state == "running" and row.state != "running":
            self.on_running(inst)
        for name, value in zip(_MIRRORED, self._shown(inst), strict=True):
            setattr(row, name, value)

    def _shown(self, inst: WorkloadInstance) -> tuple[object, ...]:
        """What an instance's row shows, in the order of _MIRRORED."""
        health = self.health.state_of(inst.id)
        healthy = bool(getattr(health, "healthy", False))
        if inst.state == "running":
            if health is None or not getattr(health, "last_checked", 0):
                reason = "waiting for the first health check"
            elif not healthy:
                reason = f"failing health check: {getattr(health, 'last_error', '')}"
            else:
                reason = ""
        else:
            reason = inst.reason
        return (
            inst.state,
            inst.node,
            inst.port,
            inst.address,
            inst.started_at,
            inst.restarts,
            healthy and inst.state == "running",
            reason,
        )

    def _tail_logs(self, instance_id: str) -> str:
        try:
            text = self.workloads.logs(instance_id, tail=LOG_TAIL_LINES)
        except Exception:
            return ""
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    # -- acting -----------------------------------------------------------------------------

    def _finish_deployments(self, session: Session, finished: tuple[FinishDeployment, ...]) -> None:
        for action in finished:
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

    def _groups(
        self, session: Session, apps: list[AppView], rollout: RolloutPlan
    ) -> list[ProcessGroup]:
        """The process groups the rollout asks for, with everything a backend needs."""
        by_id = {a.id: a for a in apps}
        disks = self._disk_mb_by_tenant(session)
        groups = []
        last = self._groups_memo
        memo: dict[tuple[object, ...], ProcessGroup] = {}
        for target in rollout.groups:
            app = by_id.get(target.app_id)
            if app is None:
                continue
            revision = Revision.parse(target.revision)
            release = app.releases.get(revision.release_id)
            if release is None:
                log.warning("app %s: release %s is gone", app.name, revision.release_id)
                continue
            disk_mb = disks.get(app.tenant_id) or self.settings.instance_disk_mb
            constraints = app.constraints_of(target.revision)
            # Everything the group is made of (a release row never changes): the same facts
            # give the same group, without parsing its env and command again.
            key = (
                app.id,
                app.tenant_id,
                app.name,
                target.revision,
                target.replicas,
                release,
                disk_mb,
                constraints,
                self.settings.pids_limit,
            )
            group = last.get(key)
            if group is None:
                group = self._group(app, target.revision, target.replicas, release, disk_mb)
            memo[key] = group
            groups.append(group)
        self._groups_memo = memo
        return groups

    def _group(
        self, app: AppView, revision: str, replicas: int, release: ReleaseView, disk_mb: int
    ) -> ProcessGroup:
        return ProcessGroup(
            tenant_id=app.tenant_id,
            app_id=app.id,
            app_name=app.name,
            revision=revision,
            release_id=release.id,
            release_version=release.version,
            # Pinned by digest in the platform registry when every node must pull it.
            image=release.pinned_image or release.image_id,
            replicas=replicas,
            memory_mb=release.memory_mb,
            cpus_milli=release.cpus_milli,
            pids_limit=self.settings.pids_limit,
            disk_mb=disk_mb,
            network=tenant_network(app.tenant_id),
            port=release.port,
            env=release_env(release),
            command=release_command(release.command_json),
            health_path=release.health_path or None,
            constraints=app.constraints_of(revision),
        )

    def _disk_mb_by_tenant(self, session: Session) -> dict[str, int]:
        """Each tenant's plan's tmpfs size where the plan sets one (else the setting applies)."""
        rows = session.execute(
            select(Tenant.id, PlanRow.instance_disk_mb)
            .join(PlanRow, PlanRow.id == Tenant.plan_id)
            .where(PlanRow.instance_disk_mb.is_not(None))
        )
        return {tenant_id: disk for tenant_id, disk in rows if disk is not None}

    # -- drains -----------------------------------------------------------------------------

    def _drains(
        self,
        session: Session,
        groups: list[ProcessGroup],
        instances: list[WorkloadInstance],
        now: float,
    ) -> tuple[list[ProcessGroup], frozenset[str], tuple[str, ...]]:
        """Nodes being drained, start-first (berth.domain.drain): the groups with extra
        replicas elsewhere, the node instances to route away now, the nodes to evict."""
        active = NodeDrain.status.in_(("draining", "evicting"))
        rows = list(session.scalars(select(NodeDrain).where(active)))
        if not rows:
            return groups, frozenset(), ()
        requests = [DrainRequest(r.node_name, r.deadline) for r in rows]
        plan = plan_drains(
            requests, {g.key: g.replicas for g in groups}, instances, frozenset(self.routed), now
        )
        by_node = {p.node: p for p in plan.progress}
        for row in rows:
            progress = by_node.get(row.node_name)
            if progress is None:
                continue
            row.message = progress.message
            if progress.status != row.status:
                log.info("drain of %s: %s (%s)", row.node_name, progress.status, progress.message)
            row.status = progress.status
            if progress.status in ("drained", "timed_out"):
                row.finished_at = now
        session.flush()
        sized = [replace(g, replicas=plan.replicas.get(g.key, g.replicas)) for g in groups]
        return sized, plan.leaving, plan.evict

    # -- routing ----------------------------------------------------------------------------

    def _sync_routes(
        self,
        session: Session,
        apps: list[AppView],
        instances: list[WorkloadInstance],
        leaving: frozenset[str],
    ) -> None:
        """Route every running, healthy instance that is not about to go; reload on change."""
        routed_apps = [
            RoutedApp(
                app.id,
                app.name,
                app.tenant_id,
                (f"{app.name}.{self.settings.base_domain}", *app.domains),
                frozenset(r.key for r in (app.desired.target, app.desired.serving) if r),
                app.suspended,
                app.traffic,
                app.max_body_mb
                if app.max_body_mb is not None
                else self.settings.request_body_max_mb,
            )
            for app in apps
        ]
        routes, routed = plan_routes(routed_apps, instances, self.health.is_healthy, leaving)
        self._apply_routes(session, routes)
        if routed == self.routed:
            return  # the same instances: when each was first routed holds
        now = self.clock()
        self._routed_at = {i: self._routed_at.get(i, now) for i in routed}
        self.routed = set(routed)

    def _apply_routes(self, session: Session, routes: tuple[Route, ...]) -> None:
        # Unchanged routes still need a live nginx: apply() restarts one that died. Comparing
        # with the last routes first spares the digest (the repr of 10,000 routes) each pass.
        tls_version = self.nginx.tls_version()
        if routes == self._routes and tls_version == self._tls_version and self.nginx.is_running():
            return
        digest = f"{routes_digest(routes)}.{tls_version}"
        if digest == self._routes_hash and self.nginx.is_running():
            self._routes, self._tls_version = routes, tls_version
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
        self._routes, self._tls_version = routes, tls_version
        self._generation = generation

    # -- app deletion -----------------------------------------------------------------------

    def _purge_deleted_apps(self, session: Session, after: list[WorkloadInstance]) -> None:
        """An app being deleted (load_apps leaves it out, so its groups go) loses its rows once
        the backend has none of its instances left, asked after this pass's apply. From then on
        its name is free."""
        deleting = list(session.scalars(select(App).where(App.deleting_at.is_not(None))))
        if not deleting:
            return
        left = {i.app_id for i in after if i.state != "removed"}
        for app in deleting:
            if app.id not in left:
                purge_app(session, app)
                log.info("app %s is deleted: none of its instances is left", app.name)

    # -- helpers ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


# The columns of an instance row that mirror the backend's report (see Reconciler._shown).
_MIRRORED = ("state", "node", "host_port", "address", "started_at", "restarts", "healthy", "reason")
_IN_CHUNK = 500  # ids per IN (...): well under SQLite's limit on bound parameters


def routes_digest(routes: tuple[Route, ...]) -> str:
    """A stable digest of the routes (stored with the proxy generation). Built from the fields
    as text: the repr of 10,000 dataclasses costs several times as much."""
    return hashlib.sha256(b"".join([_digest_line(r) for r in routes])).hexdigest()


# A route is an immutable value: its line is made once (a changed plan keeps most of them).
@functools.lru_cache(maxsize=1 << 15)
def _digest_line(r: Route) -> bytes:
    upstreams = ",".join(f"{u.host}:{u.port}" for u in r.upstreams)
    return (
        f"{r.app_id}\0{r.app_name}\0{r.tenant_id}\0{' '.join(r.hostnames)}\0{r.state}"
        # The controls are normalised values (sorted, validated): their repr is stable.
        f"\0{upstreams}\0{r.controls!r}\0{r.max_body_mb}\n".encode()
    )


def _observed(inst: WorkloadInstance, healthy: bool, routed: bool) -> ObservedInstance:
    return ObservedInstance(
        container_id=inst.id,
        app_id=inst.app_id,
        revision=inst.revision,
        state=inst.state,
        healthy=healthy,
        routed=routed,
        restarts=inst.restarts,
        exit_code=inst.exit_code,
        finished_at=inst.finished_at,
        created_seq=inst.seq,
        started_at=inst.started_at,
    )


def _new_exit(inst: WorkloadInstance, recorded_finish: float | None) -> bool:
    return bool(inst.state == "exited" and inst.finished_at and inst.finished_at != recorded_finish)


def _rows_by_id(session: Session, ids: list[str]) -> list[Instance]:
    rows: list[Instance] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        rows.extend(session.scalars(select(Instance).where(Instance.id.in_(chunk))))
    return rows


def _superseded(instances: list[WorkloadInstance]) -> set[str]:
    """Exited instances whose slot has a newer instance (a backend's history of replaced tasks:
    billed, not shown). The newer one carries the count of exits in a row."""
    ended = {i.slot for i in instances if i.state == "exited" and i.slot}
    if not ended:
        return set()  # most passes: nothing exited
    newest: dict[str, int] = {}
    for inst in instances:
        if inst.slot in ended and inst.state != "removed":
            newest[inst.slot] = max(newest.get(inst.slot, inst.seq), inst.seq)
    return {
        i.id
        for i in instances
        if i.state == "exited" and i.slot and newest.get(i.slot, i.seq) > i.seq
    }


def healthy_rows(sessions: sessionmaker[Session]) -> dict[str, float | None]:
    """The instances the store last recorded as running and healthy: their start times."""
    with sessions() as session:
        rows = session.execute(
            select(Instance.container_id, Instance.started_at).where(
                Instance.healthy.is_(True), Instance.container_id.is_not(None)
            )
        )
        return {cid: started for cid, started in rows if cid}


def instance_seed(sessions: sessionmaker[Session]) -> Callable[[], dict[str, tuple[int, int]]]:
    """What a backend may need to remember across server restarts: each instance's restarts in
    a row and creation order, as the store last recorded them."""

    def read() -> dict[str, tuple[int, int]]:
        with sessions() as session:
            rows = session.execute(
                select(Instance.container_id, Instance.restarts, Instance.seq).where(
                    Instance.container_id.is_not(None)
                )
            )
            return {cid: (restarts, seq) for cid, restarts, seq in rows if cid}

    return read
