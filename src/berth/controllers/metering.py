"""Run intervals: the agent's record of when each instance ran, from the engine's own times.

Docker keeps each container's StartedAt and FinishedAt, so even when the Berth server was down,
the next pass records the true start and stop times: gaps in the control plane leave no gaps in
billing. One row per (container, start); a restart opens a new row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.store.tables import RunIntervalRow, new_id
from berth.workloads.protocol import WorkloadInstance

# A stopping instance may still run: it is billed until its backend says when it stopped.
BILLED_STATES = frozenset({"running", "stopping"})


def record_intervals(session: Session, instances: Sequence[WorkloadInstance], now: float) -> None:
    """Open, keep or close one row per (instance, start) from what the backend reports: the
    backend's own start and stop times, whichever node ran the instance."""
    open_rows = {
        (r.container_id, r.started_at): r
        for r in session.scalars(select(RunIntervalRow).where(RunIntervalRow.stopped_at.is_(None)))
    }
    seen: set[tuple[str, float]] = set()
    for inst in instances:
        if inst.started_at is None or inst.memory_mb <= 0:
            continue
        key = (inst.id, inst.started_at)
        seen.add(key)
        row = open_rows.get(key)
        running = inst.state in BILLED_STATES
        if row is None:
            if not running and inst.finished_at is None:
                continue
            exists = session.scalar(
                select(RunIntervalRow.id).where(
                    RunIntervalRow.container_id == inst.id,
                    RunIntervalRow.started_at == inst.started_at,
                )
            )
            if exists is not None:
                continue  # already closed
            session.add(
                RunIntervalRow(
                    id=new_id(),
                    container_id=inst.id,
                    tenant_id=inst.tenant_id,
                    app_id=inst.app_id,
                    memory_mb=inst.memory_mb,
                    cpus_milli=inst.cpus_milli or 1000,
                    started_at=inst.started_at,
                    stopped_at=None if running else (inst.finished_at or now),
                )
            )
        elif not running:
            row.stopped_at = max(row.started_at, inst.finished_at or now)
    for key, row in open_rows.items():
        if key not in seen:  # restarted (new start time) or gone without a stop time
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
