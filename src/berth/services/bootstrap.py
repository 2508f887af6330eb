"""First start: the installation id, the admin (an operator) and its token, written 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.services.auth import issue_token
from berth.store.tables import Membership, Meta, PlanRow, Tenant, User, new_id

ADMIN_TENANT = "admin"
ADMIN_EMAIL = "admin@berth.local"


def installation_id(session: Session) -> str:
    row = session.get(Meta, "installation_id")
    if row is None:
        row = Meta(key="installation_id", value=secrets.token_hex(6))
        session.add(row)
        session.commit()
    return row.value


def ensure_default_plan(session: Session, currency: str) -> PlanRow:
    """A plan named 'default' with no limits and no price, so a fresh install just works."""
    plan = session.scalar(select(PlanRow).where(PlanRow.name == "default"))
    if plan is None:
        plan = PlanRow(
            id=new_id(),
            name="default",
            currency=currency,
            price_per_gb_hour_minor=0,
            price_per_cpu_hour_minor=0,
        )
        session.add(plan)
        session.commit()
    return plan


def ensure_admin(session: Session, token_file: Path, currency: str = "EUR") -> Tenant:
    """Create the admin tenant and operator user, and write a token once; later starts keep them."""
    plan = ensure_default_plan(session, currency)
    tenant = session.scalar(select(Tenant).where(Tenant.name == ADMIN_TENANT))
    if tenant is None:
        tenant = Tenant(id=new_id(), name=ADMIN_TENANT, is_admin=True, plan_id=plan.id)
        session.add(tenant)
        session.commit()
    if tenant.plan_id is None:
        tenant.plan_id = plan.id
        session.commit()
    user = session.scalar(select(User).where(User.email == ADMIN_EMAIL))
    if user is None:
        # No password: the operator signs in with the token file (or sets one later).
        user = User(
            id=new_id(),
            email=ADMIN_EMAIL,
            password_hash="!",  # noqa: S106 (no password: not a valid argon2 hash)
            is_operator=True,
            personal_tenant_id=tenant.id,
        )
        session.add(user)
        session.flush()
        session.add(Membership(id=new_id(), tenant_id=tenant.id, user_id=user.id, role="owner"))
        session.commit()
    if not token_file.exists():
        _, secret = issue_token(
            session, tenant.id, "admin (created at first start)", "admin", None, user.id
        )
        write_secret(token_file, secret)
    return tenant


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
