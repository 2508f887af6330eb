"""Which tenants reach which database server, read from a real (SQLite) store: active
databases only; a server whose host does not resolve gets no endpoint (so nobody reaches it
through the filter)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from berth.netpolicy.observe import database_endpoints
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import DbServer, ManagedDatabase, Tenant


def _db(db_id: str, tenant: str, server: str, state: str = "active") -> ManagedDatabase:
    return ManagedDatabase(
        id=db_id, tenant_id=tenant, name=db_id, engine="postgres", server_id=server,
        size_mb=100, connection_limit=5, state=state,
    )  # fmt: skip


def test_endpoints_carry_the_tenants_with_an_active_database_there(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    try:
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            session.add_all([Tenant(id=t, name=t) for t in ("ta", "tb", "tc")])
            session.add_all(
                [
                    DbServer(id="s1", name="pg1", engine="postgres", admin_url="x",
                             host="10.9.0.5", port=5432, capacity=10),
                    DbServer(id="s2", name="pg2", engine="postgres", admin_url="x",
                             host="db.internal", port=5433, capacity=10),
                    DbServer(id="s3", name="gone", engine="redis", admin_url="x",
                             host="nowhere.invalid", port=6379, capacity=10),
                ]
            )  # fmt: skip
            session.flush()
            session.add_all(
                [
                    _db("d1", "ta", "s1"),
                    _db("d2", "tb", "s1", state="deleted"),
                    _db("d3", "tc", "s2"),
                    _db("d4", "tb", "s3"),
                ]
            )
            session.commit()

        def resolve(host: str) -> list[str]:
            table = {"10.9.0.5": ["10.9.0.5"], "db.internal": ["10.9.0.7", "10.9.0.8"]}
            if host not in table:
                raise OSError(f"{host}: no such name")
            return table[host]

        endpoints = database_endpoints(sessions, resolve)
        assert all(isinstance(e.address, ipaddress.IPv4Address) for e in endpoints)
        found = {(str(e.address), e.port): e.tenants for e in endpoints}
        assert found == {
            ("10.9.0.5", 5432): frozenset({"ta"}),
            ("10.9.0.7", 5433): frozenset({"tc"}),
            ("10.9.0.8", 5433): frozenset({"tc"}),
        }
    finally:
        engine.dispose()
