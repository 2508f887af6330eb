"""Billing on many machines: run intervals come from what Swarm reports for each task (its own
start and stop times), whichever node ran it; a server killed and restarted bills nothing twice;
a task that died is billed to its end and its replacement from its start."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.behaviour.images import behaviour_image
from tests.cluster.berth_swarm import berth_on_swarm, kill_task
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP = "metered"


@pytest.fixture(scope="module")
def server(cluster: Cluster) -> Iterator[tuple[BerthServer, str]]:
    cluster.make_whole()
    with behaviour_image() as image:
        cluster.load_images([image])
        with berth_on_swarm(cluster) as berth:
            yield berth, image


def _intervals(server: BerthServer) -> list[tuple[str, float, float | None]]:
    with contextlib.closing(sqlite3.connect(server.home / "berth.db")) as db:
        rows = db.execute(
            "SELECT container_id, started_at, stopped_at FROM run_intervals ORDER BY started_at"
        ).fetchall()
    return [(str(c), float(s), None if e is None else float(e)) for c, s, e in rows]


def _reported_through(server: BerthServer) -> float | None:
    with contextlib.closing(sqlite3.connect(server.home / "berth.db")) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'reported_through'").fetchone()
    return None if row is None else float(row[0])


def _swarm_times(cluster: Cluster, server: BerthServer) -> dict[str, tuple[str, float]]:
    """Task id -> (state, Swarm's timestamp of that state)."""
    client = cluster.manager_client()
    out = {}
    label = f"berth.installation={server.installation}"
    for service in client.services.list(filters={"label": label}):
        for task in service.tasks():
            stamp = task["Status"]["Timestamp"][:26].rstrip("Z") + "+00:00"
            out[task["ID"]] = (task["Status"]["State"], datetime.fromisoformat(stamp).timestamp())
    return out


def test_intervals_follow_swarm_task_times_across_restarts_and_crashes(
    server: tuple[BerthServer, str], cluster: Cluster
) -> None:
    berth, image = server
    berth.create_app(APP, "--memory", "64M", "--cpus", "0.25", "--health-path", "/healthz")
    berth.cli_ok("scale", APP, "2")
    out = berth.cli_json("deploy", APP, "--image", image, timeout=240)
    assert out["deployment"]["status"] == "succeeded", out
    rows = berth.wait_converged(APP, 2, timeout=90)
    wait_until(lambda: len(_intervals(berth)) == 2, 30, "an open interval per task")
    swarm = _swarm_times(cluster, berth)
    for task_id, started, stopped in _intervals(berth):
        state, since = swarm[task_id]
        assert state == "running" and stopped is None
        assert abs(started - since) < 1.0  # Swarm's own start time, not Berth's clock
    # Every node's reports are in up to a pass's start minus Swarm's detection bound (7.6 s at
    # the 2 s heartbeat); it is stored at each hour boundary, and by the first pass ever.
    through = _reported_through(berth)
    assert through is not None
    assert time.time() - 3600 - 15 < through <= time.time() - 7.6, through

    # Killed and restarted: the same two intervals, nothing opened twice.
    assert berth.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(2)
    berth.start()
    berth.wait_converged(APP, 2, timeout=90)
    time.sleep(3)  # a few passes
    assert len(_intervals(berth)) == 2

    # A task dies: billed to its end (Swarm's time), its replacement from its own start.
    victim = rows[0]
    kill_task(cluster)(victim)
    wait_until(lambda: len(_intervals(berth)) == 3, 60, "the replacement's interval")
    wait_until(
        lambda: all(
            e is not None for c, s, e in _intervals(berth) if c.startswith(victim["container_id"])
        ),
        60,
        "the dead task's interval closed",
    )
    swarm = _swarm_times(cluster, berth)
    for task_id, started, stopped in _intervals(berth):
        if task_id.startswith(victim["container_id"]):
            state, since = swarm[task_id]
            assert state in ("failed", "shutdown", "complete") and stopped is not None
            # Swarm's end when Berth saw it ended; at worst the pass that no longer saw it
            # running (seen: up to 2.4 s later): never before the task really ended.
            assert -1.0 < stopped - since < 5.0 and stopped > started, (
                _intervals(berth),
                swarm,
                victim,
            )
    # Two slots: what is billed is about two instances' time, nothing billed twice beyond the
    # few seconds by which a dead task's end may be recorded late (seen under load: ~2 s).
    spans = sorted((s, e or time.time()) for _, s, e in _intervals(berth))
    assert sum(e - s for s, e in spans) <= 2 * (time.time() - spans[0][0]) + 5.0

    berth.cli_ok("apps", "delete", APP, "--yes")
    wait_until(
        lambda: all(e is not None for _, _, e in _intervals(berth)), 60, "every interval closed"
    )
