"""An hour is billed only once every report for it is in: the reconciler stores its watermark
with the intervals of its pass, and billing closes no hour past it. The real reconciler and
store (SQLite) over the local backend on the fake engine, with a clock the test moves."""

from __future__ import annotations

import math

from sqlalchemy import select

from berth.controllers.billing import BillingController
from berth.controllers.metering import stored_watermark
from berth.services import apps as svc
from berth.store.tables import RunIntervalRow, UsageRow
from tests.unit.controllers.conftest import World, deploy

HOUR = 3600


def usage_by_hour(world: World) -> dict[int, int]:
    with world.session() as s:
        rows = s.scalars(select(UsageRow)).all()
    out: dict[int, int] = {}
    for row in rows:
        out[row.hour_start] = out.get(row.hour_start, 0) + row.instance_ms
    return out


def running_instance(world: World) -> tuple[str, float]:
    with world.session() as s:
        svc.create_app(s, world.settings, world.tenant_id, svc.AppSpec("web"))
    deploy(world, "web")
    world.settle()
    [cid] = world.running("web")
    started = world.runtime.inspect(cid).started_at  # type: ignore[union-attr]
    assert started is not None
    return cid, started


def test_the_pass_stores_its_watermark_and_it_never_moves_back(world: World) -> None:
    world.reconciler.run_once()
    with world.session() as s:
        first = stored_watermark(s)
    # The local engine answers each listing itself: the pass's own start is complete.
    assert first is not None and first <= world.clock.now
    world.clock.now += HOUR
    at = world.clock.now
    world.reconciler.run_once()
    with world.session() as s:
        assert stored_watermark(s) == at
    world.clock.now -= 2 * HOUR  # the clock stepped back: the watermark does not
    world.reconciler.run_once()
    with world.session() as s:
        assert stored_watermark(s) == at


def test_a_fresh_install_bills_nothing_before_the_first_pass(world: World) -> None:
    billing = BillingController(world.settings, world.reconciler.sessions, clock=world.clock)
    with world.session() as s:
        s.add(
            RunIntervalRow(
                id="row-1",
                container_id="ctr-1",
                tenant_id=world.tenant_id,
                app_id="app-1",
                memory_mb=256,
                cpus_milli=500,
                started_at=world.clock.now - 5 * HOUR,
                stopped_at=None,
            )
        )
        s.commit()
    assert billing.run_once().usage_records == 0
    assert usage_by_hour(world) == {}


def test_after_an_outage_billing_waits_for_the_reconciler_to_record_the_stops(
    world: World,
) -> None:
    cid, started = running_instance(world)
    billing = BillingController(world.settings, world.reconciler.sessions, clock=world.clock)
    # The next hour boundary at least ten minutes away.
    boundary = math.ceil((world.clock.now + 700) / HOUR) * HOUR
    world.clock.now = boundary - 600
    world.reconciler.run_once()  # the last pass before the server goes down
    billing.run_once()
    before_outage = usage_by_hour(world)
    assert max(before_outage, default=0) < boundary - HOUR  # that hour has not ended yet
    # The server is down; a quarter of an hour into the next hour the instance exits.
    world.clock.now = boundary + 900
    world.runtime.crash(cid, 1)
    stopped = world.clock.now
    # Back two hours later: the billing loop happens to run before the reconciler's first
    # pass. The hours since the last pass are not all reported: none of them closes (it
    # used to bill them to now: the instance still open, the whole hour after the boundary).
    world.clock.now = boundary + 2 * HOUR + 300
    assert billing.run_once().usage_records == 0
    assert usage_by_hour(world) == before_outage
    # The reconciler's pass records the engine's stop time; now the hours close, billed to it.
    world.reconciler.run_once()
    world.clock.now += 1
    billing.run_once()
    usage = usage_by_hour(world)
    assert usage[boundary] == round((stopped - boundary) * 1000) == 900_000
    assert boundary + HOUR not in usage  # stopped, and restarted only after the outage
    assert sum(ms for hour, ms in usage.items() if hour < boundary) == round(
        (boundary - started) * 1000
    )
    with world.session() as s:
        first = s.scalar(
            select(RunIntervalRow)
            .where(RunIntervalRow.container_id == cid)
            .order_by(RunIntervalRow.started_at)
        )
        assert first is not None and first.stopped_at == stopped
