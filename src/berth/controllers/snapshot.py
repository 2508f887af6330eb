"""Read the store into the pure model (desired state) — the edge between SQL and the planner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.domain.model import DesiredApp, Revision
from berth.store.tables import App, Deployment, Domain, Release, Tenant


@dataclass(frozen=True)
class AppView:
    """An app as the controllers need it: desired state plus what routing and starting need."""

    id: str
    tenant_id: str
    name: str
    desired: DesiredApp
    domains: tuple[str, ...]
    releases: dict[str, Release] = field(default_factory=dict)
    suspended: bool = False
    constraints: tuple[str, ...] = ()  # placement rules over node labels, e.g. ("zone==b",)


def load_apps(session: Session) -> list[AppView]:
    """Every app that should exist. An app being deleted is not one: to the controllers it is
    gone (its instances are removed, its routes and domains dropped) until its rows go too."""
    apps = list(session.scalars(select(App).where(App.deleting_at.is_(None)).order_by(App.name)))
    deployments = {
        d.id: d
        for d in session.scalars(select(Deployment).where(Deployment.status == "in_progress"))
    }
    domains: dict[str, list[str]] = {}
    verified = select(Domain).where(Domain.verified_at.is_not(None))  # proof before routing
    for dom in session.scalars(verified.order_by(Domain.hostname)):
        domains.setdefault(dom.app_id, []).append(dom.hostname)
    release_ids = {a.target_release_id for a in apps} | {a.serving_release_id for a in apps}
    release_ids.discard(None)
    releases = {
        r.id: r for r in session.scalars(select(Release).where(Release.id.in_(release_ids)))
    }
    suspended = set(session.scalars(select(Tenant.id).where(Tenant.suspended_at.is_not(None))))
    views = []
    for app in apps:
        dep = deployments.get(app.deployment_id or "")
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
            deployment_id=dep.id if dep else None,
            deadline=dep.deadline if dep else None,
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
                constraints=tuple(json.loads(app.constraints_json or "[]")),
            )
        )
    return views


def release_env(release: Release) -> dict[str, str]:
    env: dict[str, str] = json.loads(release.config_json)
    env["PORT"] = str(release.port)
    return env
