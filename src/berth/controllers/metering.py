"""Run intervals: the agent's record of when each instance ran, from the engine's own times.

Docker keeps each container's StartedAt and FinishedAt, so even when the Berth server was down,
the next pass records the true start and stop times: gaps in the control plane leave no gaps in
billing. One row per (container, start); a restart opens a new row.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.billing.watermark import NodeReport, Watermark, advance, detection_bound
from berth.billing.watermark import reported_through as watermark_of_pass
from berth.settings import Settings
from berth.store.tables import Meta, RunIntervalRow, new_id
from berth.workloads.protocol import NodeSummary, WorkloadInstance

log = logging.getLogger(__name__)

# Meta rows: up to when every node's reports are in (unix seconds; never moves back), and how
# the last pass decided it (JSON: which nodes hold it back, which are no longer waited for).
REPORTED_THROUGH = "reported_through"
REPORTED_THROUGH_DETAIL = "reported_through_detail"

# A stopping instance may still run: it is billed until its backend says when it stopped.
BILLED_STATES = frozenset({"running", "stopping"})
_IN_CHUNK = 500  # ids per IN (...): well under SQLite's limit on bound parameters


def record_intervals(session: Session, instances: Sequence[WorkloadInstance], now: float) -> None:
    """Open, keep or close one row per (instance, start) from what the backend reports: the
    backend's own start and stop times, whichever node ran the instance.

    Open rows are read as plain columns; only the rows that close are loaded (a pass over
    30,000 instances that keep running touches none)."""
    session.flush()
    opened = select(RunIntervalRow.id, RunIntervalRow.container_id, RunIntervalRow.started_at)
    # Through the session's connection (same transaction) in one fetch: plain rows, 30,000 a
    # pass, without the ORM's per-row result processing.
    rows = session.connection().execute(opened.where(RunIntervalRow.stopped_at.is_(None))).all()
    open_rows = {(container_id, started_at): row_id for row_id, container_id, started_at in rows}
    unseen = dict(open_rows)  # until an instance reports it (no set of 30,000 keys kept)
    closing: dict[str, float] = {}  # row id -> when it stopped
    new: dict[tuple[str, float], WorkloadInstance] = {}
    for inst in instances:
        if inst.started_at is None or inst.memory_mb <= 0:
            continue
        key = (inst.id, inst.started_at)
        unseen.pop(key, None)
        row_id = open_rows.get(key)
        running = inst.state in BILLED_STATES
        if row_id is None:
            if running or inst.finished_at is not None:
                new.setdefault(key, inst)
        elif not running:
            closing[row_id] = max(inst.started_at, inst.finished_at or now)
    for key, row_id in unseen.items():  # restarted (new start time) or gone without a stop time
        closing.setdefault(row_id, max(key[1], now))
    recorded = _recorded_keys(session, [key[0] for key in new])
    for key, inst in new.items():
        if key in recorded:
            continue  # already closed
        running = inst.state in BILLED_STATES
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
    ids = list(closing)
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for row in session.scalars(select(RunIntervalRow).where(RunIntervalRow.id.in_(chunk))):
            row.stopped_at = closing[row.id]
    session.flush()


def _recorded_keys(session: Session, container_ids: list[str]) -> set[tuple[str, float]]:
    """(container, start) of every interval, open or closed, of these containers."""
    found: set[tuple[str, float]] = set()
    for start in range(0, len(container_ids), _IN_CHUNK):
        chunk = container_ids[start : start + _IN_CHUNK]
        rows = session.execute(
            select(RunIntervalRow.container_id, RunIntervalRow.started_at).where(
                RunIntervalRow.container_id.in_(chunk)
            )
        )
        found.update((container_id, started_at) for container_id, started_at in rows)
    return found


def close_interval(session: Session, container_id: str, now: float) -> None:
    """Called when Berth removes a container: its open interval ends now."""
    for row in session.scalars(
        select(RunIntervalRow).where(
            RunIntervalRow.container_id == container_id, RunIntervalRow.stopped_at.is_(None)
        )
    ):
        row.stopped_at = max(row.started_at, now)


def pass_watermark(
    settings: Settings, backend: str, nodes: Sequence[NodeSummary], observed_at: float
) -> Watermark:
    """The watermark of a pass that read ``nodes`` (before its instances) from ``observed_at``."""
    bound = detection_bound(backend, settings.swarm_dispatcher_heartbeat_seconds)
    reports = [NodeReport(n.name, n.state, n.last_seen) for n in nodes]
    return watermark_of_pass(observed_at, reports, bound, settings.billing_node_wait_seconds)


def record_watermark(session: Session, mark: Watermark) -> float | None:
    """Store a pass's watermark in the pass's transaction (with its intervals); it never moves
    back. Billing closes whole hours, so the store learns a new value when it passes an hour
    boundary (the pass after every boundary writes it): a pass with nothing else changed writes
    nothing. Who holds it back is written when that changes; a node newly given up on (no
    longer waited for) is logged then, once."""
    row = session.get(Meta, REPORTED_THROUGH)
    previous = float(row.value) if row is not None else None
    value = advance(previous, mark.reported_through)
    if value is not None and (previous is None or _hour(value) > _hour(previous)):
        if row is None:
            session.add(Meta(key=REPORTED_THROUGH, value=repr(value)))
        else:
            row.value = repr(value)
    detail = {
        "held_by": [asdict(h) for h in mark.held_by],
        "not_waited_for": [asdict(h) for h in mark.not_waited_for],
    }
    before = watermark_detail(session)
    if before != detail:
        given_up = {h["node"] for h in before.get("not_waited_for", [])}
        for holder in mark.not_waited_for:
            if holder.node not in given_up:
                log.warning(
                    "billing: node %s is %s since %s: hours close without its late reports",
                    holder.node,
                    holder.state,
                    holder.since,
                )
        text = json.dumps(detail)
        detail_row = session.get(Meta, REPORTED_THROUGH_DETAIL)
        if detail_row is None:
            session.add(Meta(key=REPORTED_THROUGH_DETAIL, value=text))
        else:
            detail_row.value = text
    session.flush()
    return value


def _hour(t: float) -> int:
    return math.floor(t / 3600)


def stored_watermark(session: Session) -> float | None:
    """Up to when every node's reports are in; None before the first reconciler pass."""
    row = session.get(Meta, REPORTED_THROUGH)
    return float(row.value) if row is not None else None


def watermark_detail(session: Session) -> dict[str, Any]:
    row = session.get(Meta, REPORTED_THROUGH_DETAIL)
    if row is None:
        return {}
    try:
        detail = json.loads(row.value)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}
