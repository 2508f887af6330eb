"""Billing passes over time: a plan changed mid-month neither stops billing nor re-prices hours
already charged, and a pass late in the month costs no more store statements than an early one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from berth.billing.periods import month_bounds
from berth.billing.watermark import Watermark
from berth.controllers.billing import BillingController
from berth.controllers.metering import record_watermark
from berth.store.tables import RunIntervalRow, new_id
from tests.api.conftest import Account, Env, charges_in_ledger

pytestmark = pytest.mark.store

M, NEXT_MONTH = month_bounds(2026, 5)
HOUR = 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ReportedBilling(BillingController):
    """Billing right after a reconciler pass at the same instant: every report is in."""

    def run_once(self):  # type: ignore[no-untyped-def]
        with self.sessions() as session:
            record_watermark(session, Watermark(self.clock(), self.clock()))
            session.commit()
        return super().run_once()


def run_gb_instance(env: Env, tenant: str, app: str) -> str:
    """One 1 GB, 1 CPU instance of ``app`` running from the start of the month on."""
    with env.db() as session:
        session.add(
            RunIntervalRow(
                id=new_id(),
                container_id=f"ctr-{app}",
                tenant_id=env.tenant_id(tenant),
                app_id=app,
                memory_mb=1024,
                cpus_milli=1000,
                started_at=M,
                stopped_at=None,
            )
        )
        session.commit()
    return env.tenant_id(tenant)


@contextmanager
def counting_statements(env: Env) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2])[:80])

    event.listen(env.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(env.engine, "before_cursor_execute", count)


@pytest.fixture(scope="module")
def tenants(env: Env) -> tuple[Account, Account, str, str]:
    one, two = env.signup("changer"), env.signup("bystander")
    cheap = env.plan(name="per-gb-1", price_per_gb_hour="1.00")
    for who in (one, two):
        env.assign(who.tenant, cheap)
        env.credit(who.tenant, "1000.00")
    return (
        one,
        two,
        run_gb_instance(env, one.tenant, "app-one"),
        run_gb_instance(env, two.tenant, "app-two"),
    )


def test_a_plan_change_mid_month_applies_from_the_next_hour(
    env: Env, tenants: tuple[Account, Account, str, str]
) -> None:
    one, _two, one_id, two_id = tenants
    clock = Clock(M + 3 * HOUR + 60)
    billing = ReportedBilling(env.settings, env.platform.sessions, clock=clock)
    billing.run_once()
    assert [a for _, _, a in sorted(charges_in_ledger(env, one_id))] == [100, 100, 100]

    env.assign(one.tenant, env.plan(name="per-gb-2", price_per_gb_hour="2.00"))
    for _ in range(2):
        clock.now += HOUR
        billing.run_once()  # raised idempotency_conflict for every later pass, for everyone
    charged = {hour - M: amount for _, hour, amount in charges_in_ledger(env, one_id)}
    assert charged == {0: 100, HOUR: 100, 2 * HOUR: 100, 3 * HOUR: 200, 4 * HOUR: 200}
    # The other tenant's billing went on as before.
    assert [a for _, _, a in charges_in_ledger(env, two_id)] == [100] * 5
    invoice = env.ok("GET", "/billing/invoices/2026-05", one.session)
    assert (invoice["status"], invoice["total_minor"]) == ("draft", 700)
    assert env.ok("GET", "/billing/balance", one.session)["balance_minor"] == 100_000 - 700


def test_a_late_pass_costs_what_an_early_one_does(
    env: Env, tenants: tuple[Account, Account, str, str]
) -> None:
    _, _, one_id, _ = tenants
    clock = Clock(M + 6 * HOUR + 60)
    billing = ReportedBilling(env.settings, env.platform.sessions, clock=clock)
    billing.run_once()
    clock.now += HOUR
    with counting_statements(env) as early:
        assert billing.run_once().charges == 2
    clock.now = NEXT_MONTH - 2 * HOUR + 60  # the server was down for most of the month
    assert billing.run_once().charges == 2 * (31 * 24 - 2 - 7)
    clock.now += HOUR
    with counting_statements(env) as late:
        assert billing.run_once().charges == 2
    assert len(late) == len(early), (early, late)
    assert len(charges_in_ledger(env, one_id)) == 31 * 24 - 1
