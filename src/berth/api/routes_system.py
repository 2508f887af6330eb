"""Platform status: server, engine, nginx, ingress port, base domain.

A tenant sees what concerns it; the installation id, nginx and the raw text of the engine's and
the reconciler's last errors (which may name other tenants' apps) are for operators only.
"""

from __future__ import annotations

from fastapi import APIRouter

from berth import __version__
from berth.api.deps import CurrentPrincipal, PlatformDep
from berth.api.schemas import StatusPublic
from berth.platform import Platform

router = APIRouter(tags=["system"])


@router.get("/status")
def status(platform: PlatformDep, who: CurrentPrincipal) -> StatusPublic:
    engine, engine_version, engine_error = "unavailable", None, None
    if platform.runtime is not None:
        try:
            engine_version = platform.runtime.version()
            engine = "ok"
        except Exception as exc:
            engine_error = str(exc) or type(exc).__name__
    public = StatusPublic(
        server="ok",
        version=__version__,
        engine=engine,
        ingress_port=platform.settings.ingress_port,
        base_domain=platform.settings.base_domain,
        tenant=who.tenant_name,
    )
    if not who.is_operator:
        return public
    nginx_state, nginx_pid = _nginx(platform)
    return public.model_copy(
        update={
            "engine_version": engine_version,
            "engine_error": engine_error,
            "nginx": nginx_state,
            "nginx_pid": nginx_pid,
            "installation": platform.installation,
            "reconciler": _reconciler(platform),
            "nginx_upstreams": _upstreams(platform),
            "acme": _acme(platform),
            **_lease(platform),
        }
    )


def _lease(platform: Platform) -> dict[str, object]:
    """Which server leads: this one or another (holder and fencing token from the store)."""
    if platform.lease is None or platform.leadership is None:
        return {"role": "leader"}  # one server without a lease runs its controllers itself
    with platform.sessions() as session:
        view = platform.lease.current(session)
    if view is None:
        return {"role": platform.leadership.role}
    return {
        "role": platform.leadership.role,
        "lease_holder": view.holder if not view.expired else None,
        "lease_token": view.token,
    }


def _nginx(platform: Platform) -> tuple[str, int | None]:
    if platform.nginx is None:
        return "not managed", None
    pid = platform.nginx.pid()
    return ("running" if pid else "stopped"), pid


def _reconciler(platform: Platform) -> str:
    if platform.reconciler is None or not platform.started:
        return "not running"
    err = platform.reconciler.last_error
    return f"error: {err}" if err else f"ok ({platform.reconciler.passes} passes)"


def _upstreams(platform: Platform) -> str | None:
    if platform.nginx is None:
        return None
    return "set at run time (no reload)" if platform.nginx.dynamic else "in the config (reload)"


def _acme(platform: Platform) -> str:
    if platform.certificates is None or not platform.certificates.acme_on:
        return "off (no BERTH_ACME_DIRECTORY_URL: uploaded certificates only)"
    if platform.acme is None or not platform.started:
        return "not running on this server (the leader orders)"
    err = platform.acme.last_error
    return f"error: {err}" if err else f"ok ({platform.settings.acme_directory_url})"
