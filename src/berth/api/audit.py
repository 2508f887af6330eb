"""The audit log: every change request (not GET/HEAD) is recorded with who, what, when, where."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from berth.platform import Platform
from berth.services.auth import Principal
from berth.services.ratelimit import Rule, SlidingWindow, address_key
from berth.store.tables import AuditEvent, new_id

log = logging.getLogger(__name__)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Anonymous failures that no limiter refuses (a forged payment webhook is cheap to send and
# never 429'd, since a real provider retries): at most this many rows per address per window.
ANONYMOUS_FAILURE_ROWS = Rule(limit=20, window=300.0)


def record(
    platform: Platform,
    principal: Principal | None,
    action: str,
    target: str,
    ip: str,
    status: int,
    actor: str | None = None,
) -> None:
    with platform.sessions() as session:
        session.add(
            AuditEvent(
                id=new_id(),
                at=time.time(),
                tenant_id=principal.tenant_id if principal else None,
                user_id=principal.user_id if principal else None,
                actor=(actor or (principal.actor if principal else "anonymous"))[:300],
                action=action[:100],
                target=target[:500],
                ip=ip[:64],
                status=status,
            )
        )
        session.commit()


def anonymous_failure_audited(request: Request, ip: str) -> bool:
    """Whether this anonymous failure gets its audit row (and counts it), or is only logged."""
    window: SlidingWindow = request.app.state.anonymous_audit
    key = f"audit:{address_key(ip)}"
    if window.wait(key, ANONYMOUS_FAILURE_ROWS):
        log.info("not audited: too many anonymous failures from %s", ip)
        return False
    window.add(key, ANONYMOUS_FAILURE_ROWS)
    return True


def install_audit(app: FastAPI) -> None:
    app.state.anonymous_audit = SlidingWindow()

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method in READ_METHODS or not request.url.path.startswith("/api/"):
            return response
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            return response  # unauthenticated calls are audited by their routes (login, signup)
        route = request.scope.get("route")
        template = getattr(route, "path", request.url.path)
        ip = request.client.host if request.client else ""
        try:
            await run_in_threadpool(
                record,
                request.app.state.platform,
                principal,
                f"{request.method} {template}",
                request.url.path,
                ip,
                response.status_code,
            )
        except Exception:
            log.exception("could not write the audit log")
        return response
