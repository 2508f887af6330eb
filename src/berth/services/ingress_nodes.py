"""What an ingress node is sent, and what it reported (any server answers; the store is shared).

The routes come from the instance rows the leader writes, through the same pure planner as a
follower's own nginx (berth.controllers.ingress_sync.plan_from_rows), so every server's nginx
and every ingress node route an app to the same healthy instances. The generation grows in
the store whenever the routes change (one counter for all servers, so that an agent asking
two servers in turn is not sent two configs for the same routes).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.controllers.ingress_sync import plan_from_rows
from berth.controllers.snapshot import load_apps
from berth.errors import InvalidInput
from berth.ingress.node_config import NodeConfig, node_config, routes_digest
from berth.proxy.model import Route
from berth.store.tables import Instance, Meta

GENERATION_KEY = "ingress_nodes_generation"  # "<generation>:<routes digest>"
REPORT_PREFIX = "ingress_node:"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")
REPORT_FRESH_SECONDS = 10.0  # an agent reports every second; older than this: gone quiet


@dataclass(frozen=True)
class NodeReport:
    node: str
    live_generation: int | None  # what its nginx answers
    sent_generation: int  # the config it was last sent
    error: str
    at: float


def current_config(
    session: Session, base_domain: str, port: int, body_mb: int | None = None
) -> NodeConfig:
    """The config for every ingress node now (the generation advanced if the routes changed).
    ``body_mb``: the request body limit of apps whose plan sets none (the setting)."""
    rows = list(session.scalars(select(Instance)))
    routes = plan_from_rows(load_apps(session), rows, base_domain, body_mb)
    digest = routes_digest(routes, port)
    row = session.scalars(
        select(Meta).where(Meta.key == GENERATION_KEY).with_for_update()
    ).one_or_none()
    generation, stored_digest = _parse(row.value if row is not None else "")
    if stored_digest != digest:
        generation += 1
        value = f"{generation}:{digest}"
        if row is None:
            session.add(Meta(key=GENERATION_KEY, value=value))
        else:
            row.value = value
    session.flush()
    return _rendered(routes, generation, port)


@lru_cache(maxsize=4)
def _rendered(routes: tuple[Route, ...], generation: int, port: int) -> NodeConfig:
    # Every agent asks every second: the same routes are rendered once, not once per ask.
    return node_config(routes, generation, port)


def _parse(value: str) -> tuple[int, str]:
    gen_text, _, digest = value.partition(":")
    try:
        return int(gen_text), digest
    except ValueError:
        return 0, ""


def check_node_name(node: str) -> str:
    if not NODE_NAME.fullmatch(node):
        raise InvalidInput(
            "a node name is 1-50 letters, digits, '.', '_' or '-'", code="invalid_node"
        )
    return node


def record_report(
    session: Session,
    node: str,
    live_generation: int | None,
    sent_generation: int,
    error: str,
    now: float | None = None,
) -> None:
    key = REPORT_PREFIX + check_node_name(node)
    value = json.dumps(
        {
            "live": live_generation,
            "sent": sent_generation,
            "error": error,
            "at": time.time() if now is None else now,
        }
    )
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    elif row.value != value:
        row.value = value


def reports(session: Session) -> dict[str, NodeReport]:
    out: dict[str, NodeReport] = {}
    for row in session.scalars(select(Meta).where(Meta.key.startswith(REPORT_PREFIX))):
        node = row.key.removeprefix(REPORT_PREFIX)
        try:
            data = json.loads(row.value)
            out[node] = NodeReport(
                node,
                data.get("live"),
                int(data.get("sent") or 0),
                str(data.get("error") or ""),
                float(data.get("at") or 0.0),
            )
        except (ValueError, TypeError, AttributeError):
            continue
    return out


def describe(task_state: str, report: NodeReport | None, generation: int, now: float) -> str:
    """One node's ingress as `berth nodes list` says it (pure). ``task_state``: its
    ``berth-ingress`` task's ("" when none is meant to run there)."""
    if not task_state:
        return ""
    if task_state != "running":
        return task_state
    if report is None or now - report.at > REPORT_FRESH_SECONDS:
        return "running, no report"
    if report.error:
        return f"running, error: {report.error}"
    if report.live_generation == generation:
        return f"serving (generation {generation})"
    if report.live_generation is None:
        return "running, nginx not answering"
    return f"behind (generation {report.live_generation} of {generation})"


def current_generation(session: Session) -> int:
    row = session.get(Meta, GENERATION_KEY)
    return _parse(row.value if row is not None else "")[0]
