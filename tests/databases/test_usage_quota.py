"""The size quota on the real servers (PostgreSQL 15, MariaDB 10.11, Redis 7 from
tests/databases/servers.py): a tenant fills its database past its quota, the usage pass
measures it and refuses writes (the engine's own error; reads keep working; one notification,
however many passes), the tenant frees space below the resume ratio, the next pass gives writes
back (one more notification). A server that is down, or one that does not answer, is reported
and the other servers' databases are still measured; a suspended tenant's database is measured
and keeps its data."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
import redis
from sqlalchemy import select

from berth.databases.names import Engine
from berth.services.databases_access import real_provider
from berth.services.databases_usage import run_pass
from berth.store.tables import DbServer, ManagedDatabase, Tenant
from tests.databases import servers
from tests.databases.usage_world import MIB, World, count, empty, fill, world_on, write_small

ENGINES: list[Engine] = ["postgres", "mariadb", "redis"]
LIMIT_MB = 16  # the smallest size a tenant may ask for


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_admin_url: str,
    mariadb_admin_url: str,
    redis_admin_url: str,
) -> Iterator[World]:
    urls: dict[Engine, str] = {
        "postgres": postgres_admin_url,
        "mariadb": mariadb_admin_url,
        "redis": redis_admin_url,
    }
    with world_on(tmp_path_factory.mktemp("berth-usage-home"), urls) as made:
        yield made


def _tenant(world: World) -> str:
    token: str = world.env.signup(f"u{secrets.token_hex(3)}").session
    return token


def _notifications(world: World, token: str) -> list[str]:
    return [
        n["kind"]
        for n in world.env.ok("GET", "/billing/notifications", token)
        if n["kind"].startswith("database.")
    ]


def _refused_by_engine(engine: Engine, exc: BaseException) -> None:
    """The engine's own refusal, not a connection failure."""
    if engine == "postgres":
        assert isinstance(exc, psycopg.Error)
        # no INSERT privilege on a table Berth's role now owns (or the read-only default)
        assert exc.sqlstate in {"42501", "25006"}, exc
    elif engine == "mariadb":
        assert isinstance(exc, pymysql.err.OperationalError)
        assert exc.args[0] == 1142, exc  # INSERT command denied
    else:
        assert isinstance(exc, redis.exceptions.NoPermissionError), exc


@pytest.mark.parametrize("engine", ENGINES)
def test_over_quota_writes_are_refused_then_given_back(world: World, engine: Engine) -> None:
    env = world.env
    token = _tenant(world)
    body = {"name": "main", "engine": engine, "size_mb": LIMIT_MB}
    env.ok("POST", "/databases", token, json=body, status=201)
    creds = env.ok("GET", "/databases/main/credentials", token)
    fill(engine, creds, 2)
    world.usage_pass()
    empty_size = env.ok("GET", "/databases/main", token)["bytes_used"]
    assert 0 < empty_size < LIMIT_MB * MIB
    info = env.ok("GET", "/databases/main", token)
    assert info["writes_refused"] is False and info["measured_at"] == world.now

    # past the quota: refused with the engine's error, reads still work, one notification
    fill(engine, creds, LIMIT_MB + 2)
    rows = count(engine, creds)
    world.now += 300
    result = world.usage_pass()
    label = [x for x in result["writes_refused"] if x.endswith("/main")]
    assert len(label) == 1, result
    info = env.ok("GET", "/databases/main", token)
    assert info["bytes_used"] > LIMIT_MB * MIB == info["size_limit_bytes"]
    assert info["writes_refused"] is True and info["quota_pending"] is False, info
    assert info["usage_error"] == ""
    with pytest.raises(Exception) as caught:
        write_small(engine, creds)
    _refused_by_engine(engine, caught.value)
    assert count(engine, creds) == rows  # reads work, nothing was added
    world.now += 300
    world.usage_pass()  # still over: no second notification
    assert _notifications(world, token) == ["database.writes_refused"]

    # freed below the resume ratio: writes come back on the next pass
    empty(engine, creds)
    world.now += 300
    result = world.usage_pass()
    assert any(x.endswith("/main") for x in result["writes_resumed"]), result
    info = env.ok("GET", "/databases/main", token)
    assert info["writes_refused"] is False and info["bytes_used"] < LIMIT_MB * MIB * 0.95
    write_small(engine, creds)  # the engine takes writes again
    if engine != "redis":
        assert count(engine, creds) == 1  # emptied, then the one new row
    kinds = _notifications(world, token)
    assert sorted(kinds) == ["database.writes_refused", "database.writes_resumed"]
    env.ok("DELETE", "/databases/main", token)


def test_a_server_down_is_reported_and_the_others_still_measured(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = world.env
    token = _tenant(world)
    env.ok("POST", "/databases", token, json={"name": "kept", "engine": "postgres"}, status=201)
    # A Redis server of this test's own, the only active one for the tenant's Redis database.
    env.ok("POST", "/admin/db-servers/shared-redis/drain", env.admin)
    down = None
    try:
        with servers.redis_server() as url:
            down = world.add_server("redis", url)
            env.ok("POST", "/databases", token, json={"name": "cache", "engine": "redis"},
                   status=201)  # fmt: skip
            world.usage_pass()
            before = env.ok("GET", "/databases/cache", token)
            assert before["measured_at"] == world.now
        # the server has stopped
        world.now += 300
        result = world.usage_pass()
        assert [u.split(":")[0] for u in result["unreachable"]] == [down], result
        kept = env.ok("GET", "/databases/kept", token)
        assert kept["measured_at"] == world.now and kept["usage_error"] == ""
        cache = env.ok("GET", "/databases/cache", token)
        assert cache["measured_at"] == before["measured_at"]  # its last state is kept
        assert cache["writes_refused"] is False
        assert cache["usage_error"].startswith("not measured: the server did not answer")
    finally:
        env.ok("POST", "/admin/db-servers/shared-redis/activate", env.admin)
        if down is not None:
            with env.db() as session:  # nothing is left on a stopped server: forget its rows
                row = session.scalar(select(DbServer).where(DbServer.name == down))
                assert row is not None
                for db in session.scalars(
                    select(ManagedDatabase).where(ManagedDatabase.server_id == row.id)
                ):
                    session.delete(db)
                session.flush()
                session.delete(row)
                session.commit()
    env.ok("DELETE", "/databases/kept", token)


class Silent:
    """A server that accepts connections and never answers (a hung database server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_server_that_does_not_answer_costs_the_pass_its_timeout_only(world: World) -> None:
    env = world.env
    token = _tenant(world)
    env.ok("POST", "/databases", token, json={"name": "hung", "engine": "redis"}, status=201)
    env.ok("POST", "/databases", token, json={"name": "fine", "engine": "mariadb"}, status=201)
    silent = Silent()
    try:
        with env.db() as session:
            hung = session.scalar(
                select(ManagedDatabase).where(ManagedDatabase.name == "hung")
                .join(Tenant, Tenant.id == ManagedDatabase.tenant_id)
                .where(Tenant.name == env.ok("GET", "/billing/balance", token)["tenant"])
            )  # fmt: skip
            assert hung is not None
            server = session.get(DbServer, hung.server_id)
            assert server is not None
            # A server of its own for the hung database, at the silent address.
            mute = DbServer(
                id=secrets.token_hex(8), name=f"mute-{secrets.token_hex(3)}", engine="redis",
                admin_url=f"redis://admin:pw@127.0.0.1:{silent.port}/0", host="127.0.0.1",
                port=silent.port, capacity=1, state="draining", created_at=world.now,
            )  # fmt: skip
            session.add(mute)
            session.flush()
            real_server_id, hung.server_id = hung.server_id, mute.id
            session.commit()
            settings = env.settings.model_copy(update={"database_usage_timeout_seconds": 1.0})
            world.now += 300
            result = run_pass(session, settings, real_provider, world.now)
            assert result.unreachable == [(mute.name, "did not answer within 1 s")]
            fine = env.ok("GET", "/databases/fine", token)
            assert fine["measured_at"] == world.now
            hung.server_id = real_server_id
            session.commit()
            session.delete(mute)
            session.commit()
    finally:
        silent.close()
    for name in ("hung", "fine"):
        env.ok("DELETE", f"/databases/{name}", token)


def test_a_suspended_tenants_database_is_measured_and_keeps_its_data(world: World) -> None:
    env = world.env
    token = _tenant(world)
    env.ok("POST", "/databases", token, json={"name": "data", "engine": "postgres"}, status=201)
    creds = env.ok("GET", "/databases/data/credentials", token)
    fill("postgres", creds, 1)
    rows = count("postgres", creds)
    tenant = env.ok("GET", "/billing/balance", token)["tenant"]
    with env.db() as session:
        row = session.scalar(select(Tenant).where(Tenant.name == tenant))
        assert row is not None
        row.suspended_at = world.now
        session.commit()
    world.now += 300
    world.usage_pass()
    info: dict[str, Any] = env.ok("GET", "/databases/data", token)
    assert info["measured_at"] == world.now and info["bytes_used"] > 0
    assert info["state"] == "active" and count("postgres", creds) == rows
    with env.db() as session:
        row = session.scalar(select(Tenant).where(Tenant.name == tenant))
        assert row is not None
        row.suspended_at = None
        session.commit()
    env.ok("DELETE", "/databases/data", token)
