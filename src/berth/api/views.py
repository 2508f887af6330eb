"""Store rows → public schemas."""

from __future__ import annotations

import json
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.api.schemas import (
    AppPublic,
    CertPublic,
    DeploymentPublic,
    DomainChallenge,
    DomainPublic,
    InstanceCounts,
    InstancePublic,
    RateLimitPublic,
    RedirectPublic,
    ReleasePublic,
    TrafficPublic,
)
from berth.domain.traffic import TrafficControls
from berth.services import apps as svc
from berth.services import domains as dsvc
from berth.services import traffic as tsvc
from berth.services.certificates import Certificates
from berth.settings import Settings
from berth.store.tables import App, Deployment, Domain, Instance, Release


def release_public(release: Release, app: App) -> ReleasePublic:
    return ReleasePublic(
        id=release.id,
        version=release.version,
        image=release.image_ref,
        image_id=release.image_id,
        config_keys=sorted(json.loads(release.config_json)),
        description=release.description,
        memory_mb=release.memory_mb,
        cpus=release.cpus_milli / 1000,
        port=release.port,
        created_at=release.created_at,
        serving=release.id == app.serving_release_id,
    )


def deployment_public(session: Session, dep: Deployment | None) -> DeploymentPublic | None:
    if dep is None:
        return None
    release = session.get(Release, dep.release_id)
    return DeploymentPublic(
        id=dep.id,
        release_version=release.version if release else None,
        kind=dep.kind,
        status=dep.status,
        message=dep.message,
        started_at=dep.started_at,
        finished_at=dep.finished_at,
    )


def latest_deployment(session: Session, app: App) -> Deployment | None:
    stmt = (
        select(Deployment)
        .where(Deployment.app_id == app.id)
        .order_by(Deployment.started_at.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def app_public(session: Session, settings: Settings, app: App) -> AppPublic:
    custom = dsvc.list_domains(session, app)
    domains = [d.hostname for d in custom]
    # Only verified domains route, so only they make URLs.
    hosts = [f"{app.name}.{settings.base_domain}", *(d.hostname for d in custom if d.verified_at)]
    port = "" if settings.ingress_port == 80 else f":{settings.ingress_port}"
    instances = svc.list_instances(session, app)
    serving = svc.get_release(session, app.serving_release_id)
    target = svc.get_release(session, app.target_release_id)
    return AppPublic(
        id=app.id,
        name=app.name,
        memory_mb=app.memory_mb,
        cpus=app.cpus_milli / 1000,
        port=app.port,
        health_path=app.health_path,
        scale=app.scale,
        urls=[f"http://{h}{port}/" for h in hosts],
        domains=domains,
        serving_release=serving.version if serving else None,
        target_release=target.version if target else None,
        deployment=deployment_public(session, latest_deployment(session, app)),
        instances=InstanceCounts(
            desired=app.scale,
            running=sum(1 for i in instances if i.state == "running"),
            healthy=sum(1 for i in instances if i.healthy),
        ),
        created_at=app.created_at,
        state="deleting" if app.deleting_at is not None else "active",
        constraints=svc.app_constraints(app),
        traffic=traffic_public(tsvc.app_traffic(app)),
    )


def traffic_public(controls: TrafficControls) -> TrafficPublic:
    """The controls as a tenant sees them: user names only, never a password hash."""
    limit = controls.rate_limit
    return TrafficPublic(
        redirects=[
            RedirectPublic(source=r.source, target=r.target, code=r.code)
            for r in controls.redirects
        ],
        basic_auth_users=[u.user for u in controls.basic_auth],
        maintenance=controls.maintenance,
        maintenance_message=controls.maintenance_message,
        allow=list(controls.allow),
        deny=list(controls.deny),
        rate_limit=RateLimitPublic(per_second=limit.per_second, burst=limit.burst)
        if limit
        else None,
        https_redirect=controls.https_redirect,
    )


def instance_public(row: Instance, versions: dict[str, int]) -> InstancePublic:
    return InstancePublic(
        id=row.id,
        container_id=row.container_id[:12] if row.container_id else None,
        release_version=versions.get(row.release_id),
        state=_display_state(row),
        healthy=row.healthy,
        host_port=row.host_port,
        restarts=row.restarts,
        exit_code=row.exit_code,
        reason=row.reason,
        last_log=row.last_log if row.state != "running" or row.restarts else "",
        node=row.node,
        started_at=row.started_at,
    )


def _display_state(row: Instance) -> str:
    if row.state in ("exited", "dead") and row.restarts >= 3:
        return "crash-loop"
    if row.state in ("exited", "dead"):
        return "crashed"
    if row.state == "running" and not row.healthy:
        return "starting" if not row.reason.startswith("failing") else "unhealthy"
    return row.state


VerifiedBy = Literal["dns", "operator", "legacy"]
_VERIFIED_BY: dict[str, VerifiedBy] = {"dns": "dns", "operator": "operator", "legacy": "legacy"}


def domain_public(domain: Domain, certificates: Certificates | None = None) -> DomainPublic:
    cert = (
        CertPublic.model_validate(certificates.view(domain.hostname).to_json())
        if certificates is not None
        else None
    )
    if domain.verified_at is not None:
        by = _VERIFIED_BY.get(domain.verified_by, "operator")
        return DomainPublic(
            hostname=domain.hostname,
            created_at=domain.created_at,
            status="verified",
            verified_at=domain.verified_at,
            verified_by=by,
            challenge=None,
            certificate=cert,
        )
    record = dsvc.challenge_for(domain)
    return DomainPublic(
        hostname=domain.hostname,
        created_at=domain.created_at,
        status="pending",
        verified_at=None,
        verified_by=None,
        challenge=DomainChallenge(type="TXT", name=record.name, value=record.value),
        certificate=cert,
    )
