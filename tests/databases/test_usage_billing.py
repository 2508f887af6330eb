"""Storage billed from what was measured on the real servers: passes at known times over two
closed hours put exactly the expected charges in the ledger (the largest measurement of each
hour, or the last one before an hour without any; Fraction-exact, rounded month-to-date as the
instance-hour rating does); passes run again, or a pass at the same time, add nothing; the
tenant's usage export and invoice show the storage lines and the invoice's total is what the
ledger took."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from sqlalchemy import select

from berth.billing.storage import GIB, HOURS_PER_MONTH
from berth.databases.names import Engine
from berth.services import billing as bsvc
from berth.store.tables import DatabaseMeasurement, ManagedDatabase, Tenant
from tests.api.conftest import assert_error, charges_in_ledger
from tests.databases.usage_world import HOUR, World, fill, world_on

PRICE_MAJOR = "50000"  # per GiB-month: some minor units per hour for a few MB
PRICE_MINOR = 5_000_000


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str, redis_admin_url: str
) -> Iterator[World]:
    urls: dict[Engine, str] = {"postgres": postgres_admin_url, "redis": redis_admin_url}
    with world_on(tmp_path_factory.mktemp("berth-storage-home"), urls) as made:
        yield made


def _measured(world: World, database_id: str) -> list[tuple[float, int]]:
    with world.env.db() as session:
        rows = session.execute(
            select(DatabaseMeasurement.measured_at, DatabaseMeasurement.bytes_used)
            .where(DatabaseMeasurement.database_id == database_id)
            .order_by(DatabaseMeasurement.measured_at)
        )
        return [(float(t), int(b)) for t, b in rows]


def _round(x: Fraction) -> int:
    return round(x)


def test_two_closed_hours_bill_exactly_what_was_measured(world: World) -> None:
    env = world.env
    account = env.signup(f"s{secrets.token_hex(3)}")
    token = account.session
    plan = env.plan(storage_price_per_gib_month=PRICE_MAJOR)
    env.assign(account.tenant, plan)
    with env.db() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == account.tenant))
        assert tenant is not None
        tenant_id = tenant.id
    env.ok("POST", "/databases", token, json={"name": "pg", "engine": "postgres"}, status=201)
    env.ok("POST", "/databases", token, json={"name": "kv", "engine": "redis"}, status=201)
    with env.db() as session:
        ids = {
            db.name: db.id
            for db in session.scalars(
                select(ManagedDatabase).where(ManagedDatabase.tenant_id == tenant_id)
            )
        }
    pg = env.ok("GET", "/databases/pg/credentials", token)
    kv = env.ok("GET", "/databases/kv/credentials", token)

    h0 = int(world.now) - int(world.now) % HOUR
    world.now = h0 + 100
    world.usage_pass()  # hour h0: the empty databases
    fill("postgres", pg, 3)
    fill("redis", kv, 2)
    world.now = h0 + 1800
    world.usage_pass()  # hour h0: larger, its largest
    world.now = h0 + HOUR + 60
    first = world.usage_pass()  # hour h0+1: measured once; h0 closed: billed
    assert first["storage_charges"] == 2, first
    # hour h0+2 has no measurement (a pass did not run): the last one before it is billed
    world.now = h0 + 3 * HOUR + 30
    world.usage_pass()
    again = world.usage_pass()  # the same time again: nothing new
    assert again["storage_charges"] == 0

    expected: dict[str, int] = {}
    for name, database_id in ids.items():
        measured = _measured(world, database_id)
        in_hour = {
            hour: [b for t, b in measured if hour <= t < hour + HOUR]
            for hour in (h0, h0 + HOUR, h0 + 2 * HOUR)
        }
        billed = {
            h0: max(in_hour[h0]),
            h0 + HOUR: max(in_hour[h0 + HOUR]),
            h0 + 2 * HOUR: [b for t, b in measured if t < h0 + 2 * HOUR][-1],
        }
        assert not in_hour[h0 + 2 * HOUR] and billed[h0] > min(in_hour[h0])
        byte_hours = 0
        for hour in sorted(billed):
            before = _round(Fraction(byte_hours * PRICE_MINOR, GIB * HOURS_PER_MONTH))
            byte_hours += billed[hour]
            after = _round(Fraction(byte_hours * PRICE_MINOR, GIB * HOURS_PER_MONTH))
            if after - before:
                expected[f"storage:{tenant_id}:{database_id}:{hour}"] = after - before
    ledger = {key: amount for key, _, amount in charges_in_ledger(env, tenant_id)}
    assert ledger == expected and all(a > 0 for a in expected.values()), (ledger, expected)

    # The tenant sees it: usage rows per database and hour, invoice lines, the total.
    day = datetime.fromtimestamp(h0, UTC).date()
    usage = env.ok(
        "GET",
        "/billing/usage",
        token,
        params={"from": day.isoformat(), "to": (day + timedelta(days=2)).isoformat()},
    )
    storage_rows = [u for u in usage if u["kind"] == "storage"]
    assert {(u["database"], u["hour_start"]) for u in storage_rows} == {
        (name, hour) for name in ids for hour in (h0, h0 + HOUR, h0 + 2 * HOUR)
    }
    period = f"{day.year:04d}-{day.month:02d}"
    invoice = env.ok("GET", f"/billing/invoices/{period}", token)
    lines = {ln["database"]: ln for ln in invoice["lines"] if ln["kind"] == "storage"}
    assert set(lines) == set(ids)
    assert invoice["total_minor"] == sum(expected.values())
    assert sum(ln["amount_minor"] for ln in lines.values()) == sum(expected.values())
    assert all(ln["unit_price_minor"] == PRICE_MINOR for ln in lines.values())
    # Frozen as the billing loop issues it (its webhook carries these lines too).
    with env.db() as session:
        issued = bsvc.issue_invoice(session, tenant_id, period)
        assert issued is not None
        frozen = [ln for ln in json.loads(issued.lines_json) if ln.get("kind") == "storage"]
        assert issued.total_minor == sum(expected.values())
        assert {ln["database"]: ln["amount_minor"] for ln in frozen} == {
            name: ln["amount_minor"] for name, ln in lines.items()
        }
        session.rollback()
    for name in ids:
        env.ok("DELETE", f"/databases/{name}", token)


def test_a_plans_storage_price_is_checked(world: World) -> None:
    for bad in ("-1", "1e3", "abc", " 5", "1.234"):
        resp = world.env.call(
            "POST",
            "/admin/plans",
            world.env.admin,
            json={"name": f"p{secrets.token_hex(3)}", "storage_price_per_gib_month": bad},
        )
        assert_error(resp, 422, "invalid_amount")
