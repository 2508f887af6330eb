"""Dedicated PostgreSQL, MariaDB and Redis on the real engine, through the API: each is the
tenant's own server (the launch image's distro server) on the tenant's network, with its data
on a volume of its own, hardened, the admin's credentials on the Berth server only. Everything a
shared database does works: credentials, attach (an app container on the tenant's network
writes and reads through the injected URL), rotate, backup and restore (into itself and into a
new database), usage and the size quota, delete (container and volume gone, the final backup
kept). Another tenant's container cannot reach it; its rows survive a stop and start of its
container."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from sqlalchemy import select

from berth.databases import dedicated_servers as ds
from berth.databases.dedicated import LABEL_DATABASE_SERVER, volume_name
from berth.databases.dedicated_local import LocalDedicatedRunner
from berth.images.memcached_image import ensure_memcached_image
from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_TENANT
from berth.services.databases_access import ProviderFactory
from berth.services.databases_backups import backups_with
from berth.services.databases_dedicated import (
    server_image,
    with_dedicated,
    with_dedicated_backups,
)
from berth.services.databases_rotation import revoke_due
from berth.store.tables import App, DbServer, ManagedDatabase, Release
from berth.workloads.local import tenant_network
from tests.api.conftest import Env, assert_error, build_env

MB = 1024 * 1024
APP_SECONDS = 90.0  # an app container's whole run (its connect retries included), bounded
PROBE_TIMEOUT = 3.0  # another tenant's connect attempt: refused or timed out within this
ENGINES = ("postgres", "mariadb", "redis")
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages"))
# Launch times measured here (create request to a database that answers), per engine.
LAUNCH_SECONDS: dict[str, list[float]] = {}

pytestmark = [pytest.mark.docker, pytest.mark.store]


@dataclass
class World:
    env: Env
    runtime: DockerRuntime
    runner: LocalDedicatedRunner
    docker: docker.DockerClient
    factory: ProviderFactory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from berth.api.routes_databases import database_backups, database_providers

    client = docker.from_env()
    cache = Path(os.environ.get("BERTH_CACHE_DIR", "/var/cache/berth"))
    env = build_env(tmp_path_factory.mktemp("berth-dedicated"))
    runtime = DockerRuntime(env.platform.installation)
    runner = LocalDedicatedRunner(runtime)
    memcached = ensure_memcached_image(client, cache).tag
    images = server_image(lambda: client, cache)
    factory = with_dedicated(runner, lambda: memcached, server_image=images)
    env.app.dependency_overrides[database_providers] = lambda: factory
    backups = with_dedicated_backups(runner, backups_with(env.settings))
    env.app.dependency_overrides[database_backups] = lambda: backups
    try:
        yield World(env, runtime, runner, client, factory)
    finally:
        label = f"{LABEL_INSTALLATION}={env.platform.installation}"
        for found in client.api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(found["Id"], force=True, v=True)
        for volume in client.api.volumes(filters={"label": label}).get("Volumes") or []:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_volume(volume["Name"], force=True)
        for name in runtime.list_networks():
            with contextlib.suppress(Exception):
                runtime.remove_network(name)
        for c in env._clients.values():
            c.close()
        env.engine.dispose()
        client.close()
        if LAUNCH_SECONDS:
            print("\ndedicated launch seconds (create to answering):", json.dumps(LAUNCH_SECONDS))


def _ours(world: World) -> tuple[list[str], list[str]]:
    """This installation's dedicated servers' containers and volumes on the engine."""
    label = [f"{LABEL_INSTALLATION}={world.env.platform.installation}", LABEL_DATABASE_SERVER]
    containers = world.docker.api.containers(all=True, filters={"label": label})
    volumes = world.docker.api.volumes(filters={"label": label}).get("Volumes") or []
    return (
        sorted(n.lstrip("/") for c in containers for n in c["Names"]),
        sorted(v["Name"] for v in volumes),
    )


def _tenant_id(world: World, db_name: str, token: str) -> str:
    host = world.env.ok("GET", f"/databases/{db_name}", token)["host"]
    with world.env.db() as session:
        found = session.scalar(
            select(ManagedDatabase.tenant_id)
            .join(DbServer, DbServer.id == ManagedDatabase.server_id)
            .where(DbServer.name == host, ManagedDatabase.name == db_name)
        )
    assert found is not None, f"no row for {db_name}"
    return str(found)


def _admin_url(world: World, host: str) -> str:
    with world.env.db() as session:
        url = session.scalar(select(DbServer.admin_url).where(DbServer.name == host))
    assert url is not None
    return str(url)


def _release_config(world: World, app: str, tenant_id: str) -> dict[str, str]:
    with world.env.db() as session:
        found = session.scalar(select(App).where(App.name == app, App.tenant_id == tenant_id))
        assert found is not None and found.target_release_id
        release = session.get(Release, found.target_release_id)
        assert release is not None
        return dict(json.loads(release.config_json))


# The tenant's app: connects with the URL it was given (retrying while the server starts),
# then writes rows and reads them back, or only reads. Prints one JSON line.
APP_SCRIPT = r"""
import json, os, sys, time
from urllib.parse import unquote, urlsplit
engine, action, url = sys.argv[1], sys.argv[2], os.environ["URL"]
prefix = os.environ.get("PREFIX", "")
def connect():
    if engine == "postgres":
        import psycopg
        return psycopg.connect(url, connect_timeout=3, autocommit=True)
    if engine == "mariadb":
        import pymysql
        u = urlsplit(url)
        return pymysql.connect(host=u.hostname, port=u.port, user=unquote(u.username),
                               password=unquote(u.password), database=u.path[1:],
                               connect_timeout=3, autocommit=True)
    return Resp(url)
class Resp:
    # A few Redis commands over RESP (redis-py wants async_timeout on this Python).
    def __init__(self, url):
        import socket
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=3)
        self.reader = self.sock.makefile("rb")
        if self.call("AUTH", unquote(u.username), unquote(u.password)) != "OK":
            raise RuntimeError("AUTH refused")
    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2].decode()
        if kind == b"-":
            raise RuntimeError(rest)
        if kind == b"$":
            return None if rest == "-1" else self.reader.read(int(rest) + 2)[:-2].decode()
        return rest
    def set(self, key, value):
        return self.call("SET", key, value)
    def get(self, key):
        return self.call("GET", key)
deadline, last = time.monotonic() + float(os.environ.get("RETRY_SECONDS", "60")), ""
while True:
    try:
        conn = connect()
        break
    except Exception as exc:
        last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            print(json.dumps({"error": last})); sys.exit(0)
        time.sleep(0.5)
out = {}
try:
    if engine == "redis":
        if action == "write":
            for i in range(5):
                conn.set(f"{prefix}note:{i}", f"hello {i}")
        out["rows"] = len([i for i in range(20) if conn.get(f"{prefix}note:{i}") is not None])
    else:
        cur = conn.cursor()
        if action == "write":
            cur.execute("CREATE TABLE IF NOT EXISTS notes (id INT PRIMARY KEY, body TEXT)")
            for i in range(5):
                cur.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"hello {i}"))
        cur.execute("SELECT count(*) FROM notes")
        out["rows"] = cur.fetchone()[0]
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

INTRUDER_SCRIPT = r"""
import json, os, socket, sys, time
out = {}
try:
    out["resolved"] = socket.getaddrinfo(os.environ["ALIAS"], int(os.environ["PORT"]))[0][4][0]
except socket.gaierror as exc:
    out["resolved"] = None
started = time.monotonic()
try:
    with socket.create_connection((os.environ["ADDRESS"], int(os.environ["PORT"])),
                                  timeout=float(os.environ["TIMEOUT"])):
        out["connect"] = "connected"
except OSError as exc:
    out["connect"] = type(exc).__name__
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""


def _run_in(world: World, tenant_id: str, env: dict[str, str], argv: list[str]) -> dict[str, Any]:
    """A python container on the tenant's network, hardened as an app's instance (nobody, no
    capability, read-only root), with the clients Berth itself uses mounted read-only; run to
    completion, what it printed last."""
    network = tenant_network(tenant_id)
    world.runtime.ensure_network(network, {LABEL_TENANT: tenant_id})
    name = f"berth-k1-app-{secrets.token_hex(4)}"
    container = world.docker.containers.create(
        "berth/python:3",
        command=["python3", "-c", *argv],
        name=name,
        environment={**env, "PYTHONPATH": "/deps"},
        network=network,
        user="65534:65534",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mem_limit="128m",
        volumes={SITE_PACKAGES: {"bind": "/deps", "mode": "ro"}},
        labels={LABEL_INSTALLATION: world.env.platform.installation, LABEL_TENANT: tenant_id},
    )
    try:
        container.start()
        outcome = container.wait(timeout=APP_SECONDS)
        logs = container.logs().decode(errors="replace").strip().splitlines()
        assert logs, f"the app container printed nothing ({outcome})"
        result: dict[str, Any] = json.loads(logs[-1])
        return result
    finally:
        container.remove(force=True)


def _app(world: World, tenant_id: str, engine: str, action: str, config: dict[str, str]) -> Any:
    var = "REDIS_URL" if engine == "redis" else "DATABASE_URL"
    env = {"URL": config[var], "PREFIX": config.get("REDIS_KEY_PREFIX", "")}
    env["RETRY_SECONDS"] = config.get("RETRY_SECONDS", "60")
    return _run_in(world, tenant_id, env, [APP_SCRIPT, engine, action])


def _create(world: World, token: str, name: str, engine: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "engine": engine, "plan": "dedicated", **extra}
    started = time.monotonic()
    made: dict[str, Any] = world.env.ok("POST", "/databases", token, json=body, status=201)
    LAUNCH_SECONDS.setdefault(engine, []).append(round(time.monotonic() - started, 2))
    return made


def _wait_running(world: World, alias: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        found = world.runner.find(alias)
        if found is not None:
            return found.address
        assert time.monotonic() < deadline, f"{alias} did not run again"
        time.sleep(0.2)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_dedicated_database_does_what_a_shared_one_does(world: World, engine: str) -> None:
    env = world.env
    alice, bob = env.signup(f"k1-{engine}-a"), env.signup(f"k1-{engine}-b")
    made = _create(world, alice.session, "main", engine)
    alias = made["host"]
    assert (made["plan"], made["engine"], made["port"]) == ("dedicated", engine, ds.PORTS[engine])
    assert alias.startswith("berth-db-") and made["state"] == "active"
    tenant_a = _tenant_id(world, "main", alice.session)

    # The admin's credentials never reach the tenant: not in info, list or credentials.
    admin_url = _admin_url(world, alias)
    admin_password = ds.admin_password(admin_url)
    creds = env.ok("GET", "/databases/main/credentials", alice.session)
    for answer in (made, creds, env.ok("GET", "/databases", alice.session)):
        text = json.dumps(answer)
        assert admin_password not in text and "berthadmin" not in text and admin_url not in text
    assert creds["host"] == alias and creds["port"] == ds.PORTS[engine]
    assert alias in creds["url"] and creds["username"] != "berthadmin"
    # Not one of the operator's servers: never listed, never chosen for a shared database.
    assert alias not in json.dumps(env.ok("GET", "/admin/db-servers", env.admin))

    # Its container: the tenant's network only, nothing published, hardened, its volume.
    attrs = world.docker.api.inspect_container(alias)
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    memory = ds.container_memory_mb(engine, ds.default_size_mb(engine, 1024)) * MB
    assert host["Memory"] == host["MemorySwap"] == memory
    assert host["PidsLimit"] == ds.pids_limit(engine, 20)
    assert set(host["Tmpfs"]) == {"/tmp"}
    assert not host.get("PortBindings") and not attrs["NetworkSettings"].get("Ports")
    assert set(attrs["NetworkSettings"]["Networks"]) == {tenant_network(tenant_a)}
    mounts = [(m["Type"], m["Name"], m["Destination"]) for m in attrs["Mounts"]]
    assert mounts == [("volume", volume_name(alias), "/data")]
    volume = world.docker.api.inspect_volume(volume_name(alias))
    assert volume["Labels"][LABEL_INSTALLATION] == env.platform.installation
    assert volume["Labels"][LABEL_DATABASE_SERVER] == engine
    assert admin_password not in json.dumps(attrs)  # not in its command, labels or env

    # Attached to an app: the app's container on A's network writes and reads with the URL.
    web = f"web-{secrets.token_hex(4)}"  # app names are the installation's, not the tenant's
    env.create_app(alice.session, web)
    env.deploy(alice.session, web)
    env.ok("POST", "/databases/main/attachments", alice.session, json={"app": web})
    config = _release_config(world, web, tenant_a)
    assert _app(world, tenant_a, engine, "write", config) == {"rows": 5}

    # The admin's URL is no use from the tenant's network, even with its password: PostgreSQL
    # and MariaDB take the admin from the bridge's gateway (the Berth machine) only.
    if engine != "redis":
        as_admin = _run_in(world, tenant_a, {"URL": admin_url, "RETRY_SECONDS": "0"},
                           [APP_SCRIPT, engine, "read"])  # fmt: skip
        refused = "pg_hba.conf rejects connection" if engine == "postgres" else "Access denied"
        assert refused in as_admin.get("error", ""), as_admin

    # Another tenant's container, on its own network: neither the alias nor the address.
    # (Bob's tenant is on the engine as Berth makes it: his own network, with his cache.)
    env.ok("POST", "/databases", bob.session, json={"name": "other", "engine": "memcached"},
           status=201)  # fmt: skip
    bob_tenant = _tenant_id(world, "other", bob.session)
    address = _wait_running(world, alias)
    probe = {"ALIAS": alias, "ADDRESS": address, "PORT": str(ds.PORTS[engine]),
             "TIMEOUT": str(PROBE_TIMEOUT)}  # fmt: skip
    intruder = _run_in(world, bob_tenant, probe, [INTRUDER_SCRIPT])
    assert intruder["resolved"] is None, intruder
    assert intruder["connect"] in ("TimeoutError", "ConnectionRefusedError", "OSError"), intruder
    assert intruder["seconds"] <= PROBE_TIMEOUT + 1.0

    # Rotate: the app's new release has a new URL, and it works.
    env.ok("POST", "/databases/main/rotate", alice.session)
    rotated = _release_config(world, web, tenant_a)
    var = "REDIS_URL" if engine == "redis" else "DATABASE_URL"
    assert rotated[var] != config[var]
    assert _app(world, tenant_a, engine, "read", rotated) == {"rows": 5}
    # The rotation pass revokes the old credential on the dedicated server (here: its grace
    # over); the new one still works, the old one no longer does.
    later = time.time() + env.settings.database_rotation_grace_seconds + 1
    with env.db() as session:
        assert revoke_due(session, world.factory, later).failed == []
    old = {**config, "RETRY_SECONDS": "0"}
    assert "error" in _app(world, tenant_a, engine, "read", old)
    assert _app(world, tenant_a, engine, "read", rotated) == {"rows": 5}

    # Backup (dumped and verified over the admin URL at the container's address), restore
    # into a new dedicated database, and into itself after a change.
    backup = env.ok("POST", "/databases/main/backups", alice.session, status=201)
    assert backup["state"] == "verified", backup
    restored = env.ok("POST", "/databases/main/restore", alice.session,
                      json={"backup": backup["id"], "into": "copy"})  # fmt: skip
    assert restored["new"] and restored["database"]["plan"] == "dedicated"
    copy_alias = restored["database"]["host"]
    assert copy_alias != alias and copy_alias in _ours(world)[0]
    env.ok("POST", "/databases/copy/attachments", alice.session,
           json={"app": web, "as": "COPY_URL"})  # fmt: skip
    copy_config = _release_config(world, web, tenant_a)
    copy_env = {var: copy_config["COPY_URL"],
                "REDIS_KEY_PREFIX": copy_config.get("COPY_URL_KEY_PREFIX", "")}  # fmt: skip
    assert _app(world, tenant_a, engine, "read", copy_env) == {"rows": 5}
    env.ok("DELETE", f"/databases/copy/attachments/{web}", alice.session)

    # Usage: the pass measures it on its own server.
    passed = env.ok("POST", "/admin/databases/usage", env.admin)
    assert not [u for u in passed["unreachable"] if alias in u], passed
    info = env.ok("GET", "/databases/main", alice.session)
    assert info["bytes_used"] is not None and info["usage_error"] == "", info
    if engine != "mariadb":  # InnoDB's files start at a few pages: measured, maybe 0 rows' worth
        assert info["bytes_used"] > 0

    # Its rows survive a stop and start of its container (its address may change: Berth
    # finds it again; the app finds it by its alias).
    world.docker.api.stop(alias, timeout=20)
    assert world.runner.find(alias) is None
    world.docker.api.start(alias)
    _wait_running(world, alias)
    assert _app(world, tenant_a, engine, "read", rotated) == {"rows": 5}
    again = env.ok("POST", "/databases/main/backups", alice.session, status=201)
    assert again["state"] == "verified", again

    # Delete: the final backup is kept; the container and its volume are gone.
    env.ok("DELETE", f"/databases/main/attachments/{web}", alice.session)
    deleted = env.ok("DELETE", "/databases/main", alice.session)
    assert deleted["state"] == "deleted" and deleted["purge_after"] > time.time()
    containers, volumes = _ours(world)
    assert alias not in containers and volume_name(alias) not in volumes
    finals = [b for b in env.ok("GET", "/databases/main/backups", alice.session)
              if b["kind"] == "final"]  # fmt: skip
    assert len(finals) == 1 and finals[0]["state"] == "verified", finals
    assert finals[0]["keep_until"] == deleted["purge_after"]
    taken = env.call("POST", "/databases", alice.session,
                     json={"name": "main", "engine": engine, "plan": "dedicated"})  # fmt: skip
    assert_error(taken, 409)  # kept with its final backup, as a shared one's name is
    env.ok("DELETE", "/databases/copy", alice.session)
    env.ok("DELETE", "/databases/other", bob.session)
    assert copy_alias not in _ours(world)[0]


def test_bad_input_and_a_server_that_cannot_start_leave_nothing(world: World) -> None:
    from berth.api.routes_databases import database_providers

    env = world.env
    user = env.signup("k1-bad")
    before = _ours(world)
    for engine, size in [("postgres", 0), ("postgres", -1), ("mariadb", 2**40), ("redis", 0),
                         ("redis", 4097), ("redis", 2**40), ("postgres", True)]:  # fmt: skip
        resp = env.call("POST", "/databases", user.session,
                        json={"name": "sized", "engine": engine, "plan": "dedicated",
                              "size_mb": size})  # fmt: skip
        assert_error(resp, 422, "invalid_size")
    # An image that cannot be made: a 409 that says so; nothing runs, no row.
    overrides = env.app.dependency_overrides
    kept = overrides[database_providers]

    def no_image(engine: str) -> str:
        from berth.databases.dedicated import DedicatedNotAvailable

        raise DedicatedNotAvailable(f"dedicated {engine} servers are not available here")

    overrides[database_providers] = lambda: with_dedicated(
        world.runner, lambda: "", server_image=no_image
    )
    try:
        resp = env.call("POST", "/databases", user.session,
                        json={"name": "pg", "engine": "postgres", "plan": "dedicated"})  # fmt: skip
        assert "not available here" in assert_error(resp, 409, "dedicated_not_available")["message"]
        # An image that runs but whose server cannot start (its entrypoint exits at once).
        overrides[database_providers] = lambda: with_dedicated(
            world.runner, lambda: "", server_image=lambda engine: "berth/python:3"
        )
        # (Straight to the client: Env.call refuses every 5xx, and this one is the answer.)
        resp = env.client("testclient").post(
            "/api/v1/databases",
            headers={"Authorization": f"Bearer {user.session}"},
            json={"name": "pg", "engine": "postgres", "plan": "dedicated"},
        )
        assert resp.status_code in (502, 503), resp.text
        assert resp.json()["error"]["code"].startswith("database_server")
        assert "berthadmin" not in resp.text and "postgresql://" not in resp.text
    finally:
        overrides[database_providers] = kept
    assert env.ok("GET", "/databases", user.session) == []
    assert _ours(world) == before


def test_the_cli_shows_the_tenant_its_account_never_the_admins(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from berth.cli import db_cmd
    from berth.cli import main as cli_main
    from berth.cli.client import ApiClient, CliConfig

    user = world.env.signup("k1-cli")

    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=user.session))
        api.http = TestClient(
            world.env.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {user.session}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(db_cmd, "client", api_client)

    def cli(*args: str) -> Any:
        return CliRunner().invoke(cli_main.app, list(args), env={"COLUMNS": "250"})

    made = cli("db", "create", "cli-pg", "--engine", "postgres", "--plan", "dedicated",
               "--size", "64M")  # fmt: skip
    assert made.exit_code == 0, made.output
    info = json.loads(cli("db", "info", "cli-pg", "--json").output)
    creds = json.loads(cli("db", "credentials", "cli-pg", "--json").output)
    assert info["plan"] == "dedicated" and info["size_mb"] == 64
    admin_url = _admin_url(world, info["host"])
    human = [cli("db", "info", "cli-pg").output, cli("db", "credentials", "cli-pg").output]
    for text in (made.output, json.dumps(info), json.dumps(creds), *human):
        assert ds.admin_password(admin_url) not in text and "berthadmin" not in text
    assert creds["host"] == info["host"] and creds["url"].startswith("postgresql://")
    refused = cli("db", "create", "x", "--engine", "redis", "--plan", "dedicated", "--size", "8G")
    assert refused.exit_code == 1 and "between 16 MB and 4096 MB" in str(refused.exception)
    deleted = cli("db", "delete", "cli-pg", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "its server and its volume are gone" in deleted.output
    assert "final backup" in deleted.output
    assert info["host"] not in _ours(world)[0]


FILL_SCRIPT = r"""
import json, os, psycopg
out = {}
with psycopg.connect(os.environ["URL"], connect_timeout=5, autocommit=True) as conn:
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS fill (id serial, body text)")
        conn.execute("INSERT INTO fill (body) SELECT md5(g::text) || repeat(md5(g::text), 30)"
                     " FROM generate_series(1, int4(%s)) g", (int(os.environ["ROWS"]),))
        out["written"] = True
    except psycopg.Error as exc:
        out["error"] = type(exc).__name__
    out["rows"] = conn.execute("SELECT count(*) FROM fill").fetchone()[0]
print(json.dumps(out))
"""


def test_the_size_quota_holds_on_a_dedicated_postgres(world: World) -> None:
    """Over its size, the usage pass refuses its writes on its own server (as on a shared
    one); the tenant's reads keep working."""
    env = world.env
    user = env.signup("k1-quota")
    made = _create(world, user.session, "full", "postgres", size_mb=16)
    tenant = _tenant_id(world, "full", user.session)
    url = env.ok("GET", "/databases/full/credentials", user.session)["url"]
    filled = _run_in(world, tenant, {"URL": url, "ROWS": "12000"}, [FILL_SCRIPT])
    assert filled == {"written": True, "rows": 12000}, filled
    passed = env.ok("POST", "/admin/databases/usage", env.admin)
    assert passed["writes_refused"], passed
    info = env.ok("GET", "/databases/full", user.session)
    assert info["writes_refused"] and info["bytes_used"] > 16 * MB, info
    refused = _run_in(world, tenant, {"URL": url, "ROWS": "10"}, [FILL_SCRIPT])
    assert "error" in refused and refused["rows"] == 12000, refused
    env.ok("DELETE", "/databases/full", user.session)
    assert made["host"] not in _ours(world)[0]


def test_on_a_swarm_no_new_one_starts_and_the_ones_there_keep_working(world: World) -> None:
    from berth.api.routes_databases import database_providers

    env = world.env
    user = env.signup("k1-swarm")
    made = _create(world, user.session, "kept", "redis", size_mb=16)
    overrides = env.app.dependency_overrides
    kept = overrides[database_providers]
    cache = Path(os.environ.get("BERTH_CACHE_DIR", "/var/cache/berth"))
    overrides[database_providers] = lambda: with_dedicated(
        world.runner, lambda: "", refuse_create=lambda: "on a Swarm now",
        server_image=server_image(lambda: world.docker, cache),
    )  # fmt: skip
    try:
        before = _ours(world)
        body = {"name": "new", "engine": "postgres", "plan": "dedicated"}
        resp = env.call("POST", "/databases", user.session, json=body)
        assert assert_error(resp, 409, "dedicated_not_available")["message"] == "on a Swarm now"
        assert _ours(world) == before
        creds = env.ok("GET", "/databases/kept/credentials", user.session)
        assert creds["host"] == made["host"]
        env.ok("POST", "/databases/kept/rotate", user.session)
        env.ok("DELETE", "/databases/kept", user.session)
    finally:
        overrides[database_providers] = kept
    assert made["host"] not in _ours(world)[0]
