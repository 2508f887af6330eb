"""App routes. Thin: parse, call a service with the caller's tenant, shape the answer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select

from berth.api import views
from berth.api.deps import CurrentPrincipal, PlatformDep, SessionDep, SettingsDep, Writer
from berth.api.schemas import (
    AppCreate,
    AppPublic,
    AppUpdate,
    AppUpdated,
    ConfigChange,
    ConfigPublic,
    DeployImage,
    DeploymentPublic,
    DeployResult,
    DomainCreate,
    DomainPublic,
    InstancePublic,
    ReleasePublic,
    RollbackRequest,
    ScaleRequest,
    TrafficUpdate,
)
from berth.builds import image_policy
from berth.builds.image_stores import RuntimeImageStore
from berth.domain import placement, traffic
from berth.errors import EngineError, EngineUnavailable, RuntimeFailure
from berth.runtime.logbuffer import LineBuffer
from berth.services import apps as svc
from berth.services import domains as dsvc
from berth.services import traffic as tsvc
from berth.services.dns_txt import DnsTxtResolver
from berth.services.domains import TxtResolver
from berth.services.ratelimit import RateLimited, Rule, SlidingWindow
from berth.store.tables import Release

router = APIRouter(prefix="/apps", tags=["apps"])


@router.post("", status_code=201)
def create_app(
    body: AppCreate, session: SessionDep, settings: SettingsDep, who: Writer
) -> AppPublic:
    spec = svc.AppSpec(body.name, body.memory, body.cpus, body.port, body.health_path)
    app = svc.create_app(session, settings, who.tenant_id, spec)
    return views.app_public(session, settings, app)


@router.get("")
def list_apps(session: SessionDep, settings: SettingsDep, who: CurrentPrincipal) -> list[AppPublic]:
    return [views.app_public(session, settings, a) for a in svc.list_apps(session, who.tenant_id)]


@router.get("/{name}")
def get_app(
    name: str, session: SessionDep, settings: SettingsDep, who: CurrentPrincipal
) -> AppPublic:
    return views.app_public(session, settings, svc.get_app(session, who.tenant_id, name))


@router.patch("/{name}")
def update_app(
    name: str, body: AppUpdate, session: SessionDep, platform: PlatformDep, who: Writer
) -> AppUpdated:
    """Change an app's settings: its placement constraints and its traffic controls. A change
    of constraints is a new revision rolled out start-first (``deployment``); the same ones
    again change nothing. Traffic controls change what the ingress serves within a routing
    pass, with no rollout; refused ones (422, a precise code) change nothing."""
    app, dep = svc.get_app(session, who.tenant_id, name), None
    if body.constraints is not None:
        placement.normalized(body.constraints)  # refused before the traffic controls change
    if body.traffic is not None:
        app, changed = tsvc.update_traffic(
            session, platform.settings, who.tenant_id, name, _traffic_change(body.traffic)
        )
        if changed:
            platform.trigger()
    if body.constraints is not None:
        app, dep = svc.set_constraints(
            session, platform.settings, who.tenant_id, name, body.constraints
        )
        platform.trigger()
    return AppUpdated(
        app=views.app_public(session, platform.settings, app),
        deployment=views.deployment_public(session, dep),
    )


def _traffic_change(body: TrafficUpdate) -> traffic.TrafficChange:
    """The API's partial update as the domain's; passwords are hashed here, so no plain
    password goes further."""
    users = None
    if body.basic_auth is not None:
        users = tuple(traffic.user_with_password(u.user, u.password) for u in body.basic_auth)
    limit = body.rate_limit
    return traffic.TrafficChange(
        redirects=None
        if body.redirects is None
        else tuple(traffic.Redirect(r.source, r.target, r.code) for r in body.redirects),
        basic_auth=users,
        maintenance=body.maintenance,
        maintenance_message=body.maintenance_message,
        allow=None if body.allow is None else tuple(body.allow),
        deny=None if body.deny is None else tuple(body.deny),
        rate_limit=None if limit is None else traffic.RateLimit(limit.per_second, limit.burst),
        remove_rate_limit=limit is None and "rate_limit" in body.model_fields_set,
        https_redirect=body.https_redirect,
    )


@router.delete(
    "/{name}",
    status_code=204,
    responses={
        202: {"description": "being deleted: its instances are stopping, then it is gone"},
        429: {"description": "too many of the tenant's apps are being deleted at once"},
    },
)
def delete_app(name: str, session: SessionDep, platform: PlatformDep, who: Writer) -> Response:
    """Answers at once, without waiting for the engine (a stop can take the whole stop timeout,
    and a worker waiting for it is a worker other tenants lack). 202: the app is deleting, the
    controllers stop its instances and then its name is free; poll GET until it is 404. 204:
    it had no instances and is gone already."""
    app = svc.get_app(session, who.tenant_id, name)
    hostnames = [f"{app.name}.{platform.settings.base_domain}"]
    hostnames += [d.hostname for d in dsvc.list_domains(session, app)]
    outcome = svc.delete_app(session, platform.settings, who.tenant_id, name)
    if platform.certificates is not None:
        platform.certificates.forget(hostnames)  # never served for the name's next owner
    platform.trigger()
    if outcome.gone:
        return Response(status_code=204)
    body = {
        "deleted": outcome.name,
        "state": "deleting",
        "instances_stopping": outcome.instances_stopping,
    }
    return JSONResponse(body, status_code=202)


@router.get("/{name}/releases")
def list_releases(name: str, session: SessionDep, who: CurrentPrincipal) -> list[ReleasePublic]:
    app = svc.get_app(session, who.tenant_id, name)
    return [views.release_public(r, app) for r in svc.list_releases(session, app)]


@router.post("/{name}/releases", status_code=201)
def deploy_image(
    name: str, body: DeployImage, session: SessionDep, platform: PlatformDep, who: Writer
) -> DeployResult:
    runtime, backend = platform.runtime, platform.workloads
    if runtime is None or backend is None:
        raise EngineError("no container engine is configured")
    # The build policy: base images, the tenant's own builds, the configured registry. Another
    # tenant's image answers exactly like a missing one.
    store = platform.images or RuntimeImageStore(runtime)
    resolve = image_policy.deploy_resolver(
        store, who.tenant_id, platform.installation, platform.settings.registry
    )
    pinned = None
    registry = platform.registry
    if registry is not None and registry.wanted():
        # On a swarm: what every node runs (berth.registry.wiring.pin_action). Resolved and
        # pushed before the app is locked: a push may take a while.
        svc.get_app(session, who.tenant_id, name)
        image_id = resolve(body.image)
        assert image_id is not None  # the policy's resolver raises instead
        pinned = registry.pin_for_deploy(
            body.image, image_id, who.tenant_id, name, platform.settings.registry
        )
        resolve = lambda _ref: image_id  # noqa: E731 - the id resolved above, not again
    release, dep = svc.deploy_image(
        session, platform.settings, who.tenant_id, name, body.image, resolve, pinned_image=pinned
    )
    platform.trigger()
    return _deploy_result(session, name, who.tenant_id, release, dep.id)


@router.post("/{name}/rollback", status_code=201)
def rollback(
    name: str, body: RollbackRequest, session: SessionDep, platform: PlatformDep, who: Writer
) -> DeployResult:
    release, dep = svc.rollback(session, platform.settings, who.tenant_id, name, body.version)
    platform.trigger()
    return _deploy_result(session, name, who.tenant_id, release, dep.id)


@router.post("/{name}/scale")
def scale(
    name: str, body: ScaleRequest, session: SessionDep, platform: PlatformDep, who: Writer
) -> AppPublic:
    app = svc.scale_app(session, platform.settings, who.tenant_id, name, body.replicas)
    platform.trigger()
    return views.app_public(session, platform.settings, app)


@router.get("/{name}/config")
def get_config(name: str, session: SessionDep, who: CurrentPrincipal) -> ConfigPublic:
    """An app's config. Values often are secrets (an attached database's URL carries its
    password), so a caller that may only read (a viewer, a read-scoped token) sees the keys
    with empty values and ``values_hidden``."""
    app = svc.get_app(session, who.tenant_id, name)
    config = svc.app_config(app)
    if not who.can_deploy:
        return ConfigPublic(
            config=dict.fromkeys(config, ""), release=None, deployment=None, values_hidden=True
        )
    return ConfigPublic(config=config, release=None, deployment=None)


@router.patch("/{name}/config")
def change_config(
    name: str, body: ConfigChange, session: SessionDep, platform: PlatformDep, who: Writer
) -> ConfigPublic:
    config, release, dep = svc.set_config(
        session, platform.settings, who.tenant_id, name, body.set, body.unset
    )
    platform.trigger()
    app = svc.get_app(session, who.tenant_id, name)
    return ConfigPublic(
        config=config,
        release=views.release_public(release, app) if release else None,
        deployment=views.deployment_public(session, dep),
    )


@router.post("/{name}/restart", status_code=201)
def restart(name: str, session: SessionDep, platform: PlatformDep, who: Writer) -> DeploymentPublic:
    dep = svc.restart_app(session, platform.settings, who.tenant_id, name)
    platform.trigger()
    public = views.deployment_public(session, dep)
    assert public is not None
    return public


@router.get("/{name}/deployments/{deployment_id}")
def get_deployment(
    name: str, deployment_id: str, session: SessionDep, who: CurrentPrincipal
) -> DeploymentPublic:
    dep = svc.get_deployment(session, who.tenant_id, name, deployment_id)
    public = views.deployment_public(session, dep)
    assert public is not None
    return public


@router.get("/{name}/instances")
def list_instances(name: str, session: SessionDep, who: CurrentPrincipal) -> list[InstancePublic]:
    app = svc.get_app(session, who.tenant_id, name)
    versions = {
        r.id: r.version for r in session.scalars(select(Release).where(Release.app_id == app.id))
    }
    return [views.instance_public(i, versions) for i in svc.list_instances(session, app)]


@router.get("/{name}/logs", response_class=StreamingResponse)
def logs(
    name: str,
    session: SessionDep,
    platform: PlatformDep,
    who: CurrentPrincipal,
    tail: Annotated[int, Query(ge=0, le=10_000)] = 100,
    follow: bool = False,
) -> StreamingResponse:
    app = svc.get_app(session, who.tenant_id, name)
    runtime, backend = platform.runtime, platform.workloads
    if runtime is None or backend is None:
        raise EngineError("no container engine is configured")
    containers = [
        (i.id[:8], i.container_id) for i in svc.list_instances(session, app) if i.container_id
    ]
    if not runtime.ping():
        # Before any stream starts, so the answer is a clear 503 rather than an empty 200.
        raise EngineUnavailable("the container engine cannot be reached; try again later")
    if not follow:
        lines = []
        for short, cid in containers:
            try:
                text = backend.logs(cid, tail=tail)
            except EngineUnavailable:
                raise
            except RuntimeFailure as exc:  # the container went away meanwhile
                text = f"(no logs: {exc})"
            for line in text.splitlines():
                lines.append(f"[{short}] {line}\n")
        return StreamingResponse(iter(lines), media_type="text/plain")
    stop = threading.Event()
    streams: list[tuple[str, Iterator[str]]] = []
    try:
        for short, cid in containers:
            # Opened here, not in the streaming body: an engine that is down is a 503.
            try:
                streams.append((short, backend.follow_logs(cid, tail=tail, stop=stop)))
            except EngineUnavailable:
                raise
            except RuntimeFailure as exc:
                streams.append((short, iter([f"(log stream ended: {exc})"])))
    except BaseException:
        stop.set()  # releases the streams opened so far
        raise
    return StreamingResponse(_follow(streams, stop), media_type="text/plain")


async def _follow(
    streams: list[tuple[str, Iterator[str]]], stop: threading.Event
) -> AsyncIterator[str]:
    """Merge every instance's log stream until all end or the client goes away; then ``stop``
    closes the engine streams, even those of quiet instances.

    Threads read the streams as fast as the apps print; a LineBuffer bounds what waits for a
    slow reader (server memory stays bounded) and tells the reader how many lines it missed."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(ready.set)

    buffer = LineBuffer(len(streams), wake)

    def pump(short: str, stream: Iterator[str]) -> None:
        try:
            for line in stream:
                if stop.is_set():
                    break
                buffer.put(f"[{short}] {line.rstrip()}\n")
        except Exception as exc:
            if not stop.is_set():
                buffer.put(f"[{short}] (log stream ended: {exc})\n")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            buffer.producer_done()

    for short, stream in streams:
        threading.Thread(target=pump, args=(short, stream), daemon=True).start()
    try:
        done = not streams
        while not done:
            await ready.wait()
            ready.clear()
            lines, done = buffer.take()
            if lines:
                yield "".join(lines)
    finally:
        stop.set()


def txt_resolver(platform: PlatformDep) -> TxtResolver:
    """The resolver for domain proofs (tests override this dependency with a fake)."""
    return DnsTxtResolver(platform.settings.dns_resolver)


TxtResolverDep = Annotated[TxtResolver, Depends(txt_resolver)]

# Each verification may wait seconds on a DNS server the tenant controls: per tenant they are
# rate limited, and only a few run at once, so that they cannot tie up the API's threads.
VERIFY_RULE = Rule(limit=10, window=60.0)
VERIFY_IN_FLIGHT = 8
_verifications = SlidingWindow(max_keys=10_000)
_verifying = threading.BoundedSemaphore(VERIFY_IN_FLIGHT)


def _admit_verification(tenant_id: str) -> None:
    wait = _verifications.wait(tenant_id, VERIFY_RULE)
    if wait:
        raise RateLimited(
            f"at most {VERIFY_RULE.limit} domain verifications a minute", retry_after=wait
        )
    _verifications.add(tenant_id, VERIFY_RULE)


@router.get("/{name}/domains")
def list_domains(
    name: str, session: SessionDep, platform: PlatformDep, who: CurrentPrincipal
) -> list[DomainPublic]:
    app = svc.get_app(session, who.tenant_id, name)
    return [views.domain_public(d, platform.certificates) for d in dsvc.list_domains(session, app)]


@router.post("/{name}/domains", status_code=201)
def add_domain(
    name: str, body: DomainCreate, session: SessionDep, platform: PlatformDep, who: Writer
) -> DomainPublic:
    """Claim a domain. It stays pending (and does not route) until proven: publish the
    answer's ``challenge`` TXT record, then POST .../verify."""
    domain = dsvc.add_domain(session, platform.settings, who.tenant_id, name, body.hostname)
    return views.domain_public(domain, platform.certificates)


@router.post("/{name}/domains/{hostname}/verify")
def verify_domain(
    name: str,
    hostname: str,
    session: SessionDep,
    platform: PlatformDep,
    who: Writer,
    resolver: TxtResolverDep,  # after the credentials: a 401 comes before any setting's 503
) -> DomainPublic:
    """Check the domain's TXT record; when it holds, the domain is verified and routes."""
    _admit_verification(who.tenant_id)
    if not _verifying.acquire(blocking=False):
        raise RateLimited("too many domain verifications are running", retry_after=5)
    try:
        domain = dsvc.verify_domain(
            session, platform.settings, resolver, who.tenant_id, name, hostname
        )
    finally:
        _verifying.release()
    platform.trigger()
    return views.domain_public(domain, platform.certificates)


@router.delete("/{name}/domains/{hostname}", status_code=204)
def remove_domain(
    name: str, hostname: str, session: SessionDep, platform: PlatformDep, who: Writer
) -> None:
    dsvc.remove_domain(session, who.tenant_id, name, hostname)
    if platform.certificates is not None:
        platform.certificates.forget([hostname])  # never served for the name's next owner
    platform.trigger()


def _deploy_result(
    session: SessionDep, name: str, tenant_id: str, release: Release, deployment_id: str
) -> DeployResult:
    app = svc.get_app(session, tenant_id, name)
    dep = svc.get_deployment(session, tenant_id, name, deployment_id)
    public = views.deployment_public(session, dep)
    assert public is not None
    return DeployResult(release=views.release_public(release, app), deployment=public)
