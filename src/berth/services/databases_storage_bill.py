"""Managed databases' storage billed per closed UTC hour through the ledger (the statistic and
the arithmetic are ``berth.billing.storage``'s).

A cursor (``Meta`` ``storage_billed_until``) says up to which hour every database was billed;
each pass bills the hours closed since, for every database that existed in them (deleted ones
up to their deletion), at its tenant's plan's storage price (or the installation's
``database_storage_price_per_gib_month_minor``). Each database-hour is a ``StorageHourRow`` and,
when not zero, a ledger charge under the same key ``storage:{tenant}:{database}:{hour}``: a
rerun, or a pass that died before moving the cursor, posts nothing twice. Tenants without a plan
get rows (what they held) but no charge, as instance usage is metered but not charged for them.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session, aliased

from berth.billing import storage
from berth.billing.money import get_currency
from berth.billing.periods import HOUR_SECONDS, month_bounds, month_of
from berth.billing.plans import Plan
from berth.services import billing as bsvc
from berth.settings import Settings
from berth.store.tables import (
    DatabaseMeasurement,
    ManagedDatabase,
    Meta,
    StorageHourRow,
    new_id,
)

BILLED_UNTIL = "storage_billed_until"
MAX_HOURS_PER_PASS = 24 * 40  # a long outage is caught up over several passes


def storage_price(plan: Plan, settings: Settings) -> int:
    if plan.storage_price_per_gib_month_minor is not None:
        return plan.storage_price_per_gib_month_minor
    return settings.database_storage_price_per_gib_month_minor


def _measurements(
    session: Session, database_id: str, start: int, end: int
) -> list[storage.Measurement]:
    """The database's measurements in ``[start, end)`` and the last one before ``start``."""
    inside = session.execute(
        select(DatabaseMeasurement.measured_at, DatabaseMeasurement.bytes_used).where(
            DatabaseMeasurement.database_id == database_id,
            DatabaseMeasurement.measured_at >= start,
            DatabaseMeasurement.measured_at < end,
        )
    ).all()
    before = session.execute(
        select(DatabaseMeasurement.measured_at, DatabaseMeasurement.bytes_used)
        .where(
            DatabaseMeasurement.database_id == database_id,
            DatabaseMeasurement.measured_at < start,
        )
        .order_by(DatabaseMeasurement.measured_at.desc())
        .limit(1)
    ).all()
    return [storage.Measurement(float(t), int(b)) for t, b in [*before, *inside]]


def _byte_hours(session: Session, database_id: str, start: int, end: int) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(StorageHourRow.bytes_billed), 0)).where(
            StorageHourRow.database_id == database_id,
            StorageHourRow.hour_start >= start,
            StorageHourRow.hour_start < end,
        )
    )
    return int(total or 0)


def bill_storage(session: Session, settings: Settings, now: float) -> int:
    """Bill every closed hour since the cursor; returns how many ledger charges were new."""
    cursor = session.get(Meta, BILLED_UNTIL)
    if cursor is None:
        first = session.scalar(select(func.min(DatabaseMeasurement.measured_at)))
        if first is None:
            return 0
        cursor = Meta(key=BILLED_UNTIL, value=str(int(first) - int(first) % HOUR_SECONDS))
        session.add(cursor)
    start = int(cursor.value)
    end = min(int(now) - int(now) % HOUR_SECONDS, start + MAX_HOURS_PER_PASS * HOUR_SECONDS)
    if end <= start:
        return 0
    dbs = list(
        session.scalars(
            select(ManagedDatabase).where(
                ManagedDatabase.created_at < end,
                ManagedDatabase.deleted_at.is_(None) | (ManagedDatabase.deleted_at > start),
            )
        )
    )
    plans = bsvc.plans_of(session, {db.tenant_id for db in dbs})
    done = set(
        session.scalars(
            select(StorageHourRow.key).where(
                StorageHourRow.hour_start >= start, StorageHourRow.hour_start < end
            )
        )
    )
    rows: list[StorageHourRow] = []
    txs = []
    for db in sorted(dbs, key=lambda d: d.id):
        plan = plans.get(db.tenant_id)
        price = storage_price(plan, settings) if plan is not None else 0
        currency = plan.currency if plan is not None else get_currency(settings.currency)
        measurements = _measurements(session, db.id, start, end)
        until = db.deleted_at if db.state != "active" else None
        before_by_month: dict[tuple[int, int], int] = defaultdict(int)
        seeded: set[tuple[int, int]] = set()
        for hour in range(start, end, HOUR_SECONDS):
            billed = storage.bytes_for_hour(measurements, hour, until=until)
            if billed is None:
                continue
            month = month_of(hour)
            if month not in seeded:  # earlier hours of the month, billed in earlier passes
                month_start, _ = month_bounds(*month)
                before_by_month[month] = _byte_hours(
                    session, db.id, month_start, max(start, month_start)
                )
                seeded.add(month)
            byte_hours_before = before_by_month[month]
            before_by_month[month] += billed
            key = storage.storage_key(db.tenant_id, db.id, hour)
            if key in done:
                continue
            amount = storage.hour_amount(price, byte_hours_before, billed) if plan else 0
            rows.append(
                StorageHourRow(
                    id=new_id(),
                    key=key,
                    tenant_id=db.tenant_id,
                    database_id=db.id,
                    database_name=db.name,
                    hour_start=hour,
                    bytes_billed=billed,
                    price_per_gib_month_minor=price,
                    amount_minor=amount,
                    created_at=now,
                )
            )
            tx = storage.storage_transaction(
                db.tenant_id, db.id, db.name, hour, amount, now, currency=currency
            )
            if tx is not None:
                txs.append((tx, db.tenant_id))
    charges = bsvc.post_many(session, txs)
    session.add_all(rows)
    cursor.value = str(end)
    session.flush()
    return charges


def prune_measurements(session: Session, before: float) -> int:
    """Forget measurements older than ``before``, but each database's newest of them (the
    bill of an hour with no measurement falls back on it)."""
    newer = aliased(DatabaseMeasurement)
    stmt = delete(DatabaseMeasurement).where(
        DatabaseMeasurement.measured_at < before,
        exists().where(
            newer.database_id == DatabaseMeasurement.database_id,
            newer.measured_at > DatabaseMeasurement.measured_at,
            newer.measured_at < before,
        ),
    )
    return int(session.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
