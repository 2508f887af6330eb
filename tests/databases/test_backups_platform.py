"""Backups end to end on the real servers (PostgreSQL 15, MariaDB 10.11, Redis 7 started by the
tests), through the API: a backup is verified (restored into a scratch database and compared),
its download is the same bytes, a restore into a new database and into the same one gives the
content back (what the tenant reads with its own credentials); a file damaged after its dump,
a dump cut short before it was hashed, and a dump tool that fails are each reported failed,
never verified."""

# ruff: noqa: F401, F811 (the fixture ``world`` comes from test_platform, by import)
from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from berth.databases.backup import Tools
from berth.databases.backup_providers import backups_for
from berth.databases.names import Engine
from berth.databases.provider import Credentials
from berth.services import databases_backups as backups_svc
from berth.services.databases_access import ServerAddress
from berth.store.tables import DatabaseBackup, ManagedDatabase
from tests.databases.backup_data import fill, snapshot, trigger_works
from tests.databases.test_platform import ENGINES, World, _signup, world

Creds = dict[str, Any]


def _creds(data: Creds) -> Credentials:
    return Credentials(
        engine=data["engine"], host=data["host"], port=data["port"], database=data["database"],
        username=data["username"], password=data["password"], key_prefix=data["key_prefix"],
    )  # fmt: skip


@pytest.fixture
def tenant(world: World) -> Iterator[str]:
    # The module's world drops every database made on the servers; backup files live in its
    # temporary home.
    yield _signup(world.env)


def _error(world: World, method: str, path: str, token: str, **kw: Any) -> dict[str, Any]:
    resp = world.env.client().request(
        method, "/api/v1" + path, headers={"Authorization": f"Bearer {token}"}, **kw
    )
    assert resp.status_code == 502, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


@pytest.mark.parametrize("engine", ENGINES)
def test_backup_restore_round_trip_on_the_real_server(
    world: World, engine: Engine, tenant: str
) -> None:
    env = world.env
    env.ok("POST", "/databases", tenant, json={"name": "main", "engine": engine}, status=201)
    creds = _creds(env.ok("GET", "/databases/main/credentials", tenant))
    fill(engine, creds, 500)
    before = snapshot(engine, creds)

    made = env.ok("POST", "/databases/main/backups", tenant, status=201)
    assert made["state"] == "verified" and made["size_bytes"] > 0
    key = {"postgres": "public.items", "mariadb": "items", "redis": "keys"}[engine]
    assert made["tables"][key][0] >= 500
    resp = env.call("GET", f"/databases/main/backups/{made['id']}/file", tenant)
    assert hashlib.sha256(resp.content).hexdigest() == made["sha256"]

    # into a new database: what the tenant reads there is what it had
    body = {"backup": made["id"], "into": "copy"}
    assert env.ok("POST", "/databases/main/restore", tenant, json=body)["new"] is True
    copy = _creds(env.ok("GET", "/databases/copy/credentials", tenant))
    assert copy.database != creds.database
    assert snapshot(engine, copy) == before
    assert trigger_works(engine, copy)

    # into itself after a change: back to the backup
    fill(engine, creds, 30, tag="b")
    assert snapshot(engine, creds) != before
    env.ok("POST", "/databases/main/restore", tenant, json={"backup": made["id"]})
    assert snapshot(engine, creds) == before
    again = env.ok("POST", "/databases/main/backups", tenant, status=201)
    assert again["tables"] == made["tables"]


@pytest.mark.parametrize("engine", ENGINES)
def test_damaged_backups_are_failed_never_verified(
    world: World, engine: Engine, tenant: str
) -> None:
    env = world.env
    env.ok("POST", "/databases", tenant, json={"name": "main", "engine": engine}, status=201)
    creds = _creds(env.ok("GET", "/databases/main/credentials", tenant))
    fill(engine, creds, 300)
    with env.db() as session:
        db = session.scalar(
            select(ManagedDatabase).where(
                ManagedDatabase.password == creds.password, ManagedDatabase.state == "active"
            )
        )
        assert db is not None
        factory = backups_svc.real_backups

        # damaged after its dump (the file on disk no longer what was hashed)
        row = backups_svc.start_backup(session, env.settings, db, "manual", world.now)
        assert backups_svc.dump_backup(session, env.settings, factory, db, row, world.now)
        path = Path(row.path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        assert not backups_svc.verify_backup(session, env.settings, factory, db, row, world.now)
        assert row.state == "failed" and "sha256 differs" in row.reason

        # a dump cut short before it was hashed: the restore into the scratch database (or
        # the comparison) finds it
        row = backups_svc.start_backup(session, env.settings, db, "manual", world.now)
        assert backups_svc.dump_backup(session, env.settings, factory, db, row, world.now)
        path = Path(row.path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        row.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        session.commit()
        assert not backups_svc.verify_backup(session, env.settings, factory, db, row, world.now)
        assert row.state == "failed" and "verification failed" in row.reason
        assert not path.exists()
    listed = env.ok("GET", "/databases/main/backups", tenant)
    assert [b["state"] for b in listed] == ["failed", "failed"]
    assert all(b["reason"] for b in listed)


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_failing_dump_tool_is_reported_failed(
    world: World, engine: Engine, tenant: str, tmp_path: Path
) -> None:
    from berth.api.routes_databases import database_backups

    env = world.env
    broken = tmp_path / "dump"
    broken.write_text("#!/bin/sh\necho 'no space left on device' >&2\nexit 2\n")
    broken.chmod(stat.S_IRWXU)
    tool = {"postgres": "pg_dump", "mariadb": "mariadb_dump"}[engine]

    def factory(address: ServerAddress) -> Any:
        return backups_for(address.engine, address.admin_url, Tools(**{tool: str(broken)}))

    env.ok("POST", "/databases", tenant, json={"name": "main", "engine": engine}, status=201)
    env.app.dependency_overrides[database_backups] = lambda: factory
    try:
        err = _error(world, "POST", "/databases/main/backups", tenant)
    finally:
        env.app.dependency_overrides.pop(database_backups, None)
    assert err["code"] == "backup_failed" and "no space left on device" in err["message"]
    [row] = env.ok("GET", "/databases/main/backups", tenant)
    assert row["state"] == "failed" and "exited with 2" in row["reason"]
    with env.db() as session:
        stored = session.get(DatabaseBackup, row["id"])
        assert stored is not None and not Path(stored.path).exists()


def test_retention_keeps_the_last_verified_one_on_the_real_server(
    world: World, tenant: str, tmp_path: Path
) -> None:
    """Nine verified backups a day apart, then dumps that fail: pruning keeps the plan's seven
    newest verified ones (the last verified among them, its file on disk) and three failed."""
    env = world.env
    env.ok("POST", "/databases", tenant, json={"name": "kept", "engine": "postgres"}, status=201)
    fill("postgres", _creds(env.ok("GET", "/databases/kept/credentials", tenant)), 50)
    broken = tmp_path / "dump"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(stat.S_IRWXU)

    def failing(address: ServerAddress) -> Any:
        return backups_for(address.engine, address.admin_url, Tools(pg_dump=str(broken)))

    tenant_id = _tenant_of(world, "kept")
    now = world.now
    with env.db() as session:
        for day in range(9):
            backups_svc.take_backup(
                session, env.settings, backups_svc.real_backups, tenant_id, "kept", now + day
            )
        for day in range(9, 14):
            row = backups_svc.take_backup(session, env.settings, failing, tenant_id, "kept",
                                          now + day)  # fmt: skip
            assert row.state == "failed"
        backups_svc.prune(session, env.settings, now + 14)
    listed = env.ok("GET", "/databases/kept/backups", tenant)
    states = [b["state"] for b in listed]
    assert states == ["failed"] * 3 + ["verified"] * 7
    last_verified = listed[3]
    assert last_verified["created_at"] == now + 8
    with env.db() as session:
        kept = session.get(DatabaseBackup, last_verified["id"])
        assert kept is not None and Path(kept.path).exists()


def _tenant_of(world: World, name: str) -> str:
    with world.env.db() as session:
        rows = list(session.scalars(select(ManagedDatabase).where(ManagedDatabase.name == name)))
        assert len(rows) == 1
        return rows[0].tenant_id
