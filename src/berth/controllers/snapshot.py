"""Read the store into the pure model (desired state) — the edge between SQL and the planner."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.domain import traffic
from berth.domain.model import DesiredApp, Revision
from berth.domain.traffic import TrafficControls
from berth.store.tables import App, Deployment, Domain, PlanRow, Release, Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReleaseView:
    """What the controllers read of a release row (immutable once written)."""

    id: str
    version: int
    image_id: str
    pinned_image: str | None
    config_json: str
    command_json: str | None
    memory_mb: int
    cpus_milli: int
    port: int
    health_path: str | None


_RELEASE_COLUMNS = [getattr(Release, f.name) for f in fields(ReleaseView)]


@dataclass(frozen=True)
class AppView:
    """An app as the controllers need it: desired state plus what routing and starting need."""

    id: str
    tenant_id: str
    name: str
    desired: DesiredApp
    domains: tuple[str, ...]
    releases: dict[str, ReleaseView] = field(default_factory=dict)
    suspended: bool = False
    constraints: tuple[str, ...] = ()  # placement rules over node labels, e.g. ("zone==b",)
    # Revision key -> the constraints its deployment fixed; a revision without one runs under
    # ``constraints``. A change of constraints is a new revision: the old keeps its own, so
    # Swarm never moves the serving revision's tasks in place (stop-first).
    revision_constraints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    traffic: TrafficControls | None = None  # redirects, basic auth, ... (None: none)
    # The tenant's plan's request body limit at the ingress, MiB (None: the setting).
    max_body_mb: int | None = None

    def constraints_of(self, revision: str) -> tuple[str, ...]:
        return self.revision_constraints.get(revision, self.constraints)


class _AppRow(NamedTuple):
    id: str
    tenant_id: str
    name: str
    scale: int
    target_release_id: str | None
    target_generation: int
    serving_release_id: str | None
    serving_generation: int
    deployment_id: str | None
    constraints_json: str | None
    traffic_json: str | None


def load_apps(session: Session) -> list[AppView]:
    """Every app that should exist. An app being deleted is not one: to the controllers it is
    gone (its instances are removed, its routes and domains dropped) until its rows go too.

    Read as plain columns, not ORM objects: a pass reads 10,000 apps, their releases and
    domains every time."""
    # Plain tuples: a Row's attribute access costs several times a NamedTuple's.
    apps = [
        _AppRow(*row)
        for row in session.execute(
            select(*(getattr(App, name) for name in _AppRow._fields))
            .where(App.deleting_at.is_(None))
            .order_by(App.name)
        )
    ]
    deployments = {
        dep_id: deadline
        for dep_id, deadline in session.execute(
            select(Deployment.id, Deployment.deadline).where(Deployment.status == "in_progress")
        )
    }
    domains: dict[str, list[str]] = {}
    verified = select(Domain.app_id, Domain.hostname).where(Domain.verified_at.is_not(None))
    for app_id, hostname in session.execute(verified.order_by(Domain.hostname)):  # proof first
        domains.setdefault(app_id, []).append(hostname)
    release_ids = {a.target_release_id for a in apps} | {a.serving_release_id for a in apps}
    release_ids.discard(None)
    releases = _releases(session, [r for r in release_ids if r])
    suspended = set(session.scalars(select(Tenant.id).where(Tenant.suspended_at.is_not(None))))
    placed = _revision_constraints(session, [r for r in release_ids if r])
    body_mb = _body_mb_by_tenant(session)
    views = []
    for app in apps:
        deadline = deployments.get(app.deployment_id or "")
        has_deployment = app.deployment_id in deployments
        target = (
            Revision(app.target_release_id, app.target_generation)
            if app.target_release_id
            else None
        )
        serving = (
            Revision(app.serving_release_id, app.serving_generation)
            if app.serving_release_id
            else None
        )
        # A suspended tenant's apps run nothing; their own scale is kept for the resume.
        desired = DesiredApp(
            app_id=app.id,
            scale=0 if app.tenant_id in suspended else app.scale,
            target=target,
            serving=serving,
            deployment_id=app.deployment_id if has_deployment else None,
            deadline=deadline if has_deployment else None,
        )
        mine = {
            rid: releases[rid]
            for rid in (app.target_release_id, app.serving_release_id)
            if rid and rid in releases
        }
        views.append(
            AppView(
                app.id,
                app.tenant_id,
                app.name,
                desired,
                tuple(domains.get(app.id, [])),
                mine,
                suspended=app.tenant_id in suspended,
                constraints=_constraints(app.constraints_json),
                revision_constraints=placed.get(app.id, {}),
                traffic=_traffic(app.traffic_json),
                max_body_mb=body_mb.get(app.tenant_id),
            )
        )
    return views


def _body_mb_by_tenant(session: Session) -> dict[str, int]:
    """Each tenant's plan's request body limit where the plan sets one (else the setting)."""
    rows = session.execute(
        select(Tenant.id, PlanRow.max_request_body_mb)
        .join(PlanRow, PlanRow.id == Tenant.plan_id)
        .where(PlanRow.max_request_body_mb.is_not(None))
    )
    return {tenant_id: mb for tenant_id, mb in rows if mb is not None}


_IN_CHUNK = 500  # ids per IN (...): well under SQLite's limit on bound parameters


def _releases(session: Session, ids: list[str]) -> dict[str, ReleaseView]:
    out: dict[str, ReleaseView] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for row in session.execute(select(*_RELEASE_COLUMNS).where(Release.id.in_(chunk))):
            out[row[0]] = ReleaseView(*row)
    return out


def _revision_constraints(
    session: Session, release_ids: list[str]
) -> dict[str, dict[str, tuple[str, ...]]]:
    """App id -> revision key -> the constraints of that revision's newest deployment, for the
    releases that run (targets and serving ones)."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    rows: list[Any] = []
    for start in range(0, len(release_ids), _IN_CHUNK):
        chunk = release_ids[start : start + _IN_CHUNK]
        rows += session.execute(
            select(
                Deployment.app_id,
                Deployment.release_id,
                Deployment.generation,
                Deployment.constraints_json,
                Deployment.started_at,
            ).where(Deployment.release_id.in_(chunk), Deployment.constraints_json.is_not(None))
        ).all()
    for app_id, release_id, generation, text, _ in sorted(rows, key=lambda r: r[4]):
        key = Revision(release_id, generation).key  # oldest first: the newest wins
        out.setdefault(app_id, {})[key] = _constraints(text)
    return out


@functools.lru_cache(maxsize=1024)
def _constraints(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text or "[]"))


@functools.lru_cache(maxsize=4096)
def _traffic(text: str | None) -> TrafficControls | None:
    if not text or text == "{}":
        return None
    try:
        return traffic.from_json(text)
    except ValueError as exc:
        # Written validated, so this is a damaged row: serve it closed, never open.
        log.error("%s; the app answers its maintenance page", exc)
        return traffic.UNREADABLE


def release_env(release: Release | ReleaseView) -> dict[str, str]:
    env: dict[str, str] = json.loads(release.config_json)
    env["PORT"] = str(release.port)
    return env
