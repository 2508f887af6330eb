"""API tokens: random secrets shown once, stored as SHA-256 hashes, resolved to a tenant."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.errors import Unauthorized
from berth.store.tables import ApiToken, Tenant, new_id

TOKEN_PREFIX = "berth_"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped to, and what the token may do."""

    tenant_id: str
    tenant_name: str
    token_id: str
    scopes: frozenset[str]
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    session: Session,
    tenant_id: str,
    name: str,
    scopes: str = "admin",
    expires_at: float | None = None,
) -> tuple[ApiToken, str]:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id(),
        tenant_id=tenant_id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 4],
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.commit()
    return row, secret


def authenticate(session: Session, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing bearer token", code="unauthorized")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    now = time.time()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked token", code="unauthorized")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("token expired", code="token_expired")
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None:
        raise Unauthorized("invalid token", code="unauthorized")
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        token_id=row.id,
        scopes=frozenset(row.scopes.split(",")),
        is_admin=tenant.is_admin,
    )
