"""Accounts: sign-up, login, logout, whoami, API tokens, teams, members and invitations."""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from berth.api.audit import record
from berth.api.deps import (
    SESSION_COOKIE,
    CurrentPrincipal,
    Manager,
    PlatformDep,
    SessionDep,
    SettingsDep,
    SignupLimiterDep,
)
from berth.api.schemas import APP_NAME_PATTERN, EMAIL_PATTERN, ErrorBody, Strict
from berth.errors import BerthError, Forbidden
from berth.services import accounts as acc
from berth.services.auth import ROLES, SCOPES, SESSION_SECONDS, Principal, issue_session
from berth.services.ratelimit import RateLimited, Rule
from berth.store.tables import ApiToken, Tenant

router = APIRouter(tags=["accounts"])


class Credentials(Strict):
    email: str = Field(max_length=254, json_schema_extra={"pattern": EMAIL_PATTERN})
    password: str = Field(max_length=1024, json_schema_extra={"minLength": 10})


class LoginPublic(BaseModel):
    token: str
    expires_at: float
    email: str
    tenant: str


class TenantMembership(BaseModel):
    name: str
    kind: str
    role: str


class WhoAmI(BaseModel):
    email: str
    tenant: str
    role: str
    scope: str
    via: str
    token_id: str | None = Field(description="the API token in use, so it can revoke itself")
    is_operator: bool
    tenants: list[TenantMembership]


class TokenCreate(Strict):
    name: str = Field(max_length=64, json_schema_extra={"pattern": r"^[^\x00]*\S[^\x00]*$"})
    scope: str = Field(default="deploy", json_schema_extra={"enum": list(SCOPES)})
    expires_in_seconds: float | None = Field(
        default=None,
        description="60 s to 366 days; default: the installation's token_default_days",
        json_schema_extra={
            "anyOf": [{"type": "number", "minimum": 60, "maximum": 366 * 86400}, {"type": "null"}]
        },
    )


class TokenPublic(BaseModel):
    id: str
    name: str
    prefix: str
    scope: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class TokenCreated(TokenPublic):
    token: str


class TeamCreate(Strict):
    name: str = Field(max_length=64, json_schema_extra={"pattern": APP_NAME_PATTERN})


class InvitationCreate(Strict):
    email: str = Field(max_length=254, json_schema_extra={"pattern": EMAIL_PATTERN})
    role: str = Field(default="developer", json_schema_extra={"enum": list(ROLES)})


class InvitationCreated(BaseModel):
    id: str
    email: str
    role: str
    token: str
    expires_at: float


class InvitationAccept(Strict):
    token: str = Field(max_length=200)


class MemberPublic(BaseModel):
    email: str
    role: str


class RoleChange(Strict):
    role: str = Field(json_schema_extra={"enum": list(ROLES)})


def _ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _over_tls(request: Request) -> bool:
    """Did the browser reach us over TLS? Directly, or through a proxy on this machine (only
    a local proxy is trusted to say so: anyone else could send the header)."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and _is_loopback(_ip(request))


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@router.post(
    "/auth/signup",
    status_code=201,
    responses={
        429: {
            "model": ErrorBody,
            "description": "too many sign-ups from this address (see Retry-After)",
        }
    },
)
def signup(
    body: Credentials,
    request: Request,
    response: Response,
    session: SessionDep,
    platform: PlatformDep,
    limiter: SignupLimiterDep,
) -> LoginPublic:
    ip = _ip(request)
    # Bad input first (422, changes nothing, costs nothing, not audited); then the limit
    # (429, not audited either); only then the argon2 hash. The audit log therefore holds at
    # most signup_limit_per_address sign-up rows per address per window.
    acc.normalize_email(body.email)
    acc.check_password(body.password)
    settings = platform.settings
    limiter.hit(ip, Rule(settings.signup_limit_per_address, settings.signup_window_seconds))
    try:
        user = acc.create_user(session, body.email, body.password)
    except BerthError as exc:
        record(platform, None, "signup", body.email[:100], ip, exc.status, "anonymous")
        raise
    # The new user is signed in directly: going through the login limiter could refuse the
    # session (a limited address) after the account was made, leaving it half-created.
    row, secret = issue_session(session, user.id, ip)
    result = acc.LoginResult(user, secret, row.expires_at)
    record(platform, None, "signup", user.email, ip, 201, user.email)
    return _logged_in(request, response, result, session)


@router.post(
    "/auth/login",
    responses={
        429: {"model": ErrorBody, "description": "too many failed logins (see Retry-After)"}
    },
)
def login(
    body: Credentials,
    request: Request,
    response: Response,
    session: SessionDep,
    platform: PlatformDep,
) -> LoginPublic:
    ip = _ip(request)
    try:
        result = acc.login(session, platform.login_limiter, body.email, body.password, ip)
    except RateLimited:
        raise  # not audited: the limiter bounds how many failures reach the log
    except BerthError as exc:
        record(platform, None, "login failed", body.email[:100], ip, exc.status, "anonymous")
        raise
    record(platform, None, "login", result.user.email, ip, 200, result.user.email)
    return _logged_in(request, response, result, session)


def _logged_in(
    request: Request, response: Response, result: acc.LoginResult, session: SessionDep
) -> LoginPublic:
    tenant = session.get(Tenant, result.user.personal_tenant_id)
    response.set_cookie(
        SESSION_COOKIE,
        result.session_token,
        max_age=SESSION_SECONDS,
        httponly=True,  # no script may read it
        samesite="lax",  # not sent with cross-site POSTs
        secure=_over_tls(request),
    )
    return LoginPublic(
        token=result.session_token,
        expires_at=result.expires_at,
        email=result.user.email,
        tenant=tenant.name if tenant else "",
    )


@router.post("/auth/logout", status_code=204)
def logout(
    request: Request, response: Response, session: SessionDep, who: CurrentPrincipal
) -> None:
    acc.logout(session, who)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax", secure=_over_tls(request))


@router.get("/auth/whoami")
def whoami(session: SessionDep, who: CurrentPrincipal) -> WhoAmI:
    return WhoAmI(
        email=who.email,
        tenant=who.tenant_name,
        role=who.role,
        scope=who.scope,
        via=who.via,
        token_id=who.credential_id if who.via == "token" else None,
        is_operator=who.is_operator,
        tenants=[
            TenantMembership(name=t.name, kind=t.kind, role=r)
            for t, r in acc.list_memberships(session, who.user_id)
        ],
    )


def _token_public(row: ApiToken) -> TokenPublic:
    return TokenPublic(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scope=row.scopes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


@router.post("/tokens", status_code=201)
def create_token(
    body: TokenCreate, session: SessionDep, settings: SettingsDep, who: CurrentPrincipal
) -> TokenCreated:
    _require_user_session_or_admin(who)
    row, secret = acc.create_token(
        session,
        who,
        body.name,
        body.scope,
        body.expires_in_seconds,
        default_seconds=settings.token_default_days * 86400,
    )
    return TokenCreated(**_token_public(row).model_dump(), token=secret)


def _require_user_session_or_admin(who: Principal, action: str = "create tokens") -> None:
    # A narrower token must not mint a wider one, nor manage the account (teams, memberships,
    # other tokens): only sessions and admin-scoped tokens do.
    if who.via == "token" and who.scope != "admin":
        raise Forbidden(
            f"use a login session or an admin-scoped token to {action}", code="forbidden"
        )


@router.get("/tokens")
def list_tokens(session: SessionDep, who: CurrentPrincipal) -> list[TokenPublic]:
    return [_token_public(t) for t in acc.list_tokens(session, who)]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, session: SessionDep, who: CurrentPrincipal) -> None:
    if token_id != who.credential_id:  # any token may end itself
        _require_user_session_or_admin(who, "revoke other tokens")
    acc.revoke_token(session, who, token_id)


@router.post("/teams", status_code=201)
def create_team(body: TeamCreate, session: SessionDep, who: CurrentPrincipal) -> TenantMembership:
    _require_user_session_or_admin(who, "create teams")
    team = acc.create_team(session, who, body.name)
    return TenantMembership(name=team.name, kind=team.kind, role="owner")


@router.get("/teams")
def list_teams(session: SessionDep, who: CurrentPrincipal) -> list[TenantMembership]:
    return [
        TenantMembership(name=t.name, kind=t.kind, role=r)
        for t, r in acc.list_memberships(session, who.user_id)
    ]


@router.get("/members")
def list_members(session: SessionDep, who: CurrentPrincipal) -> list[MemberPublic]:
    return [MemberPublic(email=u.email, role=r) for u, r in acc.list_members(session, who)]


@router.patch("/members/{email}")
def change_member(email: str, body: RoleChange, session: SessionDep, who: Manager) -> MemberPublic:
    acc.set_member_role(session, who, email, body.role)
    return MemberPublic(email=email, role=body.role)


@router.delete("/members/{email}", status_code=204)
def remove_member(email: str, session: SessionDep, who: Manager) -> None:
    acc.set_member_role(session, who, email, None)


@router.post("/invitations", status_code=201)
def create_invitation(
    body: InvitationCreate, session: SessionDep, who: Manager
) -> InvitationCreated:
    inv, secret = acc.invite(session, who, body.email, body.role)
    return InvitationCreated(
        id=inv.id, email=inv.email, role=inv.role, token=secret, expires_at=inv.expires_at
    )


@router.post("/invitations/accept")
def accept_invitation(
    body: InvitationAccept, session: SessionDep, who: CurrentPrincipal
) -> TenantMembership:
    _require_user_session_or_admin(who, "join teams")
    tenant = acc.accept_invitation(session, who, body.token)
    role = dict((t.id, r) for t, r in acc.list_memberships(session, who.user_id)).get(tenant.id, "")
    return TenantMembership(name=tenant.name, kind=tenant.kind, role=role)
