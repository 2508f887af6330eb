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


# The limits of a fresh 'default' plan: every tenant who signs up gets it, so it must not let one
# tenant take the machine (an unlimited default let one tenant create 1,500 apps in 69 s and ask
# for 20 x 16 GiB on a 23 GiB host). Sized for a small team's real use on one modest server:
# 10 apps at the default 256 MiB are 2.5 GiB; 20 instances allow scale 2 for each of them; 4 GiB
# of memory in all fits beside other tenants on a 16-32 GiB host; 20 domains are two per app.
# The operator gives bigger tenants a bigger plan. Existing installations keep their row.
DEFAULT_PLAN_LIMITS = {
    "max_apps": 10,
    "max_instances": 20,
    "max_memory_mb": 4096,
    "max_domains": 20,
}


def ensure_default_plan(session: Session, currency: str) -> PlanRow:
    """A plan named 'default' with no price and DEFAULT_PLAN_LIMITS, so a fresh install just
    works and no tenant on it can exhaust the machine."""
    plan = session.scalar(select(PlanRow).where(PlanRow.name == "default"))
    if plan is None:
        plan = PlanRow(
            id=new_id(),
            name="default",
            currency=currency,
            price_per_gb_hour_minor=0,
            price_per_cpu_hour_minor=0,
            **DEFAULT_PLAN_LIMITS,
        )
        session.add(plan)
        session.commit()
    return plan


OPERATOR_PLAN = "operator"


def ensure_operator_plan(session: Session, currency: str) -> PlanRow:
    """The admin tenant's plan on a fresh install: no limits and no price. The operator owns the
    machine; the limits of 'default' protect it from tenants who sign up."""
    plan = session.scalar(select(PlanRow).where(PlanRow.name == OPERATOR_PLAN))
    if plan is None:
        plan = PlanRow(
            id=new_id(),
            name=OPERATOR_PLAN,
            currency=currency,
            price_per_gb_hour_minor=0,
            price_per_cpu_hour_minor=0,
        )
        session.add(plan)
        session.commit()
    return plan


def ensure_admin(session: Session, token_file: Path, currency: str = "EUR") -> Tenant:
    """Create the admin tenant and operator user, and write a token once; later starts keep them
    (an existing admin tenant keeps the plan it has)."""
    ensure_default_plan(session, currency)
    tenant = session.scalar(select(Tenant).where(Tenant.name == ADMIN_TENANT))
    if tenant is None:
        plan = ensure_operator_plan(session, currency)
        tenant = Tenant(id=new_id(), name=ADMIN_TENANT, is_admin=True, plan_id=plan.id)
        session.add(tenant)
        session.commit()
    elif tenant.plan_id is None:
        tenant.plan_id = ensure_operator_plan(session, currency).id
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
