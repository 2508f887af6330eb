"""Plans, quotas, the ledger in the store, payments, usage export and invoices.

The pure rules live in ``berth.billing``; this module reads and writes their inputs and outputs.
Ledger writes are idempotent by key: a retried top-up or charge is a no-op, a different one under
a used key is a 409. Balances are sums of entries, so they never change without an entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.billing import ledger
from berth.billing.metering import UsageRecord
from berth.billing.money import Currency, format_amount, get_currency, parse_amount
from berth.billing.periods import month_bounds
from berth.billing.plans import InstanceSize, Plan, PlanLimits, QuotaDelta, QuotaUsage, check_quota
from berth.billing.rating import Invoice, ResourceUsage, invoice_for_month
from berth.billing.storage import STORAGE_KEY_PREFIX, StorageLine, storage_lines
from berth.billing.webhooks import verify
from berth.databases.dedicated_servers import held_memory_mb
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.services.auth import Principal
from berth.settings import Settings
from berth.store.tables import (
    App,
    Domain,
    InvoiceRow,
    LedgerEntryRow,
    LedgerTx,
    ManagedDatabase,
    PlanRow,
    StorageHourRow,
    Tenant,
    UsageRow,
    new_id,
)


class Suspended(BerthError):
    status = 402
    code = "suspended"


# -- plans and quotas ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanInput:
    name: str
    price_per_gb_hour: str = "0"
    price_per_cpu_hour: str = "0"
    included_gb_hours: int = 0
    included_cpu_hours: int = 0
    max_apps: int | None = None
    max_instances: int | None = None
    max_memory_mb: int | None = None
    max_domains: int | None = None
    instance_disk_mb: int | None = None
    max_concurrent_builds: int | None = None
    build_memory_mb: int | None = None
    build_cpus_milli: int | None = None
    build_disk_mb: int | None = None
    egress_internet: bool = True
    storage_price_per_gib_month: str | None = None  # major units; None: the setting
    max_request_body_mb: int | None = None  # MiB at the ingress; None: the setting


def to_plan(row: PlanRow) -> Plan:
    return Plan(
        name=row.name,
        currency=get_currency(row.currency),
        price_per_gb_hour_minor=row.price_per_gb_hour_minor,
        price_per_cpu_hour_minor=row.price_per_cpu_hour_minor,
        limits=PlanLimits(row.max_apps, row.max_instances, row.max_memory_mb, row.max_domains),
        included_gb_hours=row.included_gb_hours,
        included_cpu_hours=row.included_cpu_hours,
        storage_price_per_gib_month_minor=row.storage_price_per_gib_month_minor,
        max_request_body_mb=row.max_request_body_mb,
    )


def create_plan(session: Session, settings: Settings, body: PlanInput) -> PlanRow:
    currency = get_currency(settings.currency)
    row = PlanRow(
        id=new_id(),
        name=body.name.strip(),
        currency=currency.code,
        price_per_gb_hour_minor=parse_amount(body.price_per_gb_hour, currency, allow_zero=True),
        price_per_cpu_hour_minor=parse_amount(body.price_per_cpu_hour, currency, allow_zero=True),
        included_gb_hours=body.included_gb_hours,
        included_cpu_hours=body.included_cpu_hours,
        max_apps=body.max_apps,
        max_instances=body.max_instances,
        max_memory_mb=body.max_memory_mb,
        max_domains=body.max_domains,
        instance_disk_mb=body.instance_disk_mb,
        max_concurrent_builds=body.max_concurrent_builds,
        build_memory_mb=body.build_memory_mb,
        build_cpus_milli=body.build_cpus_milli,
        build_disk_mb=body.build_disk_mb,
        egress_internet=body.egress_internet,
        max_request_body_mb=body.max_request_body_mb,
        storage_price_per_gib_month_minor=(
            None
            if body.storage_price_per_gib_month is None
            else parse_amount(body.storage_price_per_gib_month, currency, allow_zero=True)
        ),
    )
    to_plan(row)  # validates every field with the domain's rules
    if session.scalar(select(PlanRow.id).where(PlanRow.name == row.name)) is not None:
        raise Conflict(f"plan {row.name!r} exists", code="plan_exists")
    session.add(row)
    session.commit()
    return row


def list_plans(session: Session) -> list[PlanRow]:
    return list(session.scalars(select(PlanRow).order_by(PlanRow.name)))


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"tenant {name!r} not found", code="tenant_not_found")
    return tenant


def set_tenant_plan(session: Session, tenant_name: str, plan_name: str) -> Tenant:
    tenant = get_tenant_by_name(session, tenant_name)
    plan = session.scalar(select(PlanRow).where(PlanRow.name == plan_name))
    if plan is None:
        raise NotFound(f"plan {plan_name!r} not found", code="plan_not_found")
    tenant.plan_id = plan.id
    session.commit()
    return tenant


def plan_row_of(session: Session, tenant_id: str) -> PlanRow | None:
    tenant = session.get(Tenant, tenant_id)
    return session.get(PlanRow, tenant.plan_id) if tenant and tenant.plan_id else None


def quota_usage(session: Session, tenant_id: str) -> QuotaUsage:
    """Desired-state usage: apps, and instances and memory of apps that have a release; the
    memory also counts the containers of the tenant's dedicated databases (Memcached, and
    PostgreSQL, MariaDB or Redis on the dedicated plan: they hold the machine's memory as
    instances do)."""
    apps = session.scalars(select(App).where(App.tenant_id == tenant_id)).all()
    released = [a for a in apps if a.target_release_id or a.serving_release_id]
    domains = session.scalar(select(func.count(Domain.id)).where(Domain.tenant_id == tenant_id))
    servers = session.execute(
        select(ManagedDatabase.engine, ManagedDatabase.size_mb).where(
            ManagedDatabase.tenant_id == tenant_id,
            ManagedDatabase.plan == "dedicated",
            ManagedDatabase.state != "deleted",
        )
    ).all()
    return QuotaUsage(
        apps=len(apps),
        instances=sum(a.scale for a in released),
        memory_mb=sum(a.scale * a.memory_mb for a in released)
        + sum(held_memory_mb(engine, size) for engine, size in servers),
        domains=int(domains or 0),
    )


def check_quota_for(session: Session, tenant_id: str, delta: QuotaDelta) -> None:
    row = plan_row_of(session, tenant_id)
    if row is None:
        return
    violation = check_quota(to_plan(row).limits, quota_usage(session, tenant_id), delta)
    if violation is not None:
        raise violation.to_error(row.name)


def ensure_not_suspended(session: Session, tenant_id: str) -> None:
    tenant = session.get(Tenant, tenant_id)
    if tenant is not None and tenant.suspended_at is not None:
        raise Suspended(
            "this account is suspended for an unpaid balance; top up to resume your apps"
        )


# -- ledger ----------------------------------------------------------------------------------


def balance(session: Session, tenant_id: str) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntryRow.amount_minor), 0)).where(
            LedgerEntryRow.account == ledger.tenant_account(tenant_id)
        )
    )
    return int(total or 0)


def post(session: Session, tx: ledger.Transaction, tenant_id: str | None) -> tuple[LedgerTx, bool]:
    """Write ``tx`` once. Returns (row, created). Same key and content again: no-op."""
    existing = session.scalar(select(LedgerTx).where(LedgerTx.key == tx.key))
    if existing is not None:
        _check_same(session, existing, tx)
        return existing, False
    row = LedgerTx(
        id=new_id(),
        key=tx.key,
        kind=tx.kind,
        tenant_id=tenant_id,
        currency=tx.currency.code,
        memo=tx.memo,
        at=tx.at,
        period_hour=tx.period_start,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
            session.add_all(
                LedgerEntryRow(
                    id=new_id(), tx_id=row.id, account=e.account, amount_minor=e.amount_minor
                )
                for e in tx.entries
            )
            session.flush()
    except IntegrityError:
        # A concurrent writer used the key first: the same content is a retry, anything else a 409.
        existing = session.scalar(select(LedgerTx).where(LedgerTx.key == tx.key))
        if existing is None:
            raise
        _check_same(session, existing, tx)
        return existing, False
    return row, True


def post_many(session: Session, txs: Sequence[tuple[ledger.Transaction, str | None]]) -> int:
    """Post many transactions; returns how many were new. Keys already used are checked one by
    one (a retry is a no-op, different content a 409); new ones go in one batch."""
    if not txs:
        return 0
    keys = [tx.key for tx, _ in txs]
    used: set[str] = set()
    for i in range(0, len(keys), 500):
        used |= set(
            session.scalars(select(LedgerTx.key).where(LedgerTx.key.in_(keys[i : i + 500])))
        )
    fresh = [(tx, t) for tx, t in txs if tx.key not in used]
    for tx, tenant_id in txs:
        if tx.key in used:
            post(session, tx, tenant_id)
    tx_rows: list[dict[str, object]] = []
    entry_rows: list[dict[str, object]] = []
    for tx, tenant_id in fresh:
        tx_id = new_id()
        tx_rows.append(
            {
                "id": tx_id,
                "key": tx.key,
                "kind": tx.kind,
                "tenant_id": tenant_id,
                "currency": tx.currency.code,
                "memo": tx.memo,
                "at": tx.at,
                "period_hour": tx.period_start,
            }
        )
        entry_rows += [
            {"id": new_id(), "tx_id": tx_id, "account": e.account, "amount_minor": e.amount_minor}
            for e in tx.entries
        ]
    try:
        with session.begin_nested():
            if tx_rows:
                session.execute(insert(LedgerTx), tx_rows)
                session.execute(insert(LedgerEntryRow), entry_rows)
    except IntegrityError:
        # Another writer posted some of them meanwhile: fall back to one by one.
        return sum(int(post(session, tx, t)[1]) for tx, t in fresh)
    return len(fresh)


def all_balances(session: Session) -> dict[str, int]:
    """Every tenant's balance in one query: {tenant id: minor units}."""
    prefix = ledger.tenant_account("x").split("x", 1)[0]  # "tenant:"
    rows = session.execute(
        select(LedgerEntryRow.account, func.sum(LedgerEntryRow.amount_minor))
        .where(LedgerEntryRow.account.like(prefix + "%"))
        .group_by(LedgerEntryRow.account)
    )
    out: dict[str, int] = {}
    for account, total in rows:
        tenant = ledger.tenant_of(account)
        if tenant is not None:
            out[tenant] = int(total or 0)
    return out


def plans_of(session: Session, tenant_ids: set[str]) -> dict[str, Plan]:
    rows = session.execute(
        select(Tenant.id, PlanRow)
        .join(PlanRow, PlanRow.id == Tenant.plan_id)
        .where(Tenant.id.in_(sorted(tenant_ids)))
    )
    return {tenant_id: to_plan(row) for tenant_id, row in rows}


def usage_records_of(
    session: Session, tenant_ids: set[str], start: int, end: int
) -> dict[str, list[UsageRecord]]:
    out: dict[str, list[UsageRecord]] = {}
    ids = sorted(tenant_ids)
    for i in range(0, len(ids), 500):
        stmt = select(UsageRow).where(
            UsageRow.tenant_id.in_(ids[i : i + 500]),
            UsageRow.hour_start >= start,
            UsageRow.hour_start < end,
        )
        for row in session.scalars(stmt):
            out.setdefault(row.tenant_id, []).append(to_record(row))
    return out


def usage_totals(
    session: Session, tenant_ids: set[str], start: int, end: int
) -> dict[str, ResourceUsage]:
    """Each tenant's consumption in ``[start, end)``, summed in the store (a few rows per tenant,
    however many hours)."""
    out: dict[str, ResourceUsage] = {}
    ids = sorted(tenant_ids)
    for i in range(0, len(ids), 500):
        rows = session.execute(
            select(UsageRow.tenant_id, UsageRow.size, func.sum(UsageRow.instance_ms))
            .where(
                UsageRow.tenant_id.in_(ids[i : i + 500]),
                UsageRow.hour_start >= start,
                UsageRow.hour_start < end,
            )
            .group_by(UsageRow.tenant_id, UsageRow.size)
        )
        for tenant_id, size_text, total in rows:
            size, ms = InstanceSize.parse(size_text), int(total or 0)
            usage = out.get(tenant_id, ResourceUsage())
            out[tenant_id] = ResourceUsage(
                usage.memory_mb_ms + size.memory_mb * ms, usage.cpu_milli_ms + size.cpus_milli * ms
            )
    return out


def _check_same(session: Session, row: LedgerTx, tx: ledger.Transaction) -> None:
    entries = sorted(
        (e.account, e.amount_minor)
        for e in session.scalars(select(LedgerEntryRow).where(LedgerEntryRow.tx_id == row.id))
    )
    same = (row.kind, row.currency, entries, row.period_hour) == (
        tx.kind,
        tx.currency.code,
        sorted((e.account, e.amount_minor) for e in tx.entries),
        tx.period_start,
    )
    if not same:
        raise Conflict(
            f"idempotency key {tx.key!r} was already used for a different transaction",
            code="idempotency_conflict",
        )


def credit(
    session: Session, settings: Settings, tenant_name: str, amount: str, key: str | None, memo: str
) -> tuple[LedgerTx, bool, Tenant]:
    """An operator's top-up. Without a key, each call is a new top-up."""
    tenant = get_tenant_by_name(session, tenant_name)
    currency = get_currency(settings.currency)
    minor = parse_amount(amount, currency)
    tx = ledger.topup(
        tenant.id,
        minor,
        key if key is not None else f"credit:{new_id()}",  # "" is a bad key, not none
        time.time(),
        "operator",
        currency=currency,
        memo=memo[:200],
    )
    row, created = post(session, tx, tenant.id)
    session.commit()
    return row, created, tenant


def adjust(
    session: Session, settings: Settings, tenant_name: str, amount: str, key: str | None, memo: str
) -> tuple[LedgerTx, bool, Tenant]:
    """An operator's signed correction ("-5" debits, "2.50" credits); the memo says why."""
    tenant = get_tenant_by_name(session, tenant_name)
    currency = get_currency(settings.currency)
    text = amount.strip()
    sign = -1 if text.startswith("-") else 1
    minor = parse_amount(text[1:] if sign < 0 else text, currency)
    tx = ledger.adjustment(
        tenant.id,
        sign * minor,
        key if key is not None else f"adjust:{new_id()}",
        time.time(),
        memo,
        currency=currency,
    )
    row, created = post(session, tx, tenant.id)
    session.commit()
    return row, created, tenant


@dataclass(frozen=True)
class Payment:
    tenant: str
    amount: str
    currency: str
    idempotency_key: str


def payment_webhook(
    session: Session, settings: Settings, signature: str | None, body: bytes
) -> tuple[LedgerTx, bool, Tenant]:
    """A payment provider's signed notification: verify, then top up once per key."""
    if not settings.payment_webhook_secret:
        raise NotFound("the payment webhook is not configured", code="not_configured")
    verify(settings.payment_webhook_secret.encode(), signature, body, time.time())
    try:
        data = json.loads(body)
        payment = Payment(
            str(data["tenant"]),
            str(data["amount"]),
            str(data["currency"]),
            str(data["idempotency_key"]),
        )
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(
            "body must be JSON with tenant, amount, currency and idempotency_key",
            code="invalid_payment",
        ) from None
    currency = get_currency(settings.currency)
    if payment.currency.upper() != currency.code:
        raise InvalidInput(f"payments must be in {currency.code}", code="invalid_currency")
    tenant = get_tenant_by_name(session, payment.tenant)
    tx = ledger.topup(
        tenant.id,
        parse_amount(payment.amount, currency),
        f"payment:{payment.idempotency_key}",
        time.time(),
        "payment",
        currency=currency,
        memo="payment webhook",
    )
    row, created = post(session, tx, tenant.id)
    session.commit()
    return row, created, tenant


def transactions(session: Session, tenant_id: str, limit: int = 100) -> list[tuple[LedgerTx, int]]:
    account = ledger.tenant_account(tenant_id)
    rows = session.execute(
        select(LedgerTx, LedgerEntryRow.amount_minor)
        .join(LedgerEntryRow, LedgerEntryRow.tx_id == LedgerTx.id)
        .where(LedgerEntryRow.account == account)
        .order_by(LedgerTx.at.desc())
        .limit(limit)
    )
    return [(t, a) for t, a in rows]


def currency_of(settings: Settings) -> Currency:
    return get_currency(settings.currency)


def money(settings: Settings, minor: int) -> str:
    return format_amount(minor, currency_of(settings))


# -- usage and invoices ------------------------------------------------------------------------


def usage_rows(session: Session, tenant_id: str, start: int, end: int) -> list[UsageRow]:
    stmt = (
        select(UsageRow)
        .where(
            UsageRow.tenant_id == tenant_id, UsageRow.hour_start >= start, UsageRow.hour_start < end
        )
        .order_by(UsageRow.hour_start, UsageRow.app_id, UsageRow.size)
    )
    return list(session.scalars(stmt))


def to_record(row: UsageRow) -> UsageRecord:
    return UsageRecord(
        tenant_id=row.tenant_id,
        app_id=row.app_id,
        size=InstanceSize.parse(row.size),
        hour_start=row.hour_start,
        instance_ms=row.instance_ms,
    )


def charge_transactions(
    session: Session, tenant_id: str, start: int, end: int
) -> list[ledger.Transaction]:
    rows = session.scalars(
        select(LedgerTx).where(
            LedgerTx.tenant_id == tenant_id,
            LedgerTx.kind == "charge",
            LedgerTx.period_hour >= start,
            LedgerTx.period_hour < end,
            # Databases' storage has lines of its own (storage_lines_of), not instance lines.
            LedgerTx.key.not_like(STORAGE_KEY_PREFIX + "%"),
        )
    ).all()
    out = []
    for row in rows:
        entries = tuple(
            ledger.Entry(e.account, e.amount_minor)
            for e in session.scalars(select(LedgerEntryRow).where(LedgerEntryRow.tx_id == row.id))
        )
        out.append(
            ledger.Transaction(
                row.key,
                "charge",
                get_currency(row.currency),
                entries,
                row.at,
                row.memo,
                row.period_hour,
            )
        )
    return out


def parse_period(period: str) -> tuple[int, int]:
    try:
        year_text, month_text = period.split("-")
        year, month = int(year_text), int(month_text)
        if not (2000 <= year <= 2200 and 1 <= month <= 12) or len(period) != 7:
            raise ValueError
    except ValueError:
        raise InvalidInput("period must look like 2026-11", code="invalid_period") from None
    return year, month


def invoice(session: Session, tenant_id: str, period: str) -> tuple[Invoice, bool]:
    """The month's invoice: the issued one if the month closed, else a draft computed now."""
    year, month = parse_period(period)
    start, end = month_bounds(year, month)
    row = plan_row_of(session, tenant_id)
    if row is None:
        raise NotFound("this tenant has no plan", code="no_plan")
    records = [to_record(r) for r in usage_rows(session, tenant_id, start, end)]
    charges = charge_transactions(session, tenant_id, start, end)
    inv = invoice_for_month(to_plan(row), tenant_id, year, month, records, charges)
    issued = session.scalar(
        select(InvoiceRow.id).where(InvoiceRow.tenant_id == tenant_id, InvoiceRow.period == period)
    )
    return inv, issued is not None


def issue_invoice(session: Session, tenant_id: str, period: str) -> InvoiceRow | None:
    """Freeze a closed month's invoice (idempotent)."""
    existing = session.scalar(
        select(InvoiceRow).where(InvoiceRow.tenant_id == tenant_id, InvoiceRow.period == period)
    )
    if existing is not None:
        return existing
    inv, _ = invoice(session, tenant_id, period)
    storage = storage_lines_of(session, tenant_id, period)
    row = InvoiceRow(
        id=new_id(),
        tenant_id=tenant_id,
        period=period,
        currency=inv.currency.code,
        total_minor=inv.total_minor + sum(line.amount_minor for line in storage),
        lines_json=json.dumps(
            [invoice_line_json(line) for line in inv.lines]
            + [storage_line_json(line) for line in storage]
        ),
    )
    session.add(row)
    session.flush()
    return row


def invoice_line_json(line: object) -> dict[str, object]:
    from berth.billing.rating import InvoiceLine

    assert isinstance(line, InvoiceLine)
    return {
        "app_id": line.app_id,
        "size": str(line.size),
        "instance_hours": round(line.instance_ms / 3_600_000, 6),
        "unit_price_minor": float(line.unit_price_minor),
        "amount_minor": line.amount_minor,
    }


def storage_hours(session: Session, tenant_id: str, start: int, end: int) -> list[StorageHourRow]:
    """What the tenant's managed databases were billed for, hour by hour."""
    return list(
        session.scalars(
            select(StorageHourRow)
            .where(
                StorageHourRow.tenant_id == tenant_id,
                StorageHourRow.hour_start >= start,
                StorageHourRow.hour_start < end,
            )
            .order_by(StorageHourRow.hour_start, StorageHourRow.database_name)
        )
    )


def storage_lines_of(session: Session, tenant_id: str, period: str) -> list[StorageLine]:
    """The month's storage lines (one per database); the invoice's total includes them. An
    hour billed after its month's invoice was issued is on the next month's."""
    parse_period(period)
    rows = session.scalars(
        select(StorageHourRow)
        .where(StorageHourRow.tenant_id == tenant_id, StorageHourRow.invoice_period == period)
        .order_by(StorageHourRow.hour_start)
    )
    return storage_lines(
        (
            r.database_id,
            r.database_name,
            r.bytes_billed,
            r.price_per_gib_month_minor,
            r.amount_minor,
        )
        for r in rows
    )


def storage_line_json(line: StorageLine) -> dict[str, object]:
    return {
        "kind": "storage",
        "app_id": "",
        "size": "storage",
        "instance_hours": 0.0,
        "database_id": line.database_id,
        "database": line.database_name,
        "gib_hours": round(float(line.gib_hours), 6),
        "unit_price_minor": float(line.unit_price_minor),
        "amount_minor": line.amount_minor,
    }


def app_names(session: Session, tenant_id: str, app_ids: Sequence[str]) -> dict[str, str]:
    if not app_ids:
        return {}
    rows = session.execute(
        select(App.id, App.name).where(App.tenant_id == tenant_id, App.id.in_(app_ids))
    )
    return {i: n for i, n in rows}


def require_same_tenant(who: Principal, tenant_id: str) -> None:
    if who.tenant_id != tenant_id and not who.is_operator:
        raise NotFound("not found", code="not_found")
