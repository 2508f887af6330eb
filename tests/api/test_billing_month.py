"""A simulated month of billing, with a fake clock, through the real store and API.

A tenant on a priced plan runs three apps of different sizes through March 2026: instances start,
restart (same container, new start time), crash-loop, get replaced by a deploy, and one app runs
a 12-hour batch that an agent reports twice (overlapping rows). Another tenant on the free
default plan runs one instance. The "agent" writes ``RunIntervalRow`` rows as things happen; the
billing controller's ``run_once()`` runs at jittered times hour by hour, sometimes twice at the
same instant, and not at all while "the server is down" (36 hours mid-month, and the last 28
hours of the month), then catches up.

The priced tenant starts with 3.00, runs low (a ``low_balance`` notification and webhook), goes
below zero, is suspended after the grace period (its instances stop; writes that would run more
get 402), and resumes at the first pass after an operator's credit, with the same desired scale.

Then: usage equals the ground truth computed here from the intervals, to the millisecond; each
tenant-hour is charged once, exactly as the plan's telescoping rule says; the invoice total is
the sum of the charges, the balance change, and top-ups minus charges; the invoice is issued
once the month has closed; usage and invoices export as JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import select

from berth.billing.periods import month_bounds
from berth.billing.plans import InstanceSize
from berth.billing.watermark import Watermark
from berth.controllers.billing import BillingController, BillingStats
from berth.controllers.metering import record_watermark
from berth.store.tables import RunIntervalRow, UsageRow, WebhookDelivery, new_id
from tests.api.conftest import Account, Env, assert_error, charges_in_ledger

pytestmark = pytest.mark.store

YEAR, MONTH = 2026, 3
PERIOD = f"{YEAR:04d}-{MONTH:02d}"
M, NEXT_MONTH = month_bounds(YEAR, MONTH)
HOUR = 3600
DAY = 24 * HOUR
HOUR_MS = HOUR * 1000

# Plan: 0.04 per GB-hour, 0.02 per CPU-hour, 2 GB-hours and 1 CPU-hour free each month.
PRICE_GB, PRICE_CPU, FREE_GB_H, FREE_CPU_H = 4, 2, 2, 1
THRESHOLD = 100  # low-balance warning below 1.00
GRACE = 12 * HOUR
FIRST_TOPUP, RESUME_TOPUP = 300, 6000
SIZES = {
    "web": (256, 500),
    "worker": (512, 1000),
    "batch": (1024, 2000),
    "free": (128, 250),
    "early": (512, 500),
}


def at(day: int, hour: int = 0, minute: int = 0, second: float = 0.0) -> int:
    """Milliseconds since the epoch of a moment in the simulated month."""
    return round((M + (day - 1) * DAY + hour * HOUR + minute * 60 + second) * 1000)


@dataclass
class Interval:
    container: str
    tenant_id: str
    app_id: str
    memory_mb: int
    cpus_milli: int
    start_ms: int
    stop_ms: int | None = None
    row_id: str = field(default_factory=new_id)


@dataclass
class Agent:
    """Writes run intervals as a node agent would, and remembers them as the ground truth."""

    env: Env
    intervals: list[Interval] = field(default_factory=list)
    running: dict[str, Interval] = field(default_factory=dict)  # slot -> its open interval

    def start(
        self, slot: str, container: str, tenant_id: str, app: str, app_id: str, t: int
    ) -> None:
        assert slot not in self.running, slot
        memory, cpus = SIZES[app]
        interval = Interval(container, tenant_id, app_id, memory, cpus, t)
        self.intervals.append(interval)
        self.running[slot] = interval
        with self.env.db() as session:
            session.add(
                RunIntervalRow(
                    id=interval.row_id,
                    container_id=container,
                    tenant_id=tenant_id,
                    app_id=app_id,
                    memory_mb=memory,
                    cpus_milli=cpus,
                    started_at=t / 1000,
                    stopped_at=None,
                )
            )
            session.commit()

    def stop(self, slot: str, t: int) -> Interval:
        interval = self.running.pop(slot)
        interval.stop_ms = t
        self.close(interval)
        return interval

    def close(self, interval: Interval) -> None:
        with self.env.db() as session:
            row = session.get(RunIntervalRow, interval.row_id)
            assert row is not None
            row.stopped_at = None if interval.stop_ms is None else interval.stop_ms / 1000
            session.commit()

    def report_again(self, interval: Interval, shift_ms: int) -> None:
        """The same run reported once more with a slightly later start (an agent restart)."""
        again = Interval(
            interval.container,
            interval.tenant_id,
            interval.app_id,
            interval.memory_mb,
            interval.cpus_milli,
            interval.start_ms + shift_ms,
            interval.stop_ms,
        )
        self.intervals.append(again)
        with self.env.db() as session:
            session.add(
                RunIntervalRow(
                    id=again.row_id,
                    container_id=again.container,
                    tenant_id=again.tenant_id,
                    app_id=again.app_id,
                    memory_mb=again.memory_mb,
                    cpus_milli=again.cpus_milli,
                    started_at=again.start_ms / 1000,
                    stopped_at=None if again.stop_ms is None else again.stop_ms / 1000,
                )
            )
            session.commit()


@dataclass
class Month:
    """What the simulation saw, for the tests to judge."""

    payer: Account
    free: Account
    early: Account
    payer_id: str
    free_id: str
    apps: dict[str, str]  # app -> id
    agent: Agent
    end_ms: int  # where metering stopped (the last closed hour)
    runs: list[tuple[int, BillingStats]] = field(default_factory=list)
    repeats: list[BillingStats] = field(default_factory=list)
    balance_before: dict[str, Any] = field(default_factory=dict)
    draft: dict[str, Any] = field(default_factory=dict)
    warned_at: int | None = None
    suspended_at: int | None = None
    resumed_at: int | None = None
    while_suspended: dict[str, Any] = field(default_factory=dict)
    after_resume: dict[str, Any] = field(default_factory=dict)
    scales: list[dict[str, int]] = field(default_factory=list)


def scales(env: Env, who: Account) -> dict[str, int]:
    return {a["name"]: a["scale"] for a in env.ok("GET", "/apps", who.session)}


def simulate(env: Env) -> Month:
    payer, free = env.signup("payer"), env.signup("freeloader")
    plan = env.plan(
        price_per_gb_hour="0.04",
        price_per_cpu_hour="0.02",
        included_gb_hours=FREE_GB_H,
        included_cpu_hours=FREE_CPU_H,
    )
    env.assign(payer.tenant, plan)
    apps: dict[str, str] = {}
    for app, scale in (("web", 2), ("worker", 1), ("batch", 1)):
        name = f"{app}-{payer.tenant}"[:30].rstrip("-")
        memory, cpus = SIZES[app]
        apps[app] = env.create_app(payer.session, name, memory=memory, cpus=cpus / 1000)["id"]
        env.ok("POST", f"/apps/{name}/scale", payer.session, json={"replicas": scale})
        env.deploy(payer.session, name)
    free_name = f"free-{free.tenant}"[:30].rstrip("-")
    apps["free"] = env.create_app(free.session, free_name, memory=128, cpus=0.25)["id"]
    env.deploy(free.session, free_name)
    env.credit(payer.tenant, "3.00", key="month-first-topup")
    early = env.signup("early")  # priced too, but done with its app by the 5th
    env.assign(early.tenant, plan)
    env.credit(early.tenant, "100.00", key="month-early-topup")
    early_name = f"early-{early.tenant}"[:30].rstrip("-")
    apps["early"] = env.create_app(early.session, early_name, memory=512, cpus=0.5)["id"]
    env.deploy(early.session, early_name)

    payer_id, free_id = env.tenant_id(payer.tenant), env.tenant_id(free.tenant)
    agent = Agent(env)
    month = Month(payer, free, early, payer_id, free_id, apps, agent, end_ms=NEXT_MONTH * 1000)
    month.balance_before = env.ok("GET", "/billing/balance", payer.session)
    month.scales.append(scales(env, payer))
    owner = {"web": payer_id, "worker": payer_id, "batch": payer_id, "free": free_id}
    owner["early"] = env.tenant_id(early.tenant)
    serial = iter(range(1, 10_000))

    def start(slot: str, t: int, container: str | None = None) -> None:
        app = slot.split("#")[0]
        name = container or f"ctr-{slot.replace('#', '-')}-{next(serial)}"
        agent.start(slot, name, owner[app], app, apps[app], t)

    def restart(slot: str, t: int) -> None:
        """The process dies and the engine restarts the same container 5.25 s later."""
        if slot in agent.running:
            old = agent.stop(slot, t)
            start(slot, t + 5250, container=old.container)

    def replace(slot: str, t: int) -> None:
        """A deploy: the new container starts first, the old one stops 3.5 s later."""
        if slot in agent.running:
            old = agent.running.pop(slot)
            start(slot, t)
            old.stop_ms = t + 3500
            agent.close(old)

    def batch_run(t: int) -> None:
        start("batch#0", t)

    def batch_done(t: int) -> None:
        if "batch#0" in agent.running:
            agent.report_again(agent.stop("batch#0", t), shift_ms=250)

    # The script: (time, action). Actions on a slot that is not running (suspended) do nothing.
    script: list[tuple[int, Callable[[int], None]]] = [
        (at(1, 0, 10, 0.123), lambda t: start("web#0", t)),
        (at(1, 0, 10, 0.456), lambda t: start("web#1", t)),
        (at(1, 0, 10, 1.0), lambda t: start("worker#0", t)),
        (at(2, 12, 34, 56.789), lambda t: start("free#0", t)),
        (at(1, 0, 5), lambda t: start("early#0", t)),
        (at(5, 12, 0, 0.5), lambda t: agent.stop("early#0", t)),
        (at(2, 13, 20, 0.5), lambda t: restart("web#0", t)),
        (at(15, 8), batch_run),
        (at(15, 20), batch_done),
        (at(20, 4, 44, 4.4), lambda t: restart("web#1", t)),
        (at(22, 10, 0, 0.001), lambda t: replace("web#0", t)),
        (at(22, 10, 0, 0.002), lambda t: replace("web#1", t)),
        (at(25, 3), lambda t: restart("worker#0", t)),  # a crash loop within one hour
        (at(25, 3, 0, 10), lambda t: restart("worker#0", t)),
        (at(25, 3, 0, 30), lambda t: restart("worker#0", t)),
        (at(28, 23, 59, 59.999), lambda t: restart("worker#0", t)),  # across an hour boundary
    ]
    pending = sorted(script, key=lambda item: item[0])

    settings = env.settings.model_copy(
        update={
            "low_balance_threshold_minor": THRESHOLD,
            "arrears_grace_seconds": GRACE,
            "billing_webhook_url": "http://127.0.0.1:9/billing-events",
        }
    )
    clock_ms = 0
    controller = BillingController(settings, env.platform.sessions, clock=lambda: clock_ms / 1000)
    suspended_slots: list[str] = []
    for clock_ms in pass_times():
        while pending and pending[0][0] <= clock_ms:
            t, action = pending.pop(0)
            action(t)
        with env.db() as session:  # the reconciler's pass: the agent's records are complete
            record_watermark(session, Watermark(clock_ms / 1000, clock_ms / 1000))
            session.commit()
        if month.suspended_at and not month.resumed_at and clock_ms >= at(9, 10):
            env.credit(payer.tenant, "60.00", key="month-resume-topup")
        stats = controller.run_once()
        month.runs.append((clock_ms, stats))
        if clock_ms % 17 == 0 or clock_ms == at(31, 19):
            month.repeats.append(controller.run_once())  # the same instant again
        if payer.tenant in stats.warned and month.warned_at is None:
            month.warned_at = clock_ms
        if payer.tenant in stats.suspended:
            month.suspended_at = clock_ms
            month.while_suspended = observe_suspended(env, payer)
            payer_slots = ("web", "worker", "batch")
            for slot in sorted(s for s in agent.running if s.startswith(payer_slots)):
                suspended_slots.append(slot)
                pending.append((clock_ms + 30_000, lambda t, s=slot: agent.stop(s, t)))
        if payer.tenant in stats.resumed:
            month.resumed_at = clock_ms
            for slot in suspended_slots:
                pending.append((clock_ms + 20_000, lambda t, s=slot: start(s, t)))
            month.after_resume = observe_resumed(env, payer)
        pending.sort(key=lambda item: item[0])
        if at(16) <= clock_ms < at(16, 1):
            month.draft = env.ok("GET", f"/billing/invoices/{PERIOD}", payer.session)
        if len(month.runs) % 24 == 0 or stats.suspended or stats.resumed:
            month.scales.append(scales(env, payer))
    assert not pending or all(t > clock_ms for t, _ in pending)
    month.end_ms = clock_ms // HOUR_MS * HOUR_MS
    return month


def pass_times() -> list[int]:
    """When the billing loop runs: once an hour at a jittered moment (sometimes right on the
    hour), except while the server is down; the last pass catches up after the month ended."""
    rng = random.Random(20260301)
    down = [(at(12, 2), at(13, 14)), (at(30, 20), NEXT_MONTH * 1000)]
    times = []
    for hour in range(M, NEXT_MONTH, HOUR):
        offset = 0 if rng.random() < 0.1 else rng.randint(1, HOUR_MS - 1)
        t = hour * 1000 + offset
        if not any(lo <= t < hi for lo, hi in down):
            times.append(t)
    return [*times, NEXT_MONTH * 1000 + 30 * 60_000]


def observe_suspended(env: Env, payer: Account) -> dict[str, Any]:
    """What the tenant notices while suspended."""
    web = next(
        a["name"] for a in env.ok("GET", "/apps", payer.session) if a["name"].startswith("web")
    )
    image = f"registry.example/{web}:v2"
    env.runtime.add_image(image)
    return {
        "balance": env.ok("GET", "/billing/balance", payer.session),
        "deploy": env.call("POST", f"/apps/{web}/releases", payer.session, json={"image": image}),
        "scale_up": env.call("POST", f"/apps/{web}/scale", payer.session, json={"replicas": 3}),
        "restart": env.call("POST", f"/apps/{web}/restart", payer.session),
        "releases": len(env.ok("GET", f"/apps/{web}/releases", payer.session)),
        "scale": env.ok("GET", f"/apps/{web}", payer.session)["scale"],
        "web": web,
    }


def observe_resumed(env: Env, payer: Account) -> dict[str, Any]:
    web = next(
        a["name"] for a in env.ok("GET", "/apps", payer.session) if a["name"].startswith("web")
    )
    return {
        "balance": env.ok("GET", "/billing/balance", payer.session),
        "deploy": env.call(
            "POST",
            f"/apps/{web}/releases",
            payer.session,
            json={"image": f"registry.example/{web}:v2"},
        ),
    }


@pytest.fixture(scope="module")
def month(env: Env) -> Month:
    return simulate(env)


# -- the ground truth ---------------------------------------------------------------------------


def truth_by_hour(month: Month) -> dict[tuple[str, str, str, int], int]:
    """Instance-ms per (tenant, app, size, hour), from the intervals: each container's runs are
    merged (a re-reported run counts once) and cut where metering stopped."""
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    owner: dict[str, tuple[str, str, str]] = {}
    for iv in month.agent.intervals:
        size = str(InstanceSize(iv.memory_mb, iv.cpus_milli))
        owner[iv.container] = (iv.tenant_id, iv.app_id, size)
        stop = month.end_ms if iv.stop_ms is None else min(iv.stop_ms, month.end_ms)
        if iv.start_ms < stop:
            spans[iv.container].append((iv.start_ms, stop))
    out: dict[tuple[str, str, str, int], int] = defaultdict(int)
    for container, pieces in spans.items():
        merged: list[list[int]] = []
        for lo, hi in sorted(pieces):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            cursor = lo
            while cursor < hi:
                hour_end = (cursor // HOUR_MS + 1) * HOUR_MS
                piece = min(hi, hour_end) - cursor
                out[(*owner[container], cursor // HOUR_MS * HOUR)] += piece
                cursor += piece
    return dict(out)


def expected_charges(month: Month) -> dict[int, int]:
    """The payer's charge per hour: round(cost to date after) - round(cost to date before)."""
    memory: dict[int, int] = defaultdict(int)
    cpu: dict[int, int] = defaultdict(int)
    for (tenant, _app, size, hour), ms in truth_by_hour(month).items():
        if tenant == month.payer_id:
            parsed = InstanceSize.parse(size)
            memory[hour] += parsed.memory_mb * ms
            cpu[hour] += parsed.cpus_milli * ms

    def cost(mem_mb_ms: int, cpu_milli_ms: int) -> Fraction:
        gb_h = Fraction(mem_mb_ms, 1024 * HOUR_MS)
        cpu_h = Fraction(cpu_milli_ms, 1000 * HOUR_MS)
        return (
            max(Fraction(0), gb_h - FREE_GB_H) * PRICE_GB
            + max(Fraction(0), cpu_h - FREE_CPU_H) * PRICE_CPU
        )

    out: dict[int, int] = {}
    mem_total = cpu_total = 0
    for hour in sorted(memory):
        before = round(cost(mem_total, cpu_total))
        mem_total += memory[hour]
        cpu_total += cpu[hour]
        amount = round(cost(mem_total, cpu_total)) - before
        if amount:
            out[hour] = amount
    return out


# -- the tests ----------------------------------------------------------------------------------


def test_the_script_ran_as_designed(month: Month) -> None:
    """Guards the scenario itself: warned, suspended and resumed once each, in that order."""
    assert month.warned_at and month.suspended_at and month.resumed_at
    assert at(2) < month.warned_at < month.suspended_at < at(6) < at(9, 10) <= month.resumed_at
    assert month.resumed_at < at(9, 11)
    assert month.end_ms == NEXT_MONTH * 1000
    containers = {iv.container for iv in month.agent.intervals}
    assert len(month.agent.intervals) > len(containers)  # restarts and a re-reported run
    assert any(iv.stop_ms is None for iv in month.agent.intervals)  # some still running
    assert len(month.runs) > 600 and month.repeats


def test_intervals_in_the_store_are_the_agents(env: Env, month: Month) -> None:
    with env.db() as session:
        stored = sorted(
            (
                r.container_id,
                round(r.started_at * 1000),
                r.stopped_at and round(r.stopped_at * 1000),
            )
            for r in session.scalars(select(RunIntervalRow))
        )
    assert stored == sorted((iv.container, iv.start_ms, iv.stop_ms) for iv in month.agent.intervals)


def test_usage_equals_the_ground_truth_exactly(env: Env, month: Month) -> None:
    truth = truth_by_hour(month)
    with env.db() as session:
        rows = session.scalars(select(UsageRow)).all()
    stored = {(r.tenant_id, r.app_id, r.size, r.hour_start): r.instance_ms for r in rows}
    assert len(stored) == len(rows), "one usage row per tenant, app, size and hour"
    assert stored == truth
    for tenant in (month.payer_id, month.free_id):
        total = sum(ms for key, ms in stored.items() if key[0] == tenant)
        assert total == sum(ms for key, ms in truth.items() if key[0] == tenant) > 0
    # Repeated passes at the same instant metered and charged nothing more.
    assert all(s.usage_records == 0 and s.charges == 0 for s in month.repeats)
    assert all(not (s.warned or s.suspended or s.resumed) for s in month.repeats)


def test_each_tenant_hour_is_charged_once_as_the_plan_says(env: Env, month: Month) -> None:
    charges = charges_in_ledger(env, month.payer_id)
    keys = [key for key, _, _ in charges]
    assert len(keys) == len(set(keys))
    assert all(key == f"charge:{month.payer_id}:{hour}" for key, hour, _ in charges)
    assert {hour: amount for _, hour, amount in charges} == expected_charges(month)
    early = charges_in_ledger(env, env.tenant_id(month.early.tenant))
    assert sum(s.charges for _, s in month.runs) == len(charges) + len(early)
    assert charges_in_ledger(env, month.free_id) == []  # the free plan charges nothing


def test_invoice_total_is_the_charges_and_the_balance_change(env: Env, month: Month) -> None:
    payer = month.payer
    invoice = env.ok("GET", f"/billing/invoices/{PERIOD}", payer.session)
    charges = charges_in_ledger(env, month.payer_id)
    total = sum(amount for _, _, amount in charges)
    assert total == sum(expected_charges(month).values()) > 0
    assert invoice["status"] == "issued"
    assert invoice["total_minor"] == total
    assert invoice["total"] == f"{total // 100}.{total % 100:02d}"
    assert sum(line["amount_minor"] for line in invoice["lines"]) == total
    names = {line["app"] for line in invoice["lines"]}
    assert {n.split("-")[0] for n in names} == {"web", "worker", "batch"}
    hours = sum(
        Fraction(line["instance_hours"]).limit_denominator(10**6) for line in invoice["lines"]
    )
    truth_ms = sum(ms for k, ms in truth_by_hour(month).items() if k[0] == month.payer_id)
    assert abs(hours - Fraction(truth_ms, HOUR_MS)) < Fraction(len(invoice["lines"]), 10**6)

    balance = env.ok("GET", "/billing/balance", payer.session)
    assert balance["balance_minor"] == FIRST_TOPUP + RESUME_TOPUP - total
    change = month.balance_before["balance_minor"] - balance["balance_minor"]
    assert total == change + RESUME_TOPUP  # the month's only other movement was the top-up
    # The ledger agrees: top-ups minus charges, to the cent.
    txs = env.ok("GET", "/billing/transactions", payer.session, params={"limit": 1000})
    assert sum(t["amount_minor"] for t in txs) == balance["balance_minor"]
    assert sorted(t["amount_minor"] for t in txs if t["kind"] == "topup") == [
        FIRST_TOPUP,
        RESUME_TOPUP,
    ]
    # Mid-month the invoice was a draft of the charges so far.
    assert month.draft["status"] == "draft"
    assert 0 < month.draft["total_minor"] < total


def test_invoice_csv(env: Env, month: Month) -> None:
    resp = env.call(
        "GET", f"/billing/invoices/{PERIOD}", month.payer.session, params={"format": "csv"}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["app", "size", "instance_hours", "amount"]
    assert rows[-1][0] == "TOTAL"
    invoice = env.ok("GET", f"/billing/invoices/{PERIOD}", month.payer.session)
    assert rows[-1][3] == invoice["total"]
    assert sum(Decimal(r[3]) for r in rows[1:-1]) == Decimal(invoice["total"])


def test_usage_export_json_and_csv(env: Env, month: Month) -> None:
    truth = truth_by_hour(month)
    params = {"from": "2026-03-01", "to": "2026-04-01"}
    for who, tenant_id in ((month.payer, month.payer_id), (month.free, month.free_id)):
        expected = {k: ms for k, ms in truth.items() if k[0] == tenant_id}
        items = env.ok("GET", "/billing/usage", who.session, params=params)
        assert len(items) == len(expected)
        got = {(tenant_id, i["app_id"], i["size"], i["hour_start"]): i for i in items}
        assert {k: round(v["instance_seconds"] * 1000) for k, v in got.items()} == expected
        assert all(M <= i["hour_start"] < NEXT_MONTH for i in items)
        resp = env.call("GET", "/billing/usage", who.session, params={**params, "format": "csv"})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(resp.text)))
        assert len(rows) == len(expected)
        assert sum(Decimal(r["instance_seconds"]) * 1000 for r in rows) == sum(expected.values())
        assert {r["app"] for r in rows} <= {i["app"] for i in items}
        first = datetime.fromisoformat(rows[0]["hour_start_utc"])
        assert first.tzinfo is not None and first >= datetime(2026, 3, 1, tzinfo=UTC)
    # A narrower period gives exactly its hours.
    day = env.ok(
        "GET",
        "/billing/usage",
        month.payer.session,
        params={"from": "2026-03-15", "to": "2026-03-16"},
    )
    assert {i["hour_start"] for i in day} <= set(range(M + 14 * DAY, M + 15 * DAY, HOUR))
    batch = sum(
        round(i["instance_seconds"] * 1000) for i in day if i["app_id"] == month.apps["batch"]
    )
    assert batch == 12 * HOUR_MS  # the run reported twice counts once


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-13-01"},
        {"from": "yesterday"},
        {"from": "2026-03-10", "to": "2026-03-01"},
        {"from": "2026-03-01", "to": "2026-03-01"},
        {"from": "2020-01-01", "to": "2026-01-01"},
        {"format": "xml"},
        {"from": "2026-03-01T00:00:00"},
    ],
)
def test_bad_usage_periods_are_422(env: Env, month: Month, params: dict[str, str]) -> None:
    assert_error(env.call("GET", "/billing/usage", month.payer.session, params=params), 422)


@pytest.mark.parametrize("period", ["2026-3", "2026-13", "26-03", "2026-03-01", "march", "1999-12"])
def test_bad_invoice_periods_are_422(env: Env, month: Month, period: str) -> None:
    resp = env.call("GET", f"/billing/invoices/{period}", month.payer.session)
    assert_error(resp, 422, ("invalid_period", "invalid"))


def test_arrears_warn_suspend_resume(env: Env, month: Month) -> None:
    payer = month.payer
    kinds = [n["kind"] for n in reversed(env.ok("GET", "/billing/notifications", payer.session))]
    assert kinds == ["low_balance", "suspended", "resumed"]
    seen = month.while_suspended
    assert seen["balance"]["suspended"] is True and seen["balance"]["balance_minor"] < 0
    assert seen["balance"]["below_zero_since"] is not None
    assert month.suspended_at - seen["balance"]["below_zero_since"] * 1000 >= GRACE * 1000
    for attempt in ("deploy", "scale_up", "restart"):
        assert_error(seen[attempt], 402, "suspended")
    assert seen["releases"] == 1 and seen["scale"] == 2
    # The operator's credit resumed the tenant at the very next pass.
    resumed = month.after_resume
    assert resumed["balance"]["suspended"] is False
    assert resumed["balance"]["balance_minor"] > 0
    assert resumed["deploy"].status_code == 201
    # While suspended nothing ran: no interval of the payer overlaps the suspension.
    for iv in month.agent.intervals:
        if iv.tenant_id == month.payer_id:
            stop = iv.stop_ms if iv.stop_ms is not None else month.end_ms
            assert stop <= month.suspended_at + 30_000 or iv.start_ms >= month.resumed_at
    # The desired scale was remembered throughout.
    wanted = month.scales[0]
    assert all(s == wanted for s in month.scales)
    assert sorted(wanted.values()) == [1, 1, 2]
    assert env.ok("GET", "/billing/balance", payer.session)["suspended"] is False


def test_billing_events_are_queued_as_webhooks(env: Env, month: Month) -> None:
    deliveries = env.ok("GET", "/billing/webhooks", month.payer.session)
    assert sorted(d["event"] for d in deliveries) == [
        "invoice_issued",
        "low_balance",
        "resumed",
        "suspended",
    ]
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in deliveries)
    with env.db() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.tenant_id == month.payer_id)
        ).all()
    payloads = {r.event: r.payload_json for r in rows}
    assert (
        month.payer.tenant in payloads["suspended"]
        and '"balance_minor": -' in payloads["suspended"]
    )
    issued = json.loads(payloads["invoice_issued"])
    invoice = env.ok("GET", f"/billing/invoices/{PERIOD}", month.payer.session)
    assert (issued["period"], issued["total_minor"]) == (PERIOD, invoice["total_minor"])
    operator_view = {d["id"] for d in env.ok("GET", "/admin/webhooks", env.admin)}
    assert {d["id"] for d in deliveries} <= operator_view


def test_every_tenant_with_usage_gets_its_invoice_issued(env: Env, month: Month) -> None:
    """Also the tenant whose last usage was days before the month ended."""
    early = month.early
    invoice = env.ok("GET", f"/billing/invoices/{PERIOD}", early.session)
    charges = charges_in_ledger(env, env.tenant_id(early.tenant))
    assert charges and invoice["total_minor"] == sum(a for _, _, a in charges)
    assert max(hour for _, hour, _ in charges) < at(5, 13) // 1000
    assert invoice["status"] == "issued"
    free = env.ok("GET", f"/billing/invoices/{PERIOD}", month.free.session)
    assert (free["status"], free["total_minor"]) == ("issued", 0)
