"""The plans a first start creates: a limited 'default' for sign-ups, an unlimited 'operator'
for the admin tenant; a later start keeps whatever plans an installation already has."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from berth.services.bootstrap import DEFAULT_PLAN_LIMITS, ensure_admin
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import PlanRow, Tenant


def _limits(row: PlanRow) -> dict[str, int | None]:
    return {name: getattr(row, name) for name in DEFAULT_PLAN_LIMITS}


def test_a_fresh_default_plan_is_limited_and_the_admin_is_not(tmp_path: Path) -> None:
    engine = make_engine(Settings(home=tmp_path, database_url="").resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s:
            admin = ensure_admin(s, tmp_path / "admin-token")
            plans = {p.name: p for p in s.scalars(select(PlanRow))}
            assert _limits(plans["default"]) == {
                "max_apps": 10,
                "max_instances": 20,
                "max_memory_mb": 4096,
                "max_domains": 20,
            }
            assert s.get(PlanRow, admin.plan_id).name == "operator"  # type: ignore[union-attr]
            assert set(_limits(plans["operator"]).values()) == {None}

            # An installation whose operator changed the default keeps it on every start.
            plans["default"].max_apps = None
            s.commit()
            ensure_admin(s, tmp_path / "admin-token")
            again = s.scalar(select(PlanRow).where(PlanRow.name == "default"))
            assert again is not None and again.max_apps is None
            tenant = s.scalar(select(Tenant).where(Tenant.id == admin.id))
            assert tenant is not None and tenant.plan_id == admin.plan_id
    finally:
        engine.dispose()
