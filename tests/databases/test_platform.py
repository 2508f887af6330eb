"""Managed databases end to end on the real servers (PostgreSQL 15, MariaDB 10.11, Redis 7
started by tests/databases/servers.py): the operator registers each through the API, a tenant
creates a database and connects with its credentials, rotates (the new password works, the old
one until revoked), attaches it to an app (the release's config has the URL, and it connects),
deletes it (access closed: its password gone, writes refused even in a session opened before; the
data still on the server) and, on a controlled clock, the purge pass drops it once its
retention ends. Hostile names leave every server's catalog as it was; a server unfit for
tenants is refused with its reason."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql
import pytest
import redis
from sqlalchemy import select

from berth.databases.names import Engine
from berth.services.databases_access import account_of, address_of, real_provider
from berth.store.tables import App, DbServer, ManagedDatabase, Release
from tests.api.conftest import Env, assert_error, build_env
from tests.databases.hostile import HOSTILE_NAMES

DAY = 86400.0
ENGINES: list[Engine] = ["postgres", "mariadb", "redis"]

Creds = dict[str, Any]


# -- each engine as a tenant's app and as the operator use it -------------------------------


def _pg(creds: Creds) -> psycopg.Connection[Any]:
    return psycopg.connect(creds["url"], connect_timeout=5, autocommit=True)


def _maria(creds: Creds) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=creds["host"], port=creds["port"], user=creds["username"],
        password=creds["password"], database=creds["database"], autocommit=True,
        connect_timeout=5,
    )  # fmt: skip


def write(engine: Engine, creds: Creds, value: str) -> None:
    if engine == "postgres":
        with _pg(creds) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
            conn.execute("INSERT INTO kept VALUES (%s)", (value,))
    elif engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
                cur.execute("INSERT INTO kept VALUES (%s)", (value,))
        finally:
            conn.close()
    else:
        client = redis.Redis.from_url(creds["url"], decode_responses=True, socket_timeout=10)
        try:
            client.rpush(f"{creds['key_prefix']}kept", value)
        finally:
            client.close()


def read(engine: Engine, creds: Creds) -> list[str]:
    if engine == "postgres":
        with _pg(creds) as conn:
            return [r[0] for r in conn.execute("SELECT v FROM kept ORDER BY v")]
    if engine == "mariadb":
        conn = _maria(creds)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM kept ORDER BY v")
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()
    client = redis.Redis.from_url(creds["url"], decode_responses=True, socket_timeout=10)
    try:
        return sorted(client.lrange(f"{creds['key_prefix']}kept", 0, -1))
    finally:
        client.close()


CLIENT_ERRORS = (psycopg.Error, pymysql.MySQLError, redis.RedisError)


def refused(engine: Engine, creds: Creds) -> None:
    with pytest.raises(CLIENT_ERRORS):
        read(engine, creds)


class OpenSession:
    """A session the tenant opened before a delete: open sessions outlive a password change,
    so only the closed writes keep it from changing the database."""

    def __init__(self, engine: Engine, creds: Creds) -> None:
        self.engine, self.prefix = engine, creds["key_prefix"]
        if engine == "postgres":
            self.pg = _pg(creds)
        elif engine == "mariadb":
            self.maria = _maria(creds)
        else:
            self.redis = redis.Redis.from_url(
                creds["url"], decode_responses=True, single_connection_client=True
            )
            self.redis.ping()

    def write(self, value: str) -> None:
        if self.engine == "postgres":
            self.pg.execute("INSERT INTO kept VALUES (%s)", (value,))
        elif self.engine == "mariadb":
            with self.maria.cursor() as cur:
                cur.execute("INSERT INTO kept VALUES (%s)", (value,))
        else:
            self.redis.rpush(f"{self.prefix}kept", value)

    def close(self) -> None:
        if self.engine == "postgres":
            self.pg.close()
        elif self.engine == "mariadb":
            self.maria.close()
        else:
            self.redis.close()


def admin_read(engine: Engine, admin_url: str, creds: Creds) -> list[str]:
    """What the database holds, as the operator sees it (the tenant no longer can)."""
    if engine == "postgres":
        with psycopg.connect(admin_url, dbname=creds["database"], autocommit=True) as conn:
            return [r[0] for r in conn.execute("SELECT v FROM kept ORDER BY v")]
    if engine == "mariadb":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(admin_url)
        conn = pymysql.connect(
            host=parts.hostname, port=parts.port or 3306, user=unquote(parts.username or ""),
            password=unquote(parts.password or ""), database=creds["database"],
        )  # fmt: skip
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT v FROM kept ORDER BY v")
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()
    client = redis.Redis.from_url(admin_url, decode_responses=True)
    try:
        return sorted(client.lrange(f"{creds['key_prefix']}kept", 0, -1))
    finally:
        client.close()


def catalog(engine: Engine, admin_url: str) -> object:
    """Every database and user the server has (what a hostile name must not add to)."""
    if engine == "postgres":
        with psycopg.connect(admin_url, autocommit=True) as conn:
            dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        return dbs, roles
    if engine == "mariadb":
        from berth.databases.mariadb import MariaDBProvider

        with MariaDBProvider(admin_url)._admin() as cur:
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            dbs = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT CONCAT(User, '@', Host) FROM mysql.user")
            return dbs, {r[0] for r in cur.fetchall()}
    client = redis.Redis.from_url(admin_url, decode_responses=True)
    try:
        return set(client.acl_users()), client.dbsize()
    finally:
        client.close()


# -- the platform, with the real servers registered -----------------------------------------


@dataclass
class World:
    env: Env
    admin_urls: dict[Engine, str]
    now: float = 1_800_000_000.0


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_admin_url: str,
    mariadb_admin_url: str,
    redis_admin_url: str,
) -> Iterator[World]:
    from berth.api.routes_databases import clock

    env = build_env(tmp_path_factory.mktemp("berth-db-home"))
    made = World(
        env,
        {"postgres": postgres_admin_url, "mariadb": mariadb_admin_url, "redis": redis_admin_url},
    )
    env.app.dependency_overrides[clock] = lambda: lambda: made.now
    try:
        for engine, url in made.admin_urls.items():
            body = {"name": f"shared-{engine}", "engine": engine, "url": url, "capacity": 50}
            env.ok("POST", "/admin/db-servers", env.admin, json=body, status=201)
        yield made
    finally:
        # Whatever a test left (failed half-way included) goes from the servers.
        with env.db() as session:
            for db in session.scalars(select(ManagedDatabase)):
                server = session.get(DbServer, db.server_id)
                assert server is not None
                real_provider(address_of(server)).drop(account_of(db))
        for client in env._clients.values():
            client.close()
        env.engine.dispose()


def _signup(env: Env) -> str:
    token: str = env.signup(f"db{secrets.token_hex(3)}").session
    return token


def _release_config(env: Env, app: str) -> dict[str, str]:
    with env.db() as session:
        found = session.scalar(select(App).where(App.name == app))
        assert found is not None and found.target_release_id
        release = session.get(Release, found.target_release_id)
        assert release is not None
        return dict(json.loads(release.config_json))


def _from_url(engine: Engine, url: str, prefix: str) -> Creds:
    """The credentials an app has: only what its config says."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    return {
        "url": url,
        "host": parts.hostname,
        "port": parts.port,
        "username": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")),
        "key_prefix": prefix,
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_the_lifecycle_on_the_real_server(world: World, engine: Engine) -> None:
    env, admin_url = world.env, world.admin_urls[engine]
    token = _signup(env)
    app = f"web-{engine}-{secrets.token_hex(3)}"
    env.create_app(token, app)
    env.deploy(token, app)
    made = env.ok("POST", "/databases", token, json={"name": "main", "engine": engine}, status=201)
    assert made["host"] == "127.0.0.1"

    # create -> the credentials connect, and the database is the tenant's to use
    first = env.ok("GET", "/databases/main/credentials", token)
    write(engine, first, "before-rotate")
    assert read(engine, first) == ["before-rotate"]

    # attach -> the app's new release has the URL, and it connects through it alone
    attached = env.ok("POST", "/databases/main/attachments", token, json={"app": app}, status=201)
    assert attached["release"] is not None
    config = _release_config(env, app)
    var = "REDIS_URL" if engine == "redis" else "DATABASE_URL"
    assert config[var] == first["url"]
    as_app = _from_url(engine, config[var], config.get("REDIS_KEY_PREFIX", ""))
    assert read(engine, as_app) == ["before-rotate"]

    # rotate -> the new password works at once, the old one until it is revoked (after the
    # app's new release serves: tests/databases/test_rotation.py), the release has the new URL
    rotated = env.ok("POST", "/databases/main/rotate", token)
    assert [r["app"] for r in rotated["releases"]] == [app]
    second = env.ok("GET", "/databases/main/credentials", token)
    assert second["password"] != first["password"]
    assert read(engine, first) == ["before-rotate"]
    write(engine, second, "after-rotate")
    assert read(engine, second) == ["after-rotate", "before-rotate"]
    assert _release_config(env, app)[var] == second["url"]
    assert read(engine, _from_url(engine, second["url"], second["key_prefix"]))

    # delete -> closed (the tenant's password no longer works), the data kept on the server
    env.ok("DELETE", f"/databases/main/attachments/{app}", token)
    assert var not in _release_config(env, app)
    session = OpenSession(engine, second)
    try:
        gone = env.ok("DELETE", "/databases/main", token)
        with pytest.raises(CLIENT_ERRORS):
            session.write("after-delete")
    finally:
        session.close()
    assert gone["state"] == "deleted" and gone["purge_after"] == world.now + 7 * DAY
    refused(engine, second)
    refused(engine, first)  # the overlapping old credential is closed with the database
    assert admin_read(engine, admin_url, second) == ["after-rotate", "before-rotate"]
    with env.db() as session:
        row = session.scalar(
            select(ManagedDatabase).where(ManagedDatabase.password == second["password"])
        )
        assert row is None  # the store kept no working password either

    # purge: nothing before the retention ends, dropped from the server after it
    with env.db() as session:
        row = session.scalar(select(ManagedDatabase).where(ManagedDatabase.state == "deleted"))
        assert row is not None
        server = session.get(DbServer, row.server_id)
        assert server is not None
        provider, account = real_provider(address_of(server)), account_of(row)
    world.now += 7 * DAY - 60
    assert env.ok("POST", "/admin/databases/purge", env.admin)["purged"] == 0
    assert provider.exists(account)
    world.now += 120
    assert env.ok("POST", "/admin/databases/purge", env.admin) == {"purged": 1, "failed": []}
    assert not provider.exists(account)
    assert_error(env.call("GET", "/databases/main", token), 404)
    world.now -= 7 * DAY + 60


@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_names_change_no_catalog(world: World, engine: Engine) -> None:
    env, admin_url = world.env, world.admin_urls[engine]
    token = _signup(env)
    before = catalog(engine, admin_url)
    for name in HOSTILE_NAMES:
        resp = env.call("POST", "/databases", token, json={"name": name, "engine": engine})
        assert_error(resp, 422)
    assert catalog(engine, admin_url) == before
    assert env.ok("GET", "/databases", token) == []


def test_a_real_server_that_fails_its_checks_is_refused(world: World) -> None:
    env = world.env
    url = world.admin_urls["postgres"]
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    wrong = url.replace(f":{parts.password}@", ":not-the-password@")
    body = {"name": "pg-wrong", "engine": "postgres", "url": wrong}
    resp = env.client().request(
        "POST", "/api/v1/admin/db-servers", headers={"Authorization": f"Bearer {env.admin}"},
        json=body,
    )  # fmt: skip
    err = assert_error(resp, 503, "database_server_unavailable")
    assert "password authentication failed" in err["message"]
    assert "not-the-password" not in resp.text and str(parts.password) not in resp.text
    names = [s["name"] for s in env.ok("GET", "/admin/db-servers", env.admin)]
    assert "pg-wrong" not in names


def test_a_real_server_unfit_for_tenants_is_refused_with_its_reason(world: World) -> None:
    """A Redis without an ACL file (its tenants' users would be gone after a restart)."""
    import shutil
    import signal
    import subprocess
    import time

    from tests.databases.servers import _stop, free_port

    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (scripts/ensure-system.sh --with-postgres)"
    port, password = free_port(), secrets.token_hex(12)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"redis://default:{password}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        client.close()
        body = {"name": "redis-no-acl", "engine": "redis", "url": url}
        resp = world.env.call("POST", "/admin/db-servers", world.env.admin, json=body)
        err = assert_error(resp, 422, "database_server_unsafe")
        assert "no ACL file" in err["message"] and password not in resp.text
        names = [s["name"] for s in world.env.ok("GET", "/admin/db-servers", world.env.admin)]
        assert "redis-no-acl" not in names
    finally:
        _stop(proc, signal.SIGTERM)
