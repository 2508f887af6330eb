"""Operator routes: plans, tenants, credit, suspension and deletion, platform-wide audit."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select

from berth.api import views
from berth.api.deps import CurrentPrincipal, Operator, PlatformDep, SessionDep, SettingsDep
from berth.api.routes_billing import DeliveryPublic, delivery_public
from berth.api.routes_databases import ClockDep, ProvidersDep
from berth.api.schemas import DomainPublic, Strict
from berth.billing.plans import REQUEST_BODY_MB_MAX, REQUEST_BODY_MB_MIN
from berth.errors import Forbidden, InvalidInput
from berth.services import billing as bsvc
from berth.services import databases as dbsvc
from berth.services import domains as dsvc
from berth.services.billing_status import billing_status
from berth.store.tables import (
    ApiToken,
    App,
    AuditEvent,
    DatabaseAttachment,
    Deployment,
    Domain,
    Invitation,
    Membership,
    PlanRow,
    Release,
    Tenant,
    WebhookDelivery,
)

router = APIRouter(tags=["admin"])


class PlanCreate(Strict):
    name: str = Field(max_length=100)
    price_per_gb_hour: str = Field(default="0", max_length=32, description="major units, like 0.02")
    price_per_cpu_hour: str = Field(default="0", max_length=32)
    included_gb_hours: int = Field(default=0, ge=0, le=10**9)
    included_cpu_hours: int = Field(default=0, ge=0, le=10**9)
    max_apps: int | None = Field(default=None, ge=0, le=10**6)
    max_instances: int | None = Field(default=None, ge=0, le=10**6)
    max_memory_mb: int | None = Field(default=None, ge=0, le=10**9)
    max_domains: int | None = Field(default=None, ge=0, le=10**6)
    # Size of each writable tmpfs (/tmp, /var/tmp, /run) of an instance; None: the setting.
    instance_disk_mb: int | None = Field(default=None, ge=1, le=10**6)
    # Builds: None means the installation's setting (BERTH_BUILD_*).
    max_concurrent_builds: int | None = Field(default=None, ge=1, le=100)
    build_memory_mb: int | None = Field(default=None, ge=64, le=10**6)
    build_cpus_milli: int | None = Field(default=None, ge=50, le=256_000)
    build_disk_mb: int | None = Field(default=None, ge=16, le=10**7)
    # Outbound internet from the tenant's containers and builds; internal ranges never.
    egress_internet: bool = True
    storage_price_per_gib_month: str | None = Field(
        default=None,
        max_length=32,
        description="managed databases' storage, major units per GiB-month; null: the setting",
    )
    max_request_body_mb: int | None = Field(
        default=None,
        ge=REQUEST_BODY_MB_MIN,
        le=REQUEST_BODY_MB_MAX,
        strict=True,
        description="largest request body at the ingress, MiB (413 above); null: the setting",
    )


class PlanPublic(BaseModel):
    name: str
    currency: str
    price_per_gb_hour_minor: int
    price_per_cpu_hour_minor: int
    included_gb_hours: int
    included_cpu_hours: int
    max_apps: int | None
    max_instances: int | None
    max_memory_mb: int | None
    max_domains: int | None
    instance_disk_mb: int | None
    max_concurrent_builds: int | None
    build_memory_mb: int | None
    build_cpus_milli: int | None
    build_disk_mb: int | None
    egress_internet: bool
    storage_price_per_gib_month_minor: int | None = None
    max_request_body_mb: int | None = None


class TenantAdminPublic(BaseModel):
    name: str
    kind: str
    plan: str | None
    balance_minor: int
    balance: str
    suspended: bool
    apps: int


class PlanAssign(Strict):
    plan: str = Field(max_length=100)


class CreditRequest(Strict):
    amount: str = Field(max_length=32, description="major units, like 25 or 12.50")
    idempotency_key: str | None = Field(default=None, max_length=150)
    memo: str = Field(default="operator credit", max_length=200)


class AdjustRequest(Strict):
    amount: str = Field(max_length=33, description="signed major units, like -5 or 2.50")
    memo: str = Field(min_length=1, max_length=200, description="why (required)")
    idempotency_key: str | None = Field(default=None, max_length=150)


class CreditResult(BaseModel):
    tenant: str
    transaction_id: str
    created: bool
    balance_minor: int
    balance: str


class NodeHoldPublic(BaseModel):
    node: str
    state: str
    since: float | None = Field(description="when the node was last known good")


class BillingStatusPublic(BaseModel):
    metered_until: int | None = Field(description="every hour before this is metered")
    reported_through: float | None = Field(
        description="every node's reports are in up to at least here (stored at each hour "
        "boundary); null before the reconciler's first pass: nothing is billed"
    )
    closable_until: int | None = Field(description="hours before this may close now")
    hours_waiting: int = Field(description="hours ended by the clock that wait for reports")
    node_wait_seconds: float
    held_by: list[NodeHoldPublic] = Field(description="neither ready nor down: waited for")
    not_waited_for: list[NodeHoldPublic] = Field(
        description="silent longer than node_wait_seconds: hours close without their reports"
    )


class AuditPublic(BaseModel):
    at: float
    tenant: str | None
    actor: str
    action: str
    target: str
    ip: str
    status: int


def _plan_public(row: PlanRow) -> PlanPublic:
    return PlanPublic.model_validate(row, from_attributes=True)


@router.post("/admin/plans", status_code=201)
def create_plan(
    body: PlanCreate, session: SessionDep, settings: SettingsDep, who: Operator
) -> PlanPublic:
    row = bsvc.create_plan(session, settings, bsvc.PlanInput(**body.model_dump()))
    return _plan_public(row)


@router.get("/admin/plans")
def list_plans(session: SessionDep, who: Operator) -> list[PlanPublic]:
    return [_plan_public(p) for p in bsvc.list_plans(session)]


@router.get("/admin/tenants")
def list_tenants(
    session: SessionDep, settings: SettingsDep, who: Operator
) -> list[TenantAdminPublic]:
    tenants = list(session.scalars(select(Tenant).order_by(Tenant.name)))
    return _tenants_public(session, settings, tenants)


@router.put("/admin/tenants/{tenant}/plan")
def assign_plan(
    tenant: str, body: PlanAssign, session: SessionDep, platform: PlatformDep, who: Operator
) -> TenantAdminPublic:
    t = bsvc.set_tenant_plan(session, tenant, body.plan)
    if platform.netpolicy is not None:
        platform.netpolicy.wake()  # the plan may switch the tenant's internet on or off
    return _tenants_public(session, platform.settings, [t])[0]


def _tenants_public(
    session: SessionDep, settings: SettingsDep, tenants: list[Tenant]
) -> list[TenantAdminPublic]:
    """Tenants with plan, balance and app count, read in three queries however many."""
    plans = {p.id: p.name for p in bsvc.list_plans(session)}
    balances = bsvc.all_balances(session)
    apps = dict(
        session.execute(select(App.tenant_id, func.count(App.id)).group_by(App.tenant_id)).all()
    )
    return [
        TenantAdminPublic(
            name=t.name,
            kind=t.kind,
            plan=plans.get(t.plan_id or ""),
            balance_minor=balances.get(t.id, 0),
            balance=bsvc.money(settings, balances.get(t.id, 0)),
            suspended=t.suspended_at is not None,
            apps=int(apps.get(t.id, 0)),
        )
        for t in tenants
    ]


@router.post("/admin/tenants/{tenant}/credit", status_code=201)
def credit(
    tenant: str, body: CreditRequest, session: SessionDep, platform: PlatformDep, who: Operator
) -> CreditResult:
    row, created, t = bsvc.credit(
        session, platform.settings, tenant, body.amount, body.idempotency_key, body.memo
    )
    return _posted(session, platform, row.id, created, t)


@router.post("/admin/tenants/{tenant}/adjust", status_code=201)
def adjust(
    tenant: str, body: AdjustRequest, session: SessionDep, platform: PlatformDep, who: Operator
) -> CreditResult:
    """An operator's correction, credit or debit, with a memo saying why."""
    row, created, t = bsvc.adjust(
        session, platform.settings, tenant, body.amount, body.idempotency_key, body.memo
    )
    return _posted(session, platform, row.id, created, t)


def _posted(
    session: SessionDep, platform: PlatformDep, tx_id: str, created: bool, tenant: Tenant
) -> CreditResult:
    """The answer to a balance change; arrears are re-evaluated at once (a top-up resumes)."""
    bal = bsvc.balance(session, tenant.id)
    platform.billing_kick()
    return CreditResult(
        tenant=tenant.name,
        transaction_id=tx_id,
        created=created,
        balance_minor=bal,
        balance=bsvc.money(platform.settings, bal),
    )


@router.delete("/admin/tenants/{tenant}", status_code=204)
def delete_tenant_apps(
    tenant: str,
    session: SessionDep,
    platform: PlatformDep,
    who: Operator,
    providers: ProvidersDep,
    clock: ClockDep,
    confirm: Annotated[str, Query(description="repeat the tenant name to confirm")] = "",
) -> None:
    """An operator's decision (never automatic): remove a tenant's apps, domains, tokens and
    members. Ledger, usage and invoices stay, as financial records. Its managed databases are
    closed first and kept for the retention days, as a tenant's own `db delete` does (nothing
    is lost); if a database server cannot close one, nothing else is removed yet and the
    delete can be repeated."""
    t = bsvc.get_tenant_by_name(session, tenant)
    if confirm != t.name:
        raise InvalidInput("repeat the tenant name in ?confirm= to delete it", code="confirm")
    if t.is_admin:
        raise InvalidInput("the admin tenant cannot be deleted", code="protected")
    app_ids = list(session.scalars(select(App.id).where(App.tenant_id == t.id)))
    session.execute(delete(DatabaseAttachment).where(DatabaseAttachment.tenant_id == t.id))
    session.commit()  # the apps go below: their databases are no longer attached to them
    for db in dbsvc.list_databases(session, t.id):
        if db.state != "deleted":
            dbsvc.delete_database(session, platform.settings, providers, t.id, db.name, clock())
    for model in (Domain, Deployment, Release):
        session.execute(delete(model).where(model.app_id.in_(app_ids)))
    session.execute(delete(App).where(App.tenant_id == t.id))
    session.execute(delete(ApiToken).where(ApiToken.tenant_id == t.id))
    session.execute(delete(Invitation).where(Invitation.tenant_id == t.id))
    session.execute(delete(Membership).where(Membership.tenant_id == t.id))
    t.suspended_at = t.suspended_at or 0.0
    t.name = f"deleted-{t.id}"
    session.commit()
    platform.trigger()


@router.post("/admin/domains/{hostname}/approve")
def approve_domain(
    hostname: str, session: SessionDep, platform: PlatformDep, who: Operator
) -> DomainPublic:
    """Vouch for a tenant's claim on a domain without a DNS proof: it routes from now on."""
    domain = dsvc.approve_domain(session, hostname)
    platform.trigger()
    return views.domain_public(domain)


@router.get("/admin/webhooks")
def all_deliveries(session: SessionDep, who: Operator) -> list[DeliveryPublic]:
    rows = session.scalars(
        select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(200)
    )
    return [delivery_public(d) for d in rows]


@router.get("/admin/billing/status")
def get_billing_status(
    session: SessionDep, settings: SettingsDep, now: ClockDep, who: Operator
) -> BillingStatusPublic:
    """Where metering stands, and which nodes' reports an hour still waits for."""
    status = billing_status(session, settings, now())
    return BillingStatusPublic.model_validate(dataclasses.asdict(status))


@router.get("/audit")
def audit(
    session: SessionDep,
    who: CurrentPrincipal,
    all_tenants: Annotated[bool, Query(alias="all", description="operators: every tenant")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditPublic]:
    stmt = select(AuditEvent).order_by(AuditEvent.at.desc()).limit(limit)
    if all_tenants:
        if not who.is_operator:
            raise Forbidden("platform operators only", code="operator_only")
    else:
        stmt = stmt.where(AuditEvent.tenant_id == who.tenant_id)
    names = {t.id: t.name for t in session.scalars(select(Tenant))}
    return [
        AuditPublic(
            at=e.at,
            tenant=names.get(e.tenant_id or ""),
            actor=e.actor,
            action=e.action,
            target=e.target,
            ip=e.ip,
            status=e.status,
        )
        for e in session.scalars(stmt)
    ]
