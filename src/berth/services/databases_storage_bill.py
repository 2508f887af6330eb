"""Managed databases' storage billed per closed UTC hour through the ledger (the statistic and
the arithmetic are ``berth.billing.storage``'s).

A cursor (``Meta`` ``storage_billed_until``) says up to which hour every database was billed;
each pass bills the hours closed since, for every database that existed in them (deleted ones
up to their deletion), at its tenant's plan's storage price (or the installation's
``database_storage_price_per_gib_month_minor``). Each database-hour is a ``StorageHourRow`` and,
when not zero, a ledger charge under the same key ``storage:{tenant}:{database}:{hour}``: a
rerun, or a pass that died before moving the cursor, posts nothing twice. Tenants without a plan
get rows (what they held) but no charge, as instance usage is metered but not charged for them.

Two paths bill: the usage pass after it measures, and the billing run before it meters and
cuts invoices (so a month's last hour is on that month's invoice, not the next one's). Both
go through ``bill_closed_storage``: one at a time in a process (a lock held until the commit),
the cursor row locked (``FOR UPDATE``) against another server's pass, and the unique keys
behind both: a path that loses a race rolls back and bills nothing twice.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from berth.billing import storage
from berth.billing.money import get_currency
from berth.billing.periods import HOUR_SECONDS, month_bounds, month_of
from berth.billing.plans import Plan
from berth.services import billing as bsvc
from berth.settings import Settings
from berth.store.tables import (
    DatabaseMeasurement,
    InvoiceRow,
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


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _measurements(
    session: Session, database_ids: list[str], start: int, end: int
) -> dict[str, list[storage.Measurement]]:
    """Each database's measurements in ``[start, end)`` and its last one before ``start``, in a
    few statements whatever the number of databases."""
    out: dict[str, list[storage.Measurement]] = defaultdict(list)
    m = DatabaseMeasurement
    for chunk in _chunks(database_ids):
        inside = session.execute(
            select(m.database_id, m.measured_at, m.bytes_used).where(
                m.database_id.in_(chunk), m.measured_at >= start, m.measured_at < end
            )
        )
        last = (
            select(m.database_id, func.max(m.measured_at).label("at"))
            .where(m.database_id.in_(chunk), m.measured_at < start)
            .group_by(m.database_id)
            .subquery()
        )
        before = session.execute(
            select(m.database_id, m.measured_at, m.bytes_used).join(
                last, (last.c.database_id == m.database_id) & (last.c.at == m.measured_at)
            )
        )
        for database_id, at, size in [*before, *inside]:
            out[database_id].append(storage.Measurement(float(at), int(size)))
    return out


def _byte_hours(session: Session, database_ids: list[str], start: int, end: int) -> dict[str, int]:
    """Each database's byte-hours billed in ``[start, end)``."""
    out: dict[str, int] = {}
    for chunk in _chunks(database_ids):
        rows = session.execute(
            select(StorageHourRow.database_id, func.sum(StorageHourRow.bytes_billed))
            .where(
                StorageHourRow.database_id.in_(chunk),
                StorageHourRow.hour_start >= start,
                StorageHourRow.hour_start < end,
            )
            .group_by(StorageHourRow.database_id)
        )
        out.update({database_id: int(total or 0) for database_id, total in rows})
    return out


def bill_storage(session: Session, settings: Settings, now: float) -> int:
    """Bill every closed hour since the cursor; returns how many ledger charges were new."""
    cursor = session.get(Meta, BILLED_UNTIL, with_for_update=True)
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
    ids = sorted(db.id for db in dbs)
    measured = _measurements(session, ids, start, end)
    # The month the window starts in may have hours billed by earlier passes; later months
    # start inside the window.
    first_month = month_of(start)
    earlier = _byte_hours(session, ids, month_bounds(*first_month)[0], start)
    issued = {
        (tenant_id, period)
        for tenant_id, period in session.execute(
            select(InvoiceRow.tenant_id, InvoiceRow.period).where(
                InvoiceRow.tenant_id.in_(sorted({db.tenant_id for db in dbs})),
                InvoiceRow.period >= _period(first_month),
            )
        )
    }
    for db in sorted(dbs, key=lambda d: d.id):
        plan = plans.get(db.tenant_id)
        price = storage_price(plan, settings) if plan is not None else 0
        currency = plan.currency if plan is not None else get_currency(settings.currency)
        measurements = measured.get(db.id, [])
        until = db.deleted_at if db.state != "active" else None
        before_by_month: dict[tuple[int, int], int] = defaultdict(int)
        before_by_month[first_month] = earlier.get(db.id, 0)
        for hour, billed in sorted(
            storage.bytes_by_hour(measurements, start, end, until=until).items()
        ):
            month = month_of(hour)
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
                    invoice_period=_open_period(issued, db.tenant_id, month),
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


_ONE_AT_A_TIME = threading.Lock()


def bill_closed_storage(
    session: Session,
    settings: Settings,
    now: float,
    fence: Callable[[Session], None] = lambda session: None,
) -> int:
    """``bill_storage`` and its commit, as one step of its own: what the session held before
    must be committed already. Returns the new ledger charges (0 when another path billed the
    same hours first)."""
    with _ONE_AT_A_TIME:
        try:
            charges = bill_storage(session, settings, now)
            fence(session)
            session.commit()
        except IntegrityError:
            # Another server's pass billed these hours meanwhile: its rows stand, ours go.
            session.rollback()
            return 0
        except BaseException:
            session.rollback()
            raise
    return charges


def _period(month: tuple[int, int]) -> str:
    return f"{month[0]:04d}-{month[1]:02d}"


def _open_period(issued: set[tuple[str, str]], tenant_id: str, month: tuple[int, int]) -> str:
    """The month's invoice, or the first later one not issued yet: an hour billed after its
    month's invoice was frozen (the billing loop may close a month minutes before this pass
    bills its last hour) is charged on the next invoice, never lost from one."""
    year, number = month
    while (tenant_id, _period((year, number))) in issued:
        year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return _period((year, number))


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
