"""Dependencies shared by the routers: the platform, a store session, the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from berth.errors import Forbidden
from berth.platform import Platform
from berth.services.auth import Principal, authenticate
from berth.settings import Settings

_bearer = HTTPBearer(auto_error=False)


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


def get_principal(
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate(session, creds.credentials if creds else None)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_write(principal: CurrentPrincipal) -> Principal:
    if not principal.scopes & {"deploy", "admin"}:
        raise Forbidden("this token may only read", code="read_only")
    return principal


Writer = Annotated[Principal, Depends(require_write)]


def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin or "admin" not in principal.scopes:
        raise Forbidden("platform operators only", code="admin_only")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]
