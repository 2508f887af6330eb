"""A follower's ingress: route from the store what the leader's reconciler recorded.

Every Berth server runs an nginx (several ingress nodes behind DNS or a load balancer), and all
of them must send an app's traffic to the same instances. The leader's reconciler routes from
what its backend reports; a follower has no backend loop, so once a second it renders the routes
from the instance rows the leader writes (address, host_port, state, healthy) with the same pure
planner (berth.domain.routing.plan_routes) and applies them to its own nginx. It writes nothing
to the store.

A follower lags the leader by up to one interval: an instance the leader is about to stop is
unrouted on the leader's nginx first, on a follower once its row says so.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.snapshot import AppView, load_apps
from berth.domain.model import Revision
from berth.domain.routing import RoutedApp, plan_routes
from berth.periodic import PeriodicLoop
from berth.proxy.model import Route
from berth.proxy.nginx import NginxManager
from berth.settings import Settings
from berth.store.tables import Instance, Meta
from berth.workloads.protocol import InstanceState, WorkloadInstance

log = logging.getLogger(__name__)
SYNC_INTERVAL_SECONDS = 1.0


def routed_apps(
    apps: Iterable[AppView], base_domain: str, body_mb: int | None = None
) -> list[RoutedApp]:
    """What routing needs of each app: its hostnames and the revisions that may serve.
    ``body_mb``: the request body limit of apps whose plan sets none (the setting)."""
    return [
        RoutedApp(
            app.id,
            app.name,
            app.tenant_id,
            (f"{app.name}.{base_domain}", *app.domains),
            frozenset(r.key for r in (app.desired.target, app.desired.serving) if r),
            app.suspended,
            app.traffic,
            app.max_body_mb if app.max_body_mb is not None else body_mb,
        )
        for app in apps
    ]


def row_instance(row: Instance) -> WorkloadInstance | None:
    """An instance row as the planner reads an instance (None: never reached by the ingress)."""
    if not row.container_id:
        return None
    revision = Revision(row.release_id, row.generation).key
    return WorkloadInstance(
        id=row.container_id,
        group=f"{row.app_id}/web/{revision}",
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        revision=revision,
        state=cast(InstanceState, row.state if row.state in _STATES else "pending"),
        node=row.node,
        address=row.address,
        port=row.host_port,
    )


_STATES = frozenset({"pending", "starting", "running", "stopping", "exited", "removed"})


def plan_from_rows(
    apps: Sequence[AppView],
    rows: Iterable[Instance],
    base_domain: str,
    body_mb: int | None = None,
) -> tuple[Route, ...]:
    """The routes the leader's rows call for: pure. A row routes while the leader recorded it
    running and healthy."""
    instances = [i for i in (row_instance(r) for r in rows) if i is not None]
    healthy = {r.container_id for r in rows if r.healthy and r.container_id}
    routed = routed_apps(apps, base_domain, body_mb)
    routes, _ = plan_routes(routed, instances, healthy.__contains__)
    return routes


@dataclass
class IngressSync:
    settings: Settings
    sessions: sessionmaker[Session]
    nginx: NginxManager
    interval: float = SYNC_INTERVAL_SECONDS

    def __post_init__(self) -> None:
        self._loop: PeriodicLoop | None = None
        self._digest: str | None = None
        self._generation = 0
        self.passes = 0

    def start(self) -> None:
        """Start syncing (a new loop each time: a follower may lead and follow again)."""
        if self._loop is not None:
            return
        self._digest = None  # the leader may have changed nginx meanwhile: apply again
        self._loop = PeriodicLoop("berth-ingress-sync", self.run_once, self.interval)
        self._loop.start()

    def stop(self) -> None:
        """Stop, and wait for a sync in flight: from now on another writer may own nginx."""
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def last_error(self) -> str:
        return self._loop.last_error if self._loop is not None else ""

    def run_once(self) -> bool:
        """One sync; True when nginx's config changed."""
        with self.sessions() as session:
            apps = load_apps(session)
            rows = list(session.scalars(select(Instance)))
            stored = session.get(Meta, "proxy_generation")
        routes = plan_from_rows(
            apps, rows, self.settings.base_domain, self.settings.request_body_max_mb
        )
        # The certificates' version too: a follower serves the leader's new one within a pass.
        digest = hashlib.sha256(repr(routes).encode()).hexdigest() + f".{self.nginx.tls_version()}"
        self.passes += 1
        if digest == self._digest and self.nginx.is_running():
            return False
        # A generation only grows on this nginx; the leader's when it is ahead (the same
        # number for the same routes on both, as a rule).
        leader_generation, _ = _parse_generation(stored)
        generation = max(leader_generation, self._generation + (digest != self._digest))
        changed = self.nginx.apply(self.nginx.config(routes, generation))
        if changed:
            self.nginx.wait_for_generation(generation, timeout=10)
            log.info("ingress: %d routes from the store (generation %d)", len(routes), generation)
        self._digest, self._generation = digest, generation
        return changed


def _parse_generation(stored: Meta | None) -> tuple[int, str]:
    if stored is None:
        return 0, ""
    gen_text, _, digest = stored.value.partition(":")
    try:
        return int(gen_text), digest
    except ValueError:
        return 0, ""
