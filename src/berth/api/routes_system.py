"""Platform status: server, engine, nginx, ingress port, base domain."""

from __future__ import annotations

from fastapi import APIRouter

from berth import __version__
from berth.api.deps import CurrentPrincipal, PlatformDep
from berth.api.schemas import StatusPublic

router = APIRouter(tags=["system"])


@router.get("/status")
def status(platform: PlatformDep, who: CurrentPrincipal) -> StatusPublic:
    engine, engine_version = "unavailable", None
    if platform.runtime is not None:
        try:
            engine_version = platform.runtime.version()
            engine = "ok"
        except Exception as exc:
            engine = f"unavailable: {exc}"
    nginx_state, nginx_pid = "not managed", None
    if platform.nginx is not None:
        nginx_pid = platform.nginx.pid()
        nginx_state = "running" if nginx_pid else "stopped"
    reconciler = "not running"
    if platform.reconciler is not None and platform.started:
        err = platform.reconciler.last_error
        reconciler = f"error: {err}" if err else f"ok ({platform.reconciler.passes} passes)"
    return StatusPublic(
        server="ok",
        version=__version__,
        engine=engine,
        engine_version=engine_version,
        nginx=nginx_state,
        nginx_pid=nginx_pid,
        ingress_port=platform.settings.ingress_port,
        base_domain=platform.settings.base_domain,
        installation=platform.installation,
        reconciler=reconciler,
        tenant=who.tenant_name,
    )
