"""Metrics routes: one app's series (tenant-owned) and the Prometheus exposition.

``GET /api/v1/apps/{name}/metrics`` answers the caller's own app (another tenant's is a 404,
like every app route). ``GET /metrics`` (at the root, where Prometheus looks) needs a bearer
token: an operator's admin-scoped token sees every app, any other token its tenant's apps.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.api.deps import CurrentPrincipal, SessionDep, SettingsDep
from berth.metrics import prometheus, series
from berth.metrics import store as mstore
from berth.metrics.model import AppBucket
from berth.services import apps as svc
from berth.settings import Settings
from berth.store.tables import App, InstanceMetricRow, Tenant

router = APIRouter(tags=["metrics"])
prometheus_router = APIRouter(tags=["metrics"])


@router.get("/apps/{name}/metrics")
def app_metrics(
    name: str,
    session: SessionDep,
    settings: SettingsDep,
    who: CurrentPrincipal,
    since: str = Query("1h", max_length=16, description="How far back: 90s, 30m, 1h, 2d"),
    step: str = Query("", max_length=16, description="Point spacing (default: about 60 points)"),
) -> dict[str, Any]:
    """Requests per second by status class, bytes and latency p50/p95/p99 per step, summed
    over every server's ingress; CPU, memory and restarts per instance."""
    app = svc.get_app(session, who.tenant_id, name)
    bucket = settings.metrics_bucket_seconds
    since_s = series.parse_duration(since, "since")
    step_s = series.parse_duration(step, "step") if step else _default_step(since_s, bucket)
    win = series.window(
        time.time(), since_s, step_s, bucket, settings.metrics_retention_hours * 3600
    )
    scope = mstore.Scope(app_id=app.id, tenant_id=who.tenant_id)
    rows = mstore.app_rows(session, scope, win.since, win.until)
    points, totals = series.app_series(
        [(r.bucket_start, mstore.bucket_of_row(r)) for r in rows], win
    )
    instances = series.instance_series(
        mstore.instance_rows(session, scope, win.since, win.until), win
    )
    return {
        "app": app.name,
        "since": win.since,
        "until": win.until,
        "step_seconds": win.step,
        "bucket_seconds": bucket,
        "totals": totals,
        "points": points,
        "instances": instances,
    }


def _default_step(since_s: int, bucket: int) -> int:
    # About 60 points, on whole buckets.
    return max(bucket, (since_s // 60 + bucket - 1) // bucket * bucket)


@prometheus_router.get("/metrics", response_class=Response)
def prometheus_metrics(
    session: SessionDep, settings: SettingsDep, who: CurrentPrincipal
) -> Response:
    scope = mstore.Scope() if who.is_operator else mstore.Scope(tenant_id=who.tenant_id)
    text = exposition_for(session, settings, scope, time.time())
    return Response(content=text, media_type=prometheus.CONTENT_TYPE)


def exposition_for(session: Session, settings: Settings, scope: mstore.Scope, now: float) -> str:
    """The last complete window (at least a minute of whole buckets) for ``scope``'s apps."""
    bucket = settings.metrics_bucket_seconds
    window = max(bucket, (60 + bucket - 1) // bucket * bucket)
    until = int(now) // bucket * bucket
    since = until - window
    names = _app_names(session, scope)
    traffic: dict[str, AppBucket] = defaultdict(AppBucket)
    for row in mstore.app_rows(session, scope, since, until):
        if row.app_id in names:
            traffic[row.app_id].merge(mstore.bucket_of_row(row))
    # Instances: each one's newest bucket in the window (the current one included).
    newest: dict[str, InstanceMetricRow] = {}
    for sample in mstore.instance_rows(session, scope, since, until + bucket):
        seen = newest.get(sample.instance_id)
        if sample.app_id in names and (seen is None or sample.bucket_start > seen.bucket_start):
            newest[sample.instance_id] = sample
    apps = [prometheus.AppTraffic(names[a][0], names[a][1], traffic[a]) for a in sorted(traffic)]
    instances = [
        prometheus.InstanceUsage(
            tenant=names[r.app_id][0],
            app=names[r.app_id][1],
            instance=r.instance_id,
            cpu_cores=r.cpu_usec_delta / max(1.0, min(bucket, r.sampled_at - r.bucket_start)) / 1e6,
            memory_bytes=r.memory_bytes,
            restarts=r.restarts,
        )
        for r in sorted(newest.values(), key=lambda r: r.instance_id)
    ]
    return prometheus.exposition(window, apps, instances)


def _app_names(session: Session, scope: mstore.Scope) -> dict[str, tuple[str, str]]:
    """app id -> (tenant name, app name) for the apps ``scope`` may see."""
    query = select(App.id, Tenant.name, App.name).join(Tenant, Tenant.id == App.tenant_id)
    if scope.tenant_id is not None:
        query = query.where(App.tenant_id == scope.tenant_id)
    return {app_id: (tenant, name) for app_id, tenant, name in session.execute(query)}
