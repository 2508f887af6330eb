"""`berth admin db-servers launch`: Berth runs a Redis server itself, on the real engine, from an
image made offline from the distro's packages; registered like `db-servers add`; a tenant's
database there keeps its data across a restart and across a new container on the same volume
(an upgrade); removing the server keeps the volume; bad input starts nothing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from berth.databases.launch import LABEL_SERVER
from berth.errors import BerthError
from berth.services import databases as dbsvc
from berth.services import databases_launch as launch
from berth.services import databases_servers as servers
from berth.services.databases_access import real_provider
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.store.tables import Tenant
from tests.databases.servers import free_port

pytestmark = [pytest.mark.docker, pytest.mark.store]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], Any, Settings, str]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'berth.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    client = docker.from_env(version="auto")
    settings = Settings(home=tmp_path / "home", cache_dir=Path("/var/cache/berth"))
    name = f"r{secrets.token_hex(4)}"
    try:
        yield sessions, client, settings, name
    finally:
        launch.remove_launched(client, name, keep_data=False)
        assert not client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={name}"})
        assert not client.volumes.list(filters={"label": f"{LABEL_SERVER}={name}"})
        client.close()
        engine.dispose()


def _tenant(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        tenant = Tenant(id=secrets.token_hex(8), name=f"t{secrets.token_hex(4)}")
        session.add(tenant)
        session.commit()
        return tenant.id


def test_a_launched_redis_is_registered_hardened_and_keeps_its_data(
    world: tuple[sessionmaker[Session], Any, Settings, str],
) -> None:
    sessions, client, settings, name = world
    port = free_port()
    with sessions() as session:
        server = launch.launch_server(
            session, real_provider, client, settings, "inst1",
            name=name, engine="redis", listen="127.0.0.1", port=port, memory_mb=128,
        )  # fmt: skip
        assert (server.engine, server.host, server.port) == ("redis", "127.0.0.1", port)
        assert "berthadmin:" in server.admin_url
        tenant = _tenant(sessions)
        db = dbsvc.create_database(
            session, real_provider, tenant, dbsvc.NewDatabase("cache", "redis", None, None, None)
        )
        creds = dbsvc.credentials(session, real_provider, db)

    container = client.containers.get(f"berth-dbs-{name}")
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "host" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] == 128 * 1024 * 1024 and host["PidsLimit"] > 0
    assert container.attrs["Config"]["User"] == "65534:65534"
    assert container.attrs["Config"]["Image"].startswith("berth/db-redis:")
    # Nothing but the named address: never every address of the machine.
    assert "--bind" in container.attrs["Args"] and "0.0.0.0" not in container.attrs["Args"]

    tenant_client = redis.Redis.from_url(creds.url, socket_timeout=5)
    tenant_client.set(f"{creds.key_prefix}k", b"kept")
    tenant_client.execute_command("WAIT", 0, 0)
    admin = redis.Redis.from_url(server.admin_url, socket_timeout=5)
    admin.execute_command("BGREWRITEAOF")

    # A restart of the container: the tenant's user (aclfile) and its key survive.
    container.restart(timeout=10)
    _wait_ping(server.admin_url)
    again = redis.Redis.from_url(creds.url, socket_timeout=5)
    assert again.get(f"{creds.key_prefix}k") == b"kept"

    # An upgrade: a new container on the same volume (what a newer image does).
    options = container.attrs
    container.remove(force=True)
    from berth.databases.launch import container_options, launch_spec

    spec = launch_spec(name, "redis", "127.0.0.1", port, 128)
    client.containers.run(
        **container_options(spec, options["Config"]["Image"], "inst1", name), detach=True
    )
    _wait_ping(server.admin_url)
    assert redis.Redis.from_url(creds.url, socket_timeout=5).get(f"{creds.key_prefix}k") == b"kept"

    # Removed (its databases first): the container goes, the data volume stays.
    with sessions() as session:
        dbsvc.get_database(session, tenant, "cache")
    with pytest.raises(BerthError):  # it holds a database: refused, nothing removed
        with sessions() as session:
            servers.remove_server(session, name)
    assert launch.remove_launched(client, name, keep_data=True) is True
    assert client.volumes.get(f"berth-dbs-{name}-data") is not None


def _wait_ping(url: str) -> None:
    from tests.harness import wait_until

    wait_until(lambda: redis.Redis.from_url(url, socket_timeout=2).ping(), 30, "redis answers")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"engine": "memcached"}, "engine_not_launchable"),
        ({"engine": "mongodb"}, "engine_not_launchable"),
        ({"listen": "0.0.0.0"}, "invalid_listen"),
        ({"listen": "not-an-address"}, "invalid_listen"),
        ({"listen": "127.0.0.1; rm -rf /"}, "invalid_listen"),
        ({"port": 80}, "invalid_port"),
        ({"port": 70000}, "invalid_port"),
        ({"memory_mb": 1}, "invalid_memory"),
        ({"memory_mb": 10**9}, "invalid_memory"),
        ({"name": "Bad Name"}, "invalid_name"),
        ({"name": "x" * 41}, "invalid_name"),
    ],
)
def test_bad_launches_start_nothing(
    world: tuple[sessionmaker[Session], Any, Settings, str], changes: dict[str, Any], code: str
) -> None:
    sessions, client, settings, name = world
    args: dict[str, Any] = {"name": name, "engine": "redis", "listen": "127.0.0.1",
                            "port": free_port(), "memory_mb": 128, **changes}  # fmt: skip
    with sessions() as session, pytest.raises(BerthError) as refused:
        launch.launch_server(session, real_provider, client, settings, "inst1", **args)
    assert refused.value.code == code and refused.value.status == 422
    assert not client.containers.list(all=True, filters={"label": f"{LABEL_SERVER}={name}"})
    with sessions() as session:
        assert servers.list_servers(session) == []


def test_a_server_that_cannot_start_leaves_nothing(
    world: tuple[sessionmaker[Session], Any, Settings, str],
) -> None:
    """An address that is not this machine's: Redis exits, the launch says why, and its
    container, volume and row are gone."""
    sessions, client, settings, name = world
    with sessions() as session, pytest.raises(BerthError) as failed:
        launch.launch_server(
            session, real_provider, client, settings, "inst1",
            name=name, engine="redis", listen="192.0.2.77", port=free_port(), memory_mb=128,
        )  # fmt: skip
    assert failed.value.status == 503
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(f"berth-dbs-{name}")
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(f"berth-dbs-{name}-data")
    with sessions() as session:
        assert servers.list_servers(session) == []


def _launch_with_database(
    world: tuple[sessionmaker[Session], Any, Settings, str], engine: str
) -> tuple[Any, Any]:
    """A launched server of ``engine`` and a tenant's database on it: (server row, creds)."""
    sessions, client, settings, name = world
    port = free_port()
    with sessions() as session:
        server = launch.launch_server(
            session, real_provider, client, settings, "inst1",
            name=name, engine=engine, listen="127.0.0.1", port=port, memory_mb=256,
        )  # fmt: skip
        assert (server.engine, server.port) == (engine, port)
        tenant = _tenant(sessions)
        db = dbsvc.create_database(
            session, real_provider, tenant, dbsvc.NewDatabase("main", engine, None, None, None)
        )
        return server, dbsvc.credentials(session, real_provider, db)


def test_a_launched_postgres_keeps_a_tenants_rows_across_a_restart(
    world: tuple[sessionmaker[Session], Any, Settings, str],
) -> None:
    import psycopg

    _, client, _, name = world
    _, creds = _launch_with_database(world, "postgres")
    container = client.containers.get(f"berth-dbs-{name}")
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert container.attrs["Config"]["User"] == "65534:65534"
    # initdb ran in a container of its own, gone; its password file with it.
    assert not client.containers.list(all=True, filters={"name": f"berth-dbs-{name}-initdb"})
    with psycopg.connect(creds.url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    container.restart(timeout=20)

    def rows() -> list[Any]:
        with psycopg.connect(creds.url, connect_timeout=2) as conn:
            return conn.execute("SELECT v FROM t").fetchall()

    from tests.harness import wait_until

    assert wait_until(rows, 60, "the tenant's rows after a restart") == [("kept",)]
    # Trusted by nobody: the admin's password is needed from every address.
    bad = creds.url.replace(urlsplit(creds.url).password or "", "wrong-password")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(bad, connect_timeout=5).close()


def test_a_launched_mariadb_keeps_a_tenants_rows_and_its_admin_stays_local(
    world: tuple[sessionmaker[Session], Any, Settings, str],
) -> None:
    import pymysql

    _, client, _, name = world
    server, creds = _launch_with_database(world, "mariadb")
    assert not client.containers.list(all=True, filters={"name": f"berth-dbs-{name}-initdb"})
    u = urlsplit(creds.url)

    def connect() -> Any:
        return pymysql.connect(
            host=u.hostname, port=u.port, user=u.username, password=u.password,
            database=u.path.lstrip("/"), connect_timeout=3, autocommit=True,
        )  # fmt: skip

    with connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (v text)")
        cur.execute("INSERT INTO t VALUES ('kept')")
    client.containers.get(f"berth-dbs-{name}").restart(timeout=20)

    def rows() -> Any:
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT v FROM t")
            return cur.fetchall()

    from tests.harness import wait_until

    assert wait_until(rows, 60, "the tenant's rows after a restart") == (("kept",),)
    # Berth's admin exists only for the address the server listens on (this machine).
    admin = urlsplit(server.admin_url)
    as_admin = pymysql.connect(
        host=admin.hostname, port=admin.port, user=admin.username, password=admin.password,
        connect_timeout=3,
    )  # fmt: skip
    with as_admin as conn, conn.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (admin.username,))
        assert cur.fetchall() == (("127.0.0.1",),)
