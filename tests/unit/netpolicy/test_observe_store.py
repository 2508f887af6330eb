"""Which tenants have outbound internet switched off, read from a real (SQLite) store."""

from __future__ import annotations

from pathlib import Path

from berth.netpolicy.observe import tenants_without_internet
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import PlanRow, Tenant


def plan(name: str, internet: bool) -> PlanRow:
    return PlanRow(
        id=name,
        name=name,
        currency="EUR",
        price_per_gb_hour_minor=0,
        price_per_cpu_hour_minor=0,
        egress_internet=internet,
    )


def test_only_tenants_on_a_plan_without_internet_are_listed(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    try:
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            session.add_all([plan("open", True), plan("walled", False)])
            session.add_all(
                [
                    Tenant(id="t-open", name="open", plan_id="open"),
                    Tenant(id="t-walled", name="walled", plan_id="walled"),
                    Tenant(id="t-none", name="none", plan_id=None),
                ]
            )
            session.commit()
        assert tenants_without_internet(sessions) == frozenset({"t-walled"})
    finally:
        engine.dispose()
