"""The FastAPI application: routers under /api/v1, one error shape, loops in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from berth import __version__
from berth.api import (
    routes_accounts,
    routes_admin,
    routes_apps,
    routes_billing,
    routes_builds,
    routes_certs,
    routes_databases,
    routes_ingress,
    routes_metrics,
    routes_nodes,
    routes_system,
)
from berth.api.audit import install_audit
from berth.api.errors import error_body, install_error_handlers
from berth.api.limits import BodyLimitMiddleware, body_limit
from berth.api.openapi_limits import tailor
from berth.api.schemas import ERROR_RESPONSES
from berth.platform import Platform
from berth.services.accounts import SignupLimiter
from berth.services.ratelimit import RateLimited

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(platform: Platform, run_loops: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_loops:
            platform.start_loops()
        try:
            yield
        finally:
            if run_loops:
                platform.stop_loops()

    app = FastAPI(
        title="Berth",
        version=__version__,
        description="Self-hosted, multi-tenant container hosting.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.platform = platform
    app.state.signup_limiter = SignupLimiter()
    install_error_handlers(app)
    install_edge_handlers(app)
    install_audit(app)
    # Outermost (added last): a body over its limit never reaches the audit log nor a route.
    # The settings are read per request, so a changed limit applies at once.
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda p: body_limit(p, platform.settings))
    routers = (
        routes_system.router,
        routes_accounts.router,
        routes_apps.router,
        routes_builds.router,
        routes_billing.router,
        routes_admin.router,
        routes_nodes.router,
        routes_databases.router,
        routes_ingress.router,
        routes_metrics.router,
        routes_metrics.prometheus_router,
        routes_certs.router,
    )
    for router in routers:
        app.include_router(router, prefix=API_PREFIX)
    # Also where Prometheus scrapes by default, outside the API prefix.
    app.include_router(routes_metrics.prometheus_router)
    # Where the ACME CA fetches HTTP-01 answers (nginx sends them here from every host).
    app.include_router(routes_certs.challenge_router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # The document states this installation's own limits (max scale, memory, CPUs).
        return tailor(generate(), platform.settings)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def install_edge_handlers(app: FastAPI) -> None:
    @app.exception_handler(RateLimited)
    async def rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message),
            status_code=exc.status,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, _: ClientDisconnect) -> Response:
        # The client left mid-body, or the body limit cut it off (and answered 413 itself):
        # nobody reads this answer, and it is no server error.
        log.info("client left before sending the whole body of %s", request.url.path)
        return Response(status_code=400)
