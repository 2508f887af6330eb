"""Authentication: API tokens and login sessions, both random secrets stored as SHA-256 hashes.

A request acts as one user in one tenant (the *principal*). What it may do is the smaller of the
user's role in that tenant (owner > developer > viewer) and the token's scope (admin > deploy >
read). Platform operators are users with ``is_operator``, acting with an admin-scoped token.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.errors import NotFound, Unauthorized
from berth.store.tables import ApiToken, Membership, Tenant, User, WebSession, new_id

TOKEN_PREFIX = "berth_"  # noqa: S105 (a prefix, not a secret)
SESSION_PREFIX = "bsess_"
SESSION_SECONDS = 14 * 24 * 3600

ROLES = ("viewer", "developer", "owner")
SCOPES = ("read", "deploy", "admin")
_LEVEL = {"viewer": 0, "developer": 1, "owner": 2, "read": 0, "deploy": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped to, and what the call may do."""

    tenant_id: str
    tenant_name: str
    user_id: str | None
    email: str
    role: str
    scope: str
    via: str  # "token" or "session"
    credential_id: str
    user_is_operator: bool = False

    @property
    def level(self) -> int:
        return min(_LEVEL[self.role], _LEVEL[self.scope])

    @property
    def can_deploy(self) -> bool:
        return self.level >= 1

    @property
    def can_manage(self) -> bool:
        return self.level >= 2

    @property
    def is_operator(self) -> bool:
        return self.user_is_operator and self.scope == "admin"

    @property
    def actor(self) -> str:
        return f"{self.email} via {self.via}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session,
    tenant_id: str,
    name: str,
    scopes: str = "admin",
    expires_at: float | None = None,
    user_id: str | None = None,
) -> tuple[ApiToken, str]:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id(),
        tenant_id=tenant_id,
        user_id=user_id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 4],
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.commit()
    return row, secret


def issue_session(session: Session, user_id: str, ip: str) -> tuple[WebSession, str]:
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    row = WebSession(
        id=new_id(),
        user_id=user_id,
        token_hash=hash_token(secret),
        expires_at=time.time() + SESSION_SECONDS,
        ip=ip[:64],
    )
    session.add(row)
    session.commit()
    return row, secret


def authenticate(session: Session, secret: str | None, tenant_name: str | None = None) -> Principal:
    if not secret:
        raise Unauthorized("missing bearer token; run `berth login`", code="unauthorized")
    if secret.startswith(SESSION_PREFIX):
        return _from_session(session, secret, tenant_name)
    return _from_token(session, secret, tenant_name)


def _from_token(session: Session, secret: str, tenant_name: str | None) -> Principal:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked token", code="unauthorized")
    if row.expires_at is not None and row.expires_at <= time.time():
        raise Unauthorized("token expired", code="token_expired")
    tenant = session.get(Tenant, row.tenant_id)
    user = session.get(User, row.user_id) if row.user_id else None
    if tenant is None or (row.user_id and user is None):
        raise Unauthorized("invalid token", code="unauthorized")
    if tenant_name and tenant_name != tenant.name:
        # A user's token acts in the tenant it was made in, or in another tenant of the same
        # user when asked (X-Berth-Tenant): the membership gives the role, the token caps it.
        other = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if user is None or other is None or _role_of(session, other.id, user.id) is None:
            raise NotFound(f"tenant {tenant_name!r} not found", code="tenant_not_found")
        tenant = other
    role = _role_of(session, tenant.id, user.id) if user else "owner"
    if role is None:  # the user left the team: the token no longer opens it
        raise Unauthorized("this token's user is no longer a member", code="unauthorized")
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        user_id=user.id if user else None,
        email=user.email if user else f"token {row.name}",
        role=role,
        scope=_scope_of(row.scopes),
        via="token",
        credential_id=row.id,
        user_is_operator=bool(user.is_operator) if user else tenant.is_admin,
    )


def _from_session(session: Session, secret: str, tenant_name: str | None) -> Principal:
    row = session.scalar(select(WebSession).where(WebSession.token_hash == hash_token(secret)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or ended session; log in again", code="unauthorized")
    if row.expires_at <= time.time():
        raise Unauthorized("session expired; log in again", code="session_expired")
    user = session.get(User, row.user_id)
    if user is None:
        raise Unauthorized("invalid session", code="unauthorized")
    if tenant_name:
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    else:
        tenant = session.get(Tenant, user.personal_tenant_id)
    role = _role_of(session, tenant.id, user.id) if tenant else None
    if tenant is None or role is None:
        raise NotFound(f"tenant {tenant_name!r} not found", code="tenant_not_found")
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        user_id=user.id,
        email=user.email,
        role=role,
        scope="admin",
        via="session",
        credential_id=row.id,
        user_is_operator=user.is_operator,
    )


def _role_of(session: Session, tenant_id: str, user_id: str) -> str | None:
    return session.scalar(
        select(Membership.role).where(
            Membership.tenant_id == tenant_id, Membership.user_id == user_id
        )
    )


def _scope_of(scopes: str) -> str:
    """Tokens hold one scope; older rows may list several: the widest listed one applies."""
    listed = [s for s in scopes.split(",") if s in _LEVEL]
    return max(listed, key=lambda s: _LEVEL[s]) if listed else "read"
