"""Billing for a tenant: balance, transactions, usage export, invoices, notifications; and the
signed payment webhook a payment provider calls."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from berth.api.audit import anonymous_failure_audited, record
from berth.api.deps import CurrentPrincipal, PlatformDep, SessionDep, SettingsDep
from berth.errors import BerthError, InvalidInput, NotFound, PayloadTooLarge
from berth.services import billing as bsvc
from berth.store.tables import Notification, PlanRow, Tenant, WebhookDelivery

router = APIRouter(prefix="/billing", tags=["billing"])
DAY_PATTERN = r"^(20[0-9]{2}|21[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$"
# Exports answer JSON, or CSV with ?format=csv: the document says both.
CSV_TOO: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}


class BalancePublic(BaseModel):
    tenant: str
    balance_minor: int
    balance: str
    currency: str
    plan: str | None
    suspended: bool
    below_zero_since: float | None


class TransactionPublic(BaseModel):
    id: str
    kind: str
    amount_minor: int
    amount: str
    memo: str
    at: float
    key: str


class UsagePublic(BaseModel):
    app_id: str
    app: str
    size: str
    hour_start: int
    instance_seconds: float
    # kind "storage": a managed database's storage billed for the hour (berth.billing.storage)
    kind: str = "instance"
    database: str = ""
    bytes: int = 0


class InvoiceLinePublic(BaseModel):
    app_id: str
    app: str
    size: str
    instance_hours: float
    unit_price_minor: float = Field(
        description="per instance-hour; for a storage line per GiB-month"
    )
    amount_minor: int
    amount: str
    # kind "storage": one managed database's storage for the month, in GiB-hours
    kind: str = "instance"
    database: str = ""
    gib_hours: float = 0.0


class InvoicePublic(BaseModel):
    tenant: str
    period: str
    currency: str
    status: str
    total_minor: int
    total: str
    lines: list[InvoiceLinePublic]


class NotificationPublic(BaseModel):
    kind: str
    message: str
    created_at: float


class DeliveryPublic(BaseModel):
    id: str
    event: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: float
    delivered_at: float | None


class PaymentResult(BaseModel):
    tenant: str
    transaction_id: str
    created: bool
    balance_minor: int


@router.get("/balance")
def get_balance(session: SessionDep, settings: SettingsDep, who: CurrentPrincipal) -> BalancePublic:
    tenant = session.get(Tenant, who.tenant_id)
    assert tenant is not None
    bal = bsvc.balance(session, tenant.id)
    plan = session.get(PlanRow, tenant.plan_id) if tenant.plan_id else None
    return BalancePublic(
        tenant=tenant.name,
        balance_minor=bal,
        balance=bsvc.money(settings, bal),
        currency=settings.currency,
        plan=plan.name if plan else None,
        suspended=tenant.suspended_at is not None,
        below_zero_since=tenant.below_zero_since,
    )


@router.get("/transactions")
def list_transactions(
    session: SessionDep,
    settings: SettingsDep,
    who: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TransactionPublic]:
    return [
        TransactionPublic(
            id=tx.id,
            kind=tx.kind,
            amount_minor=amount,
            amount=bsvc.money(settings, amount),
            memo=tx.memo,
            at=tx.at,
            key=tx.key,
        )
        for tx, amount in bsvc.transactions(session, who.tenant_id, limit)
    ]


def _day(text: str | None, default: int) -> int:
    if text is None:
        return default
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a date like 2026-11-01", code="invalid_date") from None
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


@router.get("/usage", response_model=None, responses=CSV_TOO)
def export_usage(
    session: SessionDep,
    who: CurrentPrincipal,
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="first day, like 2026-11-01",
            json_schema_extra={"pattern": DAY_PATTERN},
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            alias="to",
            description="day after the last, exclusive; at most 400 days after from",
            json_schema_extra={"pattern": DAY_PATTERN},
        ),
    ] = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> list[UsagePublic] | Response:
    now = int(time.time())
    lo, hi = _day(start, now - 31 * 86400), _day(end, now + 3600)
    if hi <= lo or hi - lo > 400 * 86400:
        raise InvalidInput(
            "the period must be positive and at most 400 days", code="invalid_period"
        )
    rows = bsvc.usage_rows(session, who.tenant_id, lo, hi)
    names = bsvc.app_names(session, who.tenant_id, sorted({r.app_id for r in rows}))
    items = [
        UsagePublic(
            app_id=r.app_id,
            app=names.get(r.app_id, "(deleted)"),
            size=r.size,
            hour_start=r.hour_start,
            instance_seconds=r.instance_ms / 1000,
        )
        for r in rows
    ]
    items += [
        UsagePublic(
            app_id="",
            app="",
            size="storage",
            hour_start=r.hour_start,
            instance_seconds=0.0,
            kind="storage",
            database=r.database_name,
            bytes=r.bytes_billed,
        )
        for r in bsvc.storage_hours(session, who.tenant_id, lo, hi)
    ]
    if format == "json":
        return items
    return _csv(
        [
            "hour_start_utc",
            "app",
            "app_id",
            "size",
            "instance_seconds",
            "kind",
            "database",
            "bytes",
        ],
        [
            [
                datetime.fromtimestamp(i.hour_start, UTC).isoformat(),
                i.app,
                i.app_id,
                i.size,
                f"{i.instance_seconds:.3f}",
                i.kind,
                i.database,
                str(i.bytes),
            ]
            for i in items
        ],
        f"usage-{who.tenant_name}.csv",
    )


@router.get("/invoices/{period}", response_model=None, responses=CSV_TOO)
def get_invoice(
    period: Annotated[
        str,
        Path(
            description="a month, like 2026-11",
            json_schema_extra={"pattern": r"^(20[0-9]{2}|21[0-9]{2}|2200)-(0[1-9]|1[0-2])$"},
        ),
    ],
    session: SessionDep,
    settings: SettingsDep,
    who: CurrentPrincipal,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> InvoicePublic | Response:
    inv, issued = bsvc.invoice(session, who.tenant_id, period)
    names = bsvc.app_names(session, who.tenant_id, sorted({ln.app_id for ln in inv.lines}))
    lines = []
    for line in inv.lines:
        data: dict[str, Any] = bsvc.invoice_line_json(line)
        data["app"] = names.get(line.app_id, "(deleted)")
        data["amount"] = bsvc.money(settings, line.amount_minor)
        lines.append(InvoiceLinePublic(**data))
    storage = bsvc.storage_lines_of(session, who.tenant_id, period)
    for storage_line in storage:
        data = bsvc.storage_line_json(storage_line)
        data["app"] = ""
        data["amount"] = bsvc.money(settings, storage_line.amount_minor)
        lines.append(InvoiceLinePublic(**data))
    total = inv.total_minor + sum(line.amount_minor for line in storage)
    public = InvoicePublic(
        tenant=who.tenant_name,
        period=period,
        currency=inv.currency.code,
        status="issued" if issued else "draft",
        total_minor=total,
        total=bsvc.money(settings, total),
        lines=lines,
    )
    if format == "json":
        return public
    rows = [
        [ln.app, ln.size, f"{ln.instance_hours:.6f}", ln.amount]
        if ln.kind != "storage"
        else [f"database {ln.database}", "storage (GiB-hours)", f"{ln.gib_hours:.6f}", ln.amount]
        for ln in lines
    ]
    rows.append(["TOTAL", "", "", public.total])
    return _csv(
        ["app", "size", "instance_hours", "amount"], rows, f"invoice-{who.tenant_name}-{period}.csv"
    )


@router.get("/notifications")
def list_notifications(session: SessionDep, who: CurrentPrincipal) -> list[NotificationPublic]:
    rows = session.scalars(
        select(Notification)
        .where(Notification.tenant_id == who.tenant_id)
        .order_by(Notification.created_at.desc())
        .limit(100)
    )
    return [
        NotificationPublic(kind=n.kind, message=n.message, created_at=n.created_at) for n in rows
    ]


@router.get("/webhooks")
def list_deliveries(session: SessionDep, who: CurrentPrincipal) -> list[DeliveryPublic]:
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.tenant_id == who.tenant_id)
        .order_by(WebhookDelivery.created_at.desc())
        .limit(100)
    )
    return [delivery_public(d) for d in rows]


def delivery_public(d: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        event=d.event,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
    )


@router.post("/payments/webhook")
async def payment_webhook(
    request: Request,
    platform: PlatformDep,
    berth_signature: Annotated[str | None, Header()] = None,
) -> PaymentResult:
    """Called by a payment provider; authenticated by its HMAC signature, not a token."""
    settings = platform.settings
    if not settings.payment_webhook_secret:
        # Off: 404 as for any route that does not exist here, decided before a byte of the
        # body is read (the body limit closes the connection instead of draining it).
        raise NotFound("the payment webhook is not configured", code="not_configured")
    # The body limit (berth.api.limits) has cut anything longer off before it was buffered.
    body = await request.body()
    if len(body) > settings.max_webhook_body_bytes:
        raise PayloadTooLarge(
            f"the payment webhook body is larger than the limit of "
            f"{settings.max_webhook_body_bytes} bytes"
        )
    ip = request.client.host if request.client else ""

    def apply() -> PaymentResult:
        with platform.sessions() as session:
            row, created, tenant = bsvc.payment_webhook(
                session, platform.settings, berth_signature, body
            )
            return PaymentResult(
                tenant=tenant.name,
                transaction_id=row.id,
                created=created,
                balance_minor=bsvc.balance(session, tenant.id),
            )

    try:
        result = await run_in_threadpool(apply)
    except BerthError as exc:
        if anonymous_failure_audited(request, ip):
            await run_in_threadpool(
                record, platform, None, "payment webhook", "", ip, exc.status, "payment provider"
            )
        raise
    await run_in_threadpool(
        record, platform, None, "payment webhook", result.tenant, ip, 200, "payment provider"
    )
    if platform.billing is not None:
        platform.billing_kick()
    return result


def _csv(header: list[str], rows: list[list[Any]], filename: str) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
