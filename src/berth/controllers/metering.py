"""Run intervals: the agent's record of when each instance ran, from the engine's own times.

Docker keeps each container's StartedAt and FinishedAt, so even when the Berth server was down,
the next pass records the true start and stop times: gaps in the control plane leave no gaps in
billing. One row per (container, start); a restart opens a new row.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.runtime.protocol import LABEL_APP, LABEL_TENANT, ContainerInfo
from berth.store.tables import RunIntervalRow, new_id

LABEL_MEMORY_MB = "berth.memory-mb"
LABEL_CPUS_MILLI = "berth.cpus-milli"


def record_intervals(session: Session, containers: list[ContainerInfo], now: float) -> None:
    open_rows = {
        (r.container_id, r.started_at): r
        for r in session.scalars(select(RunIntervalRow).where(RunIntervalRow.stopped_at.is_(None)))
    }
    seen: set[tuple[str, float]] = set()
    for c in containers:
        if c.started_at is None or LABEL_MEMORY_MB not in c.labels:
            continue
        key = (c.id, c.started_at)
        seen.add(key)
        row = open_rows.get(key)
        running = c.state in ("running", "paused")
        if row is None:
            if not running and c.finished_at is None:
                continue
            exists = session.scalar(
                select(RunIntervalRow.id).where(
                    RunIntervalRow.container_id == c.id, RunIntervalRow.started_at == c.started_at
                )
            )
            if exists is not None:
                continue  # already closed
            session.add(
                RunIntervalRow(
                    id=new_id(),
                    container_id=c.id,
                    tenant_id=c.labels.get(LABEL_TENANT, ""),
                    app_id=c.labels.get(LABEL_APP, ""),
                    memory_mb=int(c.labels[LABEL_MEMORY_MB]),
                    cpus_milli=int(c.labels.get(LABEL_CPUS_MILLI, "1000")),
                    started_at=c.started_at,
                    stopped_at=None if running else (c.finished_at or now),
                )
            )
        elif not running:
            row.stopped_at = max(row.started_at, c.finished_at or now)
    for key, row in open_rows.items():
        if key not in seen:  # restarted (new start time) or removed
            row.stopped_at = max(row.started_at, now)
    session.flush()


def close_interval(session: Session, container_id: str, now: float) -> None:
    """Called when Berth removes a container: its open interval ends now."""
    for row in session.scalars(
        select(RunIntervalRow).where(
            RunIntervalRow.container_id == container_id, RunIntervalRow.stopped_at.is_(None)
        )
    ):
        row.stopped_at = max(row.started_at, now)
