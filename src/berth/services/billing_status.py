"""Where metering stands: the hours metered, up to when every node's reports are in, and which
nodes hold that back (``berth admin billing status``, ``GET /admin/billing/status``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from berth.controllers.billing import METERED_UNTIL
from berth.controllers.metering import stored_watermark, watermark_detail
from berth.settings import Settings
from berth.store.tables import Meta

HOUR = 3600


@dataclass(frozen=True)
class NodeHold:
    node: str
    state: str
    since: float | None


@dataclass(frozen=True)
class BillingStatus:
    metered_until: int | None  # every hour before this is metered; None: nothing yet
    # Every node's reports are in up to at least here (stored when it passes an hour boundary:
    # what closing hours needs); None: no reconciler pass yet, so nothing can be billed.
    reported_through: float | None
    # The hour boundary up to which hours may close now: min(clock, reported_through).
    closable_until: int | None
    # Hours that ended by the clock but wait for some node's reports.
    hours_waiting: int
    node_wait_seconds: float
    held_by: list[NodeHold] = field(default_factory=list)
    not_waited_for: list[NodeHold] = field(default_factory=list)


def billing_status(session: Session, settings: Settings, now: float) -> BillingStatus:
    metered = session.get(Meta, METERED_UNTIL)
    through = stored_watermark(session)
    detail = watermark_detail(session)
    closable = None if through is None else _hour_floor(min(now, through))
    by_clock = _hour_floor(now)
    waiting = 0 if closable is None else max(0, (by_clock - closable) // HOUR)
    return BillingStatus(
        metered_until=int(metered.value) if metered is not None else None,
        reported_through=through,
        closable_until=closable,
        hours_waiting=waiting,
        node_wait_seconds=settings.billing_node_wait_seconds,
        held_by=_holds(detail.get("held_by")),
        not_waited_for=_holds(detail.get("not_waited_for")),
    )


def _hour_floor(t: float) -> int:
    return math.floor(t / HOUR) * HOUR


def _holds(value: Any) -> list[NodeHold]:
    out = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        since = item.get("since")
        out.append(
            NodeHold(
                node=str(item.get("node", "")),
                state=str(item.get("state", "")),
                since=float(since) if isinstance(since, int | float) else None,
            )
        )
    return out
