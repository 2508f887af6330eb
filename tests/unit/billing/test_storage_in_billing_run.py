"""The billing run bills closed storage hours before it cuts invoices: a month's last hour of
database storage is on that month's invoice even when no usage pass ran after the month ended,
and the usage pass that comes later bills nothing twice. A real store (SQLite, migrated) and
the real billing controller, with a clock set past the month's end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.billing import BillingController
from berth.controllers.metering import REPORTED_THROUGH
from berth.services import billing as bsvc
from berth.services.databases_storage_bill import bill_closed_storage
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import (
    DatabaseMeasurement,
    DbServer,
    InvoiceRow,
    ManagedDatabase,
    Meta,
    RunIntervalRow,
    StorageHourRow,
    Tenant,
    new_id,
)

HOUR = 3600
GIB = 1024**3
MONTH_END = int(datetime(2027, 2, 1, tzinfo=UTC).timestamp())  # January 2027 ends here
LAST_HOUR = MONTH_END - HOUR


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = Settings(home=tmp_path, database_url="")
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    try:
        yield settings, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _tenant_with_a_database(settings: Settings, session: Session) -> tuple[str, str]:
    plan = bsvc.create_plan(
        session,
        settings,
        bsvc.PlanInput(name=f"p-{new_id()[:6]}", price_per_gb_hour="1",
                       storage_price_per_gib_month="100"),
    )  # fmt: skip
    tenant = Tenant(id=new_id(), name=f"t-{new_id()[:8]}", plan_id=plan.id)
    server = DbServer(
        id=new_id(), name=f"s-{new_id()[:6]}", engine="postgres",
        admin_url="postgresql://admin:x@127.0.0.1:1/", host="127.0.0.1", port=1, capacity=10,
    )  # fmt: skip
    session.add_all([tenant, server])
    session.flush()
    db = ManagedDatabase(
        id=new_id(), tenant_id=tenant.id, name="pg", engine="postgres", server_id=server.id,
        size_mb=1024, connection_limit=5, created_at=MONTH_END - 3 * HOUR,
    )  # fmt: skip
    session.add(db)
    session.flush()
    # 1 GiB held since three hours before the month's end, measured then and in its last hour.
    for at in (MONTH_END - 3 * HOUR + 60, LAST_HOUR + 600):
        session.add(
            DatabaseMeasurement(
                id=new_id(), database_id=db.id, tenant_id=tenant.id, measured_at=at,
                bytes_used=GIB, connections=0,
            )
        )  # fmt: skip
    # An instance ran all month's last day: the month closes by metering and is invoiced.
    session.add(
        RunIntervalRow(
            id=new_id(), container_id=f"c-{new_id()[:8]}", tenant_id=tenant.id, app_id="app-1",
            memory_mb=1024, cpus_milli=1000, started_at=MONTH_END - 24 * HOUR, stopped_at=None,
        )
    )  # fmt: skip
    # The storage pass ran before the month's end: the hours up to the last one are billed.
    session.add(Meta(key=REPORTED_THROUGH, value=str(MONTH_END + 600)))
    session.commit()
    assert bill_closed_storage(session, settings, LAST_HOUR + 700) > 0
    billed = set(session.scalars(select(StorageHourRow.hour_start)))
    assert LAST_HOUR not in billed and LAST_HOUR - HOUR in billed
    return tenant.id, db.id


def test_the_months_last_storage_hour_is_on_that_months_invoice(
    store: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sessions = store
    with sessions() as session:
        tenant_id, database_id = _tenant_with_a_database(settings, session)
    billing = BillingController(settings, sessions, clock=lambda: MONTH_END + 300)
    stats = billing.run_once()
    assert stats.invoices == 1 and stats.storage_charges == 1
    with sessions() as session:
        last = session.scalar(select(StorageHourRow).where(StorageHourRow.hour_start == LAST_HOUR))
        assert last is not None and last.invoice_period == "2027-01" and last.amount_minor > 0
        invoice = session.scalar(select(InvoiceRow).where(InvoiceRow.tenant_id == tenant_id))
        assert invoice is not None and invoice.period == "2027-01"
        lines = [line for line in json.loads(invoice.lines_json) if line.get("kind") == "storage"]
        assert [line["database_id"] for line in lines] == [database_id]
        # Three closed hours of 1 GiB each: every one of the month's storage hours is on it.
        assert lines[0]["gib_hours"] == pytest.approx(3.0)
        billed_rows = session.scalars(
            select(StorageHourRow).where(StorageHourRow.tenant_id == tenant_id)
        ).all()
        assert invoice.total_minor >= sum(r.amount_minor for r in billed_rows)
        # The usage pass's path later (and the billing run again) bill nothing twice.
        assert bill_closed_storage(session, settings, MONTH_END + 900) == 0
    assert billing.run_once().storage_charges == 0
    with sessions() as session:
        hours = session.scalars(
            select(StorageHourRow.hour_start).where(StorageHourRow.database_id == database_id)
        ).all()
        assert sorted(hours) == [LAST_HOUR - 2 * HOUR, LAST_HOUR - HOUR, LAST_HOUR]
        assert session.scalar(select(InvoiceRow.id).where(InvoiceRow.period == "2027-02")) is None
