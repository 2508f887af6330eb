"""Benchmark: metering and charging 10,000 instances for one simulated hour.

Measures the billing pass (usage records, hourly charges, ledger) against the real store, with
its wall time and the number of SQL statements it sent, side by side with the same computation
done purely in memory (the baseline: no store at all). Prints a table and writes JSON.

    python bench/metering.py [--instances 10000] [--tenants 1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import event, func, select

from berth.billing.metering import RunInterval, hourly_usage
from berth.billing.plans import InstanceSize
from berth.billing.rating import charge_transaction, rate_hours
from berth.controllers.billing import METERED_UNTIL, BillingController
from berth.controllers.metering import REPORTED_THROUGH
from berth.services import billing as bsvc
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import LedgerTx, Meta, PlanRow, RunIntervalRow, Tenant, UsageRow, new_id

HOUR = 3600
SIZES = [
    InstanceSize(128, 250),
    InstanceSize(256, 500),
    InstanceSize(512, 1000),
    InstanceSize(1024, 2000),
]


def make_intervals(n: int, tenants: list[str], hour: int, rng: random.Random) -> list[RunInterval]:
    out = []
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        start = (
            hour - rng.randint(0, 2 * HOUR)
            if rng.random() < 0.8
            else hour + rng.randint(0, HOUR - 1)
        )
        stop = None if rng.random() < 0.7 else start + rng.randint(60, 2 * HOUR)
        out.append(
            RunInterval(
                instance_id=f"c{i:06d}",
                app_id=f"{tenant}-app{i % 3}",
                tenant_id=tenant,
                size=SIZES[i % len(SIZES)],
                started_at=float(start),
                stopped_at=None if stop is None else float(stop),
            )
        )
    return out


def seed(sessions, tenants: list[str], intervals: list[RunInterval], hour: int) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        plan = PlanRow(
            id=new_id(),
            name="bench",
            currency="EUR",
            price_per_gb_hour_minor=3,
            price_per_cpu_hour_minor=2,
        )
        s.add(plan)
        s.add_all(Tenant(id=t, name=f"t-{t}", kind="personal", plan_id=plan.id) for t in tenants)
        s.add_all(
            RunIntervalRow(
                id=new_id(),
                container_id=iv.instance_id,
                tenant_id=iv.tenant_id,
                app_id=iv.app_id,
                memory_mb=iv.size.memory_mb,
                cpus_milli=iv.size.cpus_milli,
                started_at=iv.started_at,
                stopped_at=iv.stopped_at,
            )
            for iv in intervals
        )
        s.add(Meta(key=METERED_UNTIL, value=str(hour)))
        # The reconciler's pass after the hour: every node's reports for it are in.
        s.add(Meta(key=REPORTED_THROUGH, value=repr(float(hour + HOUR + 5))))
        s.commit()


def pure_baseline(
    intervals: list[RunInterval], hour: int, plan: bsvc.Plan
) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    records = hourly_usage(intervals, hour, hour + HOUR, hour + HOUR + 1)
    by_tenant: dict[str, list] = {}  # type: ignore[type-arg]
    for r in records:
        by_tenant.setdefault(r.tenant_id, []).append(r)
    charges = 0
    for tenant, recs in by_tenant.items():
        for hc in rate_hours(plan, tenant, recs):
            if charge_transaction(hc, hour + HOUR) is not None:
                charges += 1
    return time.perf_counter() - t0, len(records), charges


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--tenants", type=int, default=1_000)
    ap.add_argument("--database-url", default=os.environ.get("BERTH_DATABASE_URL", ""))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metering.json")
    args = ap.parse_args()

    rng = random.Random(42)
    hour = (int(time.time()) // HOUR - 48) * HOUR
    tenants = [new_id() for _ in range(args.tenants)]
    intervals = make_intervals(args.instances, tenants, hour, rng)
    home = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    url = args.database_url or f"sqlite:///{home / 'bench.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    seed(sessions, tenants, intervals, hour)

    statements = 0

    def count(*_a: object, **_k: object) -> None:
        nonlocal statements
        statements += 1

    settings = Settings(home=home, database_url=url, currency="EUR")
    controller = BillingController(settings, sessions, clock=lambda: float(hour + HOUR + 5))
    event.listen(engine, "before_cursor_execute", count)
    t0 = time.perf_counter()
    stats = controller.run_once()
    store_seconds = time.perf_counter() - t0
    event.remove(engine, "before_cursor_execute", count)
    first_statements = statements

    statements = 0
    event.listen(engine, "before_cursor_execute", count)
    t1 = time.perf_counter()
    again = controller.run_once()  # the same hour again: must bill nothing twice
    rerun_seconds = time.perf_counter() - t1
    event.remove(engine, "before_cursor_execute", count)

    with sessions() as s:
        usage_rows = s.scalar(select(func.count(UsageRow.id))) or 0
        charge_rows = (
            s.scalar(select(func.count(LedgerTx.id)).where(LedgerTx.kind == "charge")) or 0
        )
        plan = bsvc.to_plan(s.scalars(select(PlanRow)).one())
    pure_runs = [pure_baseline(intervals, hour, plan) for _ in range(3)]
    pure_seconds = statistics.median(r[0] for r in pure_runs)

    result = {
        "instances": args.instances,
        "tenants": args.tenants,
        "store": engine.dialect.name,
        "billing_pass_seconds": round(store_seconds, 3),
        "billing_pass_statements": first_statements,
        "usage_records": usage_rows,
        "charges": charge_rows,
        "rerun_seconds": round(rerun_seconds, 3),
        "rerun_statements": statements,
        "rerun_new_records": again.usage_records,
        "rerun_new_charges": again.charges,
        "baseline_pure_seconds": round(pure_seconds, 3),
        "baseline_records": pure_runs[0][1],
        "baseline_charges": pure_runs[0][2],
    }
    console = Console()
    table = Table(
        title=f"Metering {args.instances:,} instances for one hour ({engine.dialect.name})"
    )
    for col in ("run", "wall time", "SQL statements", "usage records", "charges"):
        table.add_column(col)
    table.add_row(
        "billing pass (store)",
        f"{store_seconds:.2f}s",
        str(first_statements),
        str(stats.usage_records),
        str(stats.charges),
    )
    table.add_row(
        "same hour again",
        f"{rerun_seconds:.2f}s",
        str(statements),
        str(again.usage_records),
        str(again.charges),
    )
    table.add_row(
        "baseline: pure, in memory",
        f"{pure_seconds:.2f}s",
        "0",
        str(pure_runs[0][1]),
        str(pure_runs[0][2]),
    )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")
    ok = usage_rows == pure_runs[0][1] and charge_rows == pure_runs[0][2] and again.charges == 0
    if not ok:
        console.print("[red]store and pure results differ[/]")
    engine.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
