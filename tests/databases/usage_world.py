"""The usage tests' world: the real API over a store of its own with real servers registered,
an API clock the test moves, and per engine a tenant's way to fill, read, write and empty its
database with nothing but its own credentials."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import redis
from sqlalchemy import select

from berth.databases.names import Engine
from berth.services.databases_access import account_of, address_of, real_provider
from berth.store.tables import DbServer, ManagedDatabase
from tests.api.conftest import Env, build_env

Creds = dict[str, Any]
MIB = 1024 * 1024
HOUR = 3600


@dataclass
class World:
    env: Env
    now: float = 1_800_000_000.0 - 1_800_000_000.0 % HOUR + 60  # a minute into an hour

    def usage_pass(self) -> dict[str, Any]:
        result: dict[str, Any] = self.env.ok("POST", "/admin/databases/usage", self.env.admin)
        return result

    def add_server(self, engine: Engine, url: str, name: str | None = None) -> str:
        name = name or f"{engine}-{secrets.token_hex(3)}"
        body = {"name": name, "engine": engine, "url": url, "capacity": 50}
        self.env.ok("POST", "/admin/db-servers", self.env.admin, json=body, status=201)
        return name


@contextmanager
def world_on(home: Path, servers: dict[Engine, str]) -> Iterator[World]:
    from berth.api.routes_databases import clock

    env = build_env(home)
    made = World(env)
    env.app.dependency_overrides[clock] = lambda: lambda: made.now
    try:
        for engine, url in servers.items():
            made.add_server(engine, url, f"shared-{engine}")
        yield made
    finally:
        # Whatever a test left (failed half-way included) goes from the servers still up.
        with env.db() as session:
            for db in session.scalars(select(ManagedDatabase)):
                server = session.get(DbServer, db.server_id)
                assert server is not None
                try:
                    real_provider(address_of(server)).drop(account_of(db))
                except Exception as exc:  # a server a test stopped has nothing left to drop
                    print(f"not dropped from {server.name}: {exc}")
        for client in env._clients.values():
            client.close()
        env.engine.dispose()


# -- a tenant's own use of its database, per engine -----------------------------------------


def _pg(creds: Creds) -> psycopg.Connection[Any]:
    return psycopg.connect(creds["url"], connect_timeout=5, autocommit=True)


def _maria(creds: Creds) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=creds["host"], port=creds["port"], user=creds["username"],
        password=creds["password"], database=creds["database"], autocommit=True,
        connect_timeout=5,
    )  # fmt: skip


def _redis(creds: Creds) -> redis.Redis:
    return redis.Redis.from_url(creds["url"], socket_timeout=10)


def fill(engine: Engine, creds: Creds, mib: int) -> None:
    """About ``mib`` MiB more data, incompressible (random), in the tenant's own table/keys."""
    if engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS big (v bytea)")
            # 1,000-byte rows stay inline (under TOAST's 2 kB): the size on disk is the data.
            for _ in range(mib):
                rows = [(os.urandom(1000),) for _ in range(1048)]
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO big VALUES (%s)", rows)
    elif engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS big (v LONGBLOB) ENGINE=InnoDB")
                for _ in range(mib):
                    cur.execute("INSERT INTO big VALUES (%s)", (os.urandom(MIB),))
        finally:
            conn.close()
    else:
        client = _redis(creds)
        try:
            for i in range(mib):
                key = f"{creds['key_prefix']}big:{secrets.token_hex(4)}:{i}"
                client.set(key, os.urandom(MIB))
                client.sadd(f"{creds['key_prefix']}index", key)
        finally:
            client.close()


def write_small(engine: Engine, creds: Creds) -> None:
    """One small write; raises the engine's own error when writes are refused."""
    if engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("INSERT INTO big VALUES ('\\x00')")
    elif engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO big VALUES ('x')")
        finally:
            conn.close()
    else:
        client = _redis(creds)
        try:
            client.set(f"{creds['key_prefix']}small", b"x")
        finally:
            client.close()


def count(engine: Engine, creds: Creds) -> int:
    """A read: the rows (keys) the tenant's data has."""
    if engine == "postgres":
        with _pg(creds) as conn:
            row = conn.execute("SELECT count(*) FROM big").fetchone()
            return int(row[0]) if row else 0
    if engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM big")
                found = cur.fetchone()
                return int(found[0]) if found else 0
        finally:
            conn.close()
    client = _redis(creds)
    try:
        return sum(1 for key in _own_keys(creds) if client.get(key) is not None)
    finally:
        client.close()


def _own_keys(creds: Creds) -> list[str]:
    """The tenant's keys, read by the names it wrote (SCAN and KEYS are denied to it)."""
    client = redis.Redis.from_url(creds["url"], socket_timeout=10, decode_responses=True)
    try:
        return sorted(client.smembers(f"{creds['key_prefix']}index"))
    finally:
        client.close()


def empty(engine: Engine, creds: Creds) -> None:
    """Free the space, with what the tenant keeps over quota (TRUNCATE; MariaDB's TRUNCATE
    needs DROP, kept; Redis' DEL)."""
    if engine == "postgres":
        with _pg(creds) as conn:
            # Over quota the database defaults to read-only, for a plain message; a session
            # may lift that, and still has only SELECT and TRUNCATE.
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("TRUNCATE big")
    elif engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE TABLE big")
        finally:
            conn.close()
    else:
        client = _redis(creds)
        try:
            for key in _own_keys(creds):
                client.delete(key)
            client.delete(f"{creds['key_prefix']}index")
        finally:
            client.close()
