"""An app's traffic controls: read, and replace as one validated value.

The controls are stored as one JSON value on the app row (``apps.traffic_json``). An update
locks the app, applies the change to what is stored, validates the whole result against the
app's own hostnames and writes it in one transaction: anything refused changes nothing, so the
ingress goes on serving the previous controls.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.domain import traffic
from berth.domain.traffic import TrafficChange, TrafficControls
from berth.services.apps import lock_app
from berth.settings import Settings
from berth.store.tables import App, Domain

log = logging.getLogger(__name__)


def app_traffic(app: App) -> TrafficControls:
    """The stored controls; a damaged value reads as the closed one (maintenance on)."""
    try:
        return traffic.from_json(app.traffic_json)
    except ValueError as exc:
        log.error("app %s: %s", app.id, exc)
        return traffic.UNREADABLE


def own_hostnames(session: Session, settings: Settings, app: App) -> frozenset[str]:
    """Where a redirect of the app may start or end: its platform hostname and its domains
    (verified or not: a redirect of a domain routes once the domain does)."""
    domains = session.scalars(select(Domain.hostname).where(Domain.app_id == app.id))
    return frozenset({f"{app.name}.{settings.base_domain}", *domains})


def update_traffic(
    session: Session, settings: Settings, tenant_id: str, name: str, change: TrafficChange
) -> tuple[App, bool]:
    """Apply ``change`` to the app's controls. Returns the app and whether anything changed.
    Raises InvalidInput (nothing written) when the result is not valid."""
    app = lock_app(session, tenant_id, name)
    try:
        current = app_traffic(app)
        wanted = traffic.validate(
            traffic.apply_change(current, change), own_hostnames(session, settings, app)
        )
    except BaseException:
        session.rollback()
        raise
    if wanted == current:
        session.rollback()
        return app, False
    app.traffic_json = traffic.to_json(wanted)
    session.commit()
    return app, True
