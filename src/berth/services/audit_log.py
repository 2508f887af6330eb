"""The audit log's retention: rows older than the operator's retention are deleted."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from berth.store.tables import AuditEvent

DAY = 86400.0


def prune_audit_events(session: Session, retention_days: int, now: float) -> int:
    """Delete audit rows older than ``retention_days``; returns how many. The caller commits
    (it runs inside the billing pass's transaction)."""
    cutoff = now - retention_days * DAY
    result = session.execute(delete(AuditEvent).where(AuditEvent.at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
