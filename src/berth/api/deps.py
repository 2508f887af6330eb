"""Dependencies shared by the routers: the platform, a store session, the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from berth.errors import Forbidden, Unauthorized
from berth.platform import Platform
from berth.services.accounts import SignupLimiter
from berth.services.auth import SESSION_PREFIX, Principal, authenticate
from berth.settings import Settings

_bearer = HTTPBearer(auto_error=False)
SESSION_COOKIE = "berth_session"


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def get_session(platform: PlatformDep) -> Iterator[Session]:
    with platform.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_settings(platform: PlatformDep) -> Settings:
    return platform.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_signup_limiter(request: Request) -> SignupLimiter:
    limiter: SignupLimiter = request.app.state.signup_limiter
    return limiter


SignupLimiterDep = Annotated[SignupLimiter, Depends(get_signup_limiter)]


def get_principal(
    request: Request,
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_berth_tenant: Annotated[
        str | None, Header(description="Act in this tenant (a team you belong to).")
    ] = None,
) -> Principal:
    if creds:
        secret: str | None = creds.credentials  # the bearer header takes tokens and sessions
    else:
        secret = request.cookies.get(SESSION_COOKIE)
        if secret and not secret.startswith(SESSION_PREFIX):
            # The cookie is the browser's login session, sent on its own with every request:
            # an API token planted there must not act for a page.
            raise Unauthorized(
                "the session cookie holds login sessions only; send API tokens as a bearer header",
                code="unauthorized",
            )
    principal = authenticate(session, secret, x_berth_tenant or None)
    request.state.principal = principal  # for the audit log
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_write(principal: CurrentPrincipal) -> Principal:
    if not principal.can_deploy:
        raise Forbidden(
            f"your role ({principal.role}) or token scope ({principal.scope}) may only read",
            code="read_only",
        )
    return principal


Writer = Annotated[Principal, Depends(require_write)]


def require_manager(principal: CurrentPrincipal) -> Principal:
    if not principal.can_manage:
        raise Forbidden("owners only (with an admin-scoped token)", code="owner_only")
    return principal


Manager = Annotated[Principal, Depends(require_manager)]


def require_operator(principal: CurrentPrincipal) -> Principal:
    if not principal.is_operator:
        raise Forbidden("platform operators only", code="operator_only")
    return principal


Operator = Annotated[Principal, Depends(require_operator)]
