"""The FastAPI application: routers under /api/v1, one error shape, loops in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from berth import __version__
from berth.api import (
    routes_accounts,
    routes_admin,
    routes_apps,
    routes_billing,
    routes_builds,
    routes_system,
)
from berth.api.audit import install_audit
from berth.api.errors import install_error_handlers
from berth.platform import Platform

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
    )
    app.state.platform = platform
    install_error_handlers(app)
    install_audit(app)
    routers = (
        routes_system.router,
        routes_accounts.router,
        routes_apps.router,
        routes_builds.router,
        routes_billing.router,
        routes_admin.router,
    )
    for router in routers:
        app.include_router(router, prefix=API_PREFIX)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
