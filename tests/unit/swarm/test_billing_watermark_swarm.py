"""Billing over the fake Swarm: an hour closes only once every node's report for it is in.

The real reconciler, store (SQLite) and billing controller over SwarmWorkloads on the fake
Swarm, one worker and a drained manager, with a clock the test moves. A node that stops
heartbeating still reads ``ready`` for up to the detection bound (7.6 s at a 2 s heartbeat:
berth.billing.watermark); one that is ``unknown`` may report much later, with the node's own
times; the fake shows both as a real manager does (nothing changes until Swarm decides).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bench.control_plane_scale import INSTALLATION, LiveTaskHealth, seed_store
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.billing.watermark import swarm_detection_bound
from berth.controllers.billing import BillingController
from berth.controllers.reconciler import Reconciler
from berth.runtime.protocol import owner_labels
from berth.services.billing_status import billing_status
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import UsageRow
from berth.swarm.fake import FakeSwarmAPI
from berth.swarm.tasks import parse_time
from berth.workloads.swarm import SwarmWorkloads
from tests.fakes import FakeNginx

HOUR = 3600
BOUND = swarm_detection_bound(2.0)  # the settings' default heartbeat


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Swarm:
    clock: Clock
    fake: FakeSwarmAPI
    worker: str  # node id
    reconciler: Reconciler
    billing: BillingController
    sessions: sessionmaker[Session]
    settings: Settings
    health: LiveTaskHealth

    def reconcile(self, at: float) -> None:
        self.clock.now = at
        self.reconciler.run_once()
        self.health.observe()

    def bill(self, at: float) -> int:
        self.clock.now = at
        return self.billing.run_once().usage_records

    def usage(self) -> dict[int, int]:
        with self.sessions() as s:
            rows = s.scalars(select(UsageRow)).all()
        out: dict[int, int] = {}
        for row in rows:
            out[row.hour_start] = out.get(row.hour_start, 0) + row.instance_ms
        return out

    def task(self) -> dict[str, Any]:
        [task] = [
            t
            for t in self.fake.tasks(labels=owner_labels(INSTALLATION))
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        ]
        return task

    def status(self) -> Any:
        with self.sessions() as s:
            return billing_status(s, self.settings, self.clock.now)


def make_swarm(tmp_path: Path, **overrides: Any) -> Iterator[Swarm]:
    settings = Settings(home=tmp_path, database_url="", **overrides)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        sessions = make_sessionmaker(engine)
        seed_store(sessions, apps=1, tenants=1, replicas=1)
        # An hour boundary near the real time, so that nothing the store keeps looks stale.
        clock = Clock(math.floor(time.time() / HOUR) * HOUR + 100)
        fake = FakeSwarmAPI(clock=clock)
        fake.add_node("m1", role="manager", availability="drain")
        worker = fake.add_node("w1")
        workloads = SwarmWorkloads(fake, INSTALLATION, clock=clock)
        health = LiveTaskHealth(fake)
        health.observe()
        reconciler = Reconciler(
            settings,
            sessions,
            workloads,
            FakeNginx(),  # type: ignore[arg-type]
            health,
            clock=clock,
        )
        billing = BillingController(settings, sessions, clock=clock)
        yield Swarm(clock, fake, worker, reconciler, billing, sessions, settings, health)
    finally:
        engine.dispose()


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    yield from make_swarm(tmp_path)


def running_from(swarm: Swarm) -> float:
    """Settle until the app's one task runs (on the only worker); when it started."""
    start = swarm.clock.now
    for step in range(4):
        swarm.reconcile(start + step)
    task = swarm.task()
    assert task["NodeID"] == swarm.worker
    started = parse_time(task["Status"]["Timestamp"])
    assert started is not None
    return started


def test_a_silent_node_that_reads_ready_holds_the_hour_until_it_is_declared_down(
    swarm: Swarm,
) -> None:
    started = running_from(swarm)
    end = math.ceil(swarm.clock.now / HOUR) * HOUR  # the hour the task runs in ends here
    swarm.reconcile(end - 60)
    # The worker stops heartbeating 3 s before the hour ends: the manager still says ready.
    for late in (1.0, 4.0, BOUND - 3.5):
        swarm.reconcile(end + late)
        assert swarm.bill(end + late + 0.5) == 0, late
        assert end - HOUR not in swarm.usage()  # the hour stays open
    # Swarm declares it down (its last heartbeat + the grace): it gives up on the task then.
    down_at = end - 3 + BOUND - 0.1
    swarm.clock.now = down_at
    swarm.fake.set_node_state(swarm.worker, "down")
    swarm.reconcile(down_at + 0.5)
    assert swarm.bill(down_at + 1) == 0  # the other nodes' own bound is not over yet
    swarm.reconcile(end + BOUND + 0.5)
    assert swarm.bill(end + BOUND + 1) == 1
    # Billed to the hour's end: Swarm's give-up, after it, is the only stop it will know.
    assert swarm.usage() == {end - HOUR: round((end - started) * 1000)}
    assert swarm.status().held_by == []


def test_an_unknown_node_that_reports_late_is_billed_to_its_own_stop_time(
    swarm: Swarm,
) -> None:
    started = running_from(swarm)
    end = math.ceil(swarm.clock.now / HOUR) * HOUR
    task = swarm.task()
    swarm.reconcile(end - 601)  # the last pass that sees it ready
    swarm.clock.now = end - 600
    swarm.fake.set_node_state(swarm.worker, "unknown")  # e.g. cut off from the managers
    for at in (end + 10, end + 600):
        swarm.reconcile(at)
        assert swarm.bill(at + 1) == 0  # it used to close the hour here, billed in full
        status = swarm.status()
        # Last known good: when this server last saw it ready (Swarm's own change came later).
        assert [(h.node, h.state, h.since) for h in status.held_by] == [
            ("w1", "unknown", end - 601)
        ]
        assert status.hours_waiting == 1 and status.closable_until == end - HOUR
    # Back after 20 minutes: it reports that the task exited five minutes before the hour
    # ended, in the node's own time (the fake's clock is set back for the report's stamp).
    swarm.clock.now = end - 300
    swarm.fake.crash_task(task["ID"])  # its replacement waits: no ready node to run it
    swarm.clock.now = end + 1200
    swarm.fake.set_node_state(swarm.worker, "ready")
    swarm.reconcile(end + 1200 + BOUND + 1)
    assert swarm.bill(end + 1200 + BOUND + 2) == 1
    assert swarm.usage() == {end - HOUR: round((end - 300 - started) * 1000)}
    assert swarm.status().held_by == []


def test_a_node_silent_past_the_wait_is_no_longer_waited_for_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for swarm in make_swarm(tmp_path, billing_node_wait_seconds=1800):
        started = running_from(swarm)
        end = math.ceil(swarm.clock.now / HOUR) * HOUR
        swarm.reconcile(end - 601)
        swarm.clock.now = end - 600
        swarm.fake.set_node_state(swarm.worker, "unknown")
        swarm.reconcile(end + 1000)  # silent 1,600 s: still waited for
        assert swarm.bill(end + 1001) == 0
        with caplog.at_level(logging.WARNING, logger="berth.controllers.metering"):
            swarm.reconcile(end + 1300)  # silent 1,900 s: not any more
            swarm.reconcile(end + 1310)
        given_up = [r for r in caplog.records if "w1" in r.getMessage()]
        assert len(given_up) == 1, given_up  # logged once, not every pass
        status = swarm.status()
        assert status.held_by == []
        assert [(h.node, h.state) for h in status.not_waited_for] == [("w1", "unknown")]
        assert swarm.bill(end + 1311) == 1
        # Its late report can no longer change the hour: billed as last seen, to the end.
        assert swarm.usage() == {end - HOUR: round((end - started) * 1000)}
