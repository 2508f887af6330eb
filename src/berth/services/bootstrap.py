"""First start: the installation id, the admin tenant and its token (written 0600 to disk)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.services.auth import issue_token
from berth.store.tables import Meta, Tenant, new_id

ADMIN_TENANT = "admin"


def installation_id(session: Session) -> str:
    row = session.get(Meta, "installation_id")
    if row is None:
        row = Meta(key="installation_id", value=secrets.token_hex(6))
        session.add(row)
        session.commit()
    return row.value


def ensure_admin(session: Session, token_file: Path) -> Tenant:
    """Create the admin tenant and write its token once; later starts keep both."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == ADMIN_TENANT))
    if tenant is None:
        tenant = Tenant(id=new_id(), name=ADMIN_TENANT, is_admin=True)
        session.add(tenant)
        session.commit()
    if not token_file.exists():
        _, secret = issue_token(session, tenant.id, "admin (created at first start)")
        write_secret(token_file, secret)
    return tenant


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
