"""The billing loop: meter closed hours, charge them, issue invoices, act on arrears.

Every step is idempotent by key (usage ``usage:...``, charges ``charge:tenant:hour``), so a
restart in the middle, or running a step twice, bills nothing twice. Time comes from ``clock``
so that tests can run a month in seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from berth.billing.arrears import arrears_decision, track_below_zero_since
from berth.billing.metering import RunInterval, UsageRecord, closed_window, hourly_usage
from berth.billing.periods import month_bounds, month_of
from berth.billing.plans import InstanceSize
from berth.billing.rating import ResourceUsage, charge_transaction, charges_for_hour
from berth.controllers.metering import stored_watermark
from berth.periodic import PeriodicLoop
from berth.services import billing as bsvc
from berth.services.audit_log import prune_audit_events
from berth.services.databases_storage_bill import bill_closed_storage
from berth.services.webhooks import enqueue
from berth.settings import Settings
from berth.store.tables import Meta, Notification, RunIntervalRow, Tenant, UsageRow, new_id

log = logging.getLogger(__name__)
METERED_UNTIL = "metered_until"


@dataclass
class BillingStats:
    usage_records: int = 0
    charges: int = 0
    invoices: int = 0
    suspended: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    storage_charges: int = 0  # managed databases' storage hours (databases_storage_bill)


@dataclass
class BillingController:
    settings: Settings
    sessions: sessionmaker[Session]
    clock: Callable[[], float] = time.time
    on_suspension_change: Callable[[], None] = lambda: None
    # Called before the pass commits: raises when this server no longer leads (a stale
    # leader's charges are refused; berth.controllers.lease).
    fence: Callable[[Session], None] = lambda session: None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one pass at a time (the loop, or a direct call)
        self._loop = PeriodicLoop(
            "berth-billing", self.run_once, self.settings.billing_interval_seconds
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def kick(self) -> None:
        self._loop.wake()

    @property
    def last_error(self) -> str:
        return self._loop.last_error

    def run_once(self) -> BillingStats:
        with self._lock, self.sessions() as session:
            now = self.clock()
            stats = BillingStats()
            # Storage first, committed on its own: the invoices cut below then hold every
            # closed storage hour of their month, the last one too.
            stats.storage_charges = bill_closed_storage(session, self.settings, now, self.fence)
            cursor = session.get(Meta, METERED_UNTIL)
            since = int(cursor.value) if cursor is not None else None
            hours = self.meter(session, now, stats)
            self.charge(session, hours, now, stats)
            self.invoice_closed_months(session, hours, stats, since)
            self.arrears(session, now, stats)
            prune_audit_events(session, self.settings.audit_retention_days, now)
            self.fence(session)
            session.commit()
            if stats.suspended or stats.resumed:
                self.on_suspension_change()
            return stats

    # -- metering ----------------------------------------------------------------------------

    def meter(self, session: Session, now: float, stats: BillingStats) -> set[tuple[str, int]]:
        """Usage records for every closed hour since the last run; returns (tenant, hour) pairs.

        An hour is closed once it ended both by the clock and by the watermark: the time up to
        which the reconciler had every node's reports (berth.billing.watermark). After an
        outage this pass may run before the reconciler's first one has recorded the stops that
        happened meanwhile; the stored watermark is still the last pass's from before, so the
        hours since wait for it. No watermark at all (a fresh install, or an upgrade before the
        first pass) means that no report is known to be complete: nothing is metered."""
        through = stored_watermark(session)
        if through is None:
            return set()
        closed_until = min(now, through)
        meta = session.get(Meta, METERED_UNTIL)
        if meta is None:
            first = session.scalar(
                select(RunIntervalRow.started_at).order_by(RunIntervalRow.started_at)
            )
            if first is None:
                return set()
            meta = Meta(key=METERED_UNTIL, value=str(int(first) - int(first) % 3600))
            session.add(meta)
        start, end = closed_window(int(meta.value), closed_until)
        if end <= start:
            return set()
        rows = session.scalars(
            select(RunIntervalRow).where(
                RunIntervalRow.started_at < end,
                (RunIntervalRow.stopped_at.is_(None)) | (RunIntervalRow.stopped_at > start),
            )
        ).all()
        intervals = [
            RunInterval(
                instance_id=r.container_id,
                app_id=r.app_id,
                tenant_id=r.tenant_id,
                size=InstanceSize(r.memory_mb, r.cpus_milli),
                started_at=r.started_at,
                stopped_at=r.stopped_at,
            )
            for r in rows
        ]
        touched: set[tuple[str, int]] = set()
        existing = set(
            session.scalars(
                select(UsageRow.key).where(UsageRow.hour_start >= start, UsageRow.hour_start < end)
            )
        )
        fresh = []
        for rec in hourly_usage(intervals, start, end, closed_until):
            touched.add((rec.tenant_id, rec.hour_start))
            if rec.key in existing:
                continue
            fresh.append(
                {
                    "id": new_id(),
                    "key": rec.key,
                    "tenant_id": rec.tenant_id,
                    "app_id": rec.app_id,
                    "size": str(rec.size),
                    "hour_start": rec.hour_start,
                    "instance_ms": rec.instance_ms,
                    "created_at": now,
                }
            )
        if fresh:
            session.execute(insert(UsageRow), fresh)
        stats.usage_records += len(fresh)
        meta.value = str(end)
        session.flush()
        return touched

    # -- charging ----------------------------------------------------------------------------

    def charge(
        self, session: Session, touched: set[tuple[str, int]], now: float, stats: BillingStats
    ) -> None:
        """Rate the hours metered in this pass and post their charges (idempotent by key).

        Each hour is charged once, in the pass that meters it, at the plan the tenant has then,
        on top of the usage earlier in its month (summed in the store). Hours charged before are
        never rated again: a plan changed mid-month cannot clash with their posted charges, and
        a pass costs as much on the 31st as on the 1st. Reads are in bulk (plans, earlier usage,
        this pass's usage), a few statements per month rather than several per tenant."""
        months: dict[tuple[int, int], set[int]] = defaultdict(set)
        tenants_of: dict[tuple[int, int], set[str]] = defaultdict(set)
        for tenant_id, hour in touched:
            months[month_of(hour)].add(hour)
            tenants_of[month_of(hour)].add(tenant_id)
        for (year, month), hours in sorted(months.items()):
            month_start, _ = month_bounds(year, month)
            first, last = min(hours), max(hours)
            plans = bsvc.plans_of(session, tenants_of[(year, month)])
            before = bsvc.usage_totals(session, set(plans), month_start, first)
            records = bsvc.usage_records_of(session, set(plans), first, last + 3600)
            txs = []
            for tenant_id in sorted(plans):
                by_hour: dict[int, list[UsageRecord]] = defaultdict(list)
                for record in records.get(tenant_id, []):
                    by_hour[record.hour_start].append(record)
                usage = before.get(tenant_id, ResourceUsage())
                for hour in sorted(by_hour):
                    hour_charge = charges_for_hour(
                        plans[tenant_id], tenant_id, hour, by_hour[hour], usage
                    )
                    usage = hour_charge.usage_after
                    tx = charge_transaction(hour_charge, now)
                    if tx is not None:
                        txs.append((tx, tenant_id))
            stats.charges += bsvc.post_many(session, txs)
        session.flush()

    def invoice_closed_months(
        self,
        session: Session,
        touched: set[tuple[str, int]],
        stats: BillingStats,
        since: int | None = None,
    ) -> None:
        """Issue the invoices of months that are closed: those of this pass's hours, and, for
        each month that closed in this pass (metering moved from ``since`` past its end), those
        of every tenant with usage in it, also tenants whose usage ended before its last hour."""
        metered = session.get(Meta, METERED_UNTIL)
        if metered is None:
            return
        until = int(metered.value)
        by_tenant: dict[str, set[str]] = defaultdict(set)
        for tenant_id, hour in touched:
            year, month = month_of(hour)
            if month_bounds(year, month)[1] <= until:
                by_tenant[tenant_id].add(f"{year:04d}-{month:02d}")
        for year, month in _months_closed(since, until) if since is not None else ():
            start, end = month_bounds(year, month)
            tenants = session.scalars(
                select(UsageRow.tenant_id)
                .where(UsageRow.hour_start >= start, UsageRow.hour_start < end)
                .distinct()
            )
            for tenant_id in tenants:
                by_tenant[tenant_id].add(f"{year:04d}-{month:02d}")
        for tenant_id, periods in by_tenant.items():
            if bsvc.plan_row_of(session, tenant_id) is None:
                continue
            tenant = session.get(Tenant, tenant_id)
            for period in sorted(periods):
                row = bsvc.issue_invoice(session, tenant_id, period)
                if row is None:
                    continue
                stats.invoices += 1
                # The external billing system hears of each issued invoice once (keyed).
                payload: dict[str, object] = {
                    "event": "invoice_issued",
                    "tenant": tenant.name if tenant else tenant_id,
                    "period": period,
                    "total_minor": row.total_minor,
                    "currency": row.currency,
                    "lines": json.loads(row.lines_json),
                }
                key = f"invoice_issued:{tenant_id}:{period}"
                enqueue(session, self.settings, "invoice_issued", tenant_id, payload, key)

    # -- arrears -----------------------------------------------------------------------------

    def arrears(self, session: Session, now: float, stats: BillingStats) -> None:
        balances = bsvc.all_balances(session)
        free_plans = {
            p.id
            for p in bsvc.list_plans(session)
            if p.price_per_gb_hour_minor == 0 and p.price_per_cpu_hour_minor == 0
        }
        for tenant in session.scalars(select(Tenant).where(Tenant.is_admin.is_(False))):
            bal = balances.get(tenant.id, 0)
            tenant.below_zero_since = track_below_zero_since(bal, tenant.below_zero_since, now)
            decision = arrears_decision(
                bal,
                self.settings.low_balance_threshold_minor,
                tenant.below_zero_since,
                self.settings.arrears_grace_seconds,
                now,
                tenant.suspended_at is not None,
                tenant.low_balance_warned_at is not None,
            )
            if bal >= self.settings.low_balance_threshold_minor:
                tenant.low_balance_warned_at = None  # warn again next time it runs low
            if decision.action == "none":
                continue
            if decision.action == "warn" and bal >= 0 and tenant.plan_id in free_plans:
                continue  # nothing will ever be charged: a low balance is no news
            money = bsvc.money(self.settings, bal)
            if decision.action == "warn":
                tenant.low_balance_warned_at = now
                self._notify(
                    session, tenant, "low_balance", f"Your balance is low: {money}.", bal, now
                )
                stats.warned.append(tenant.name)
            elif decision.action == "suspend":
                tenant.suspended_at = now
                self._notify(
                    session,
                    tenant,
                    "suspended",
                    f"Your apps are suspended: the balance has been below zero past the grace "
                    f"period ({money}). Top up to resume them.",
                    bal,
                    now,
                )
                stats.suspended.append(tenant.name)
            elif decision.action == "resume":
                tenant.suspended_at = None
                tenant.below_zero_since = None
                self._notify(
                    session, tenant, "resumed", f"Your apps are resumed ({money}).", bal, now
                )
                stats.resumed.append(tenant.name)
        session.flush()

    def _notify(
        self, session: Session, tenant: Tenant, kind: str, message: str, bal: int, now: float
    ) -> None:
        session.add(
            Notification(
                id=new_id(), tenant_id=tenant.id, kind=kind, message=message, created_at=now
            )
        )
        payload = {
            "event": kind,
            "tenant": tenant.name,
            "balance_minor": bal,
            "currency": self.settings.currency,
            "message": message,
            "at": now,
        }
        enqueue(session, self.settings, kind, tenant.id, payload, f"{kind}:{tenant.id}:{int(now)}")


def _months_closed(since: int, until: int) -> list[tuple[int, int]]:
    """The months ending in ``(since, until]``: those a pass from ``since`` to ``until`` closed."""
    closed = []
    year, month = month_of(since)
    while month_bounds(year, month)[1] <= until:
        closed.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return closed
