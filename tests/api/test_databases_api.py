"""Managed databases through the API, on the fake provider (held to the real providers'
contract in tests/databases/test_contract.py): the operator's servers, placement, the tenant's
databases, roles and ownership, bad input, attach/rotate/delete/purge, and a server or the
store failing half-way leaving no half state. The same against the real servers:
tests/databases/test_platform.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner, Result

from berth.api.routes_databases import clock, database_backups, database_providers
from berth.cli import db_cmd
from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig, CliError
from berth.databases.errors import DatabaseServerUnavailable, DatabaseServerUnsafe
from berth.databases.provider import Account as DbAccount
from berth.databases.provider import Credentials, Rotated
from berth.services import databases as svc
from berth.services.databases_access import ServerAddress
from berth.store.tables import (
    AuditEvent,
    DatabaseAttachment,
    DatabaseBackup,
    DbServer,
    ManagedDatabase,
)
from tests.api.conftest import API, Account, Env, assert_error
from tests.api.test_cross_tenant_matrix import join_team
from tests.databases.fake_provider import FakeProvider
from tests.databases.hostile import HOSTILE_NAMES

pytestmark = pytest.mark.store

DAY = 86400.0


class FlakyProvider(FakeProvider):
    """The fake provider that fails the methods named in ``failing`` (as a server that went
    away), or refuses to take tenants at all (``unsafe``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing: set[str] = set()
        self.unsafe = False
        self.on_create: Callable[[], None] | None = None  # runs once the server has made it

    def _maybe_fail(self, what: str) -> None:
        if what in self.failing:
            raise DatabaseServerUnavailable(f"the fake server failed {what}")

    def check(self) -> None:
        self._maybe_fail("check")
        if self.unsafe:
            raise DatabaseServerUnsafe("the fake server has an open default account")
        super().check()

    def create(self, account: DbAccount) -> Credentials:
        self._maybe_fail("create")
        made = super().create(account)
        if self.on_create is not None:
            self.on_create()
        return made

    def drop(self, account: DbAccount) -> None:
        self._maybe_fail("drop")
        super().drop(account)

    def rotate_password(self, account: DbAccount) -> Credentials:
        self._maybe_fail("rotate_password")
        return super().rotate_password(account)

    def add_credential(self, account: DbAccount) -> Rotated:
        self._maybe_fail("add_credential")
        return super().add_credential(account)

    def revoke_credential(self, account: DbAccount, retiring: str) -> None:
        self._maybe_fail("revoke_credential")
        super().revoke_credential(account, retiring)

    def set_write_allowed(self, account: DbAccount, allowed: bool) -> None:
        self._maybe_fail("set_write_allowed")
        super().set_write_allowed(account, allowed)


@dataclass
class Servers:
    """The fake servers by admin URL: one provider (one in-memory server) per URL."""

    by_url: dict[str, FlakyProvider] = field(default_factory=dict)
    now: float = 1_800_000_000.0

    def __call__(self, address: ServerAddress) -> FlakyProvider:
        found = self.by_url.get(address.admin_url)
        if found is None:
            found = FlakyProvider(address.engine, host=address.host, port=address.port)
            self.by_url[address.admin_url] = found
        return found

    def all_databases(self) -> set[str]:
        return {name for p in self.by_url.values() for name in p.databases}


@pytest.fixture
def fake(env: Env) -> Iterator[Servers]:
    servers = Servers()
    env.app.dependency_overrides[database_providers] = lambda: servers
    # The fake servers back up too (in memory, into real files): the same contract.
    env.app.dependency_overrides[database_backups] = lambda: servers
    env.app.dependency_overrides[clock] = lambda: lambda: servers.now
    try:
        yield servers
    finally:
        env.app.dependency_overrides.pop(database_providers, None)
        env.app.dependency_overrides.pop(database_backups, None)
        env.app.dependency_overrides.pop(clock, None)
        with env.db() as session:  # every test starts with no servers and no databases
            for model in (DatabaseAttachment, DatabaseBackup, ManagedDatabase, DbServer):
                for row in session.scalars(select(model)):
                    session.delete(row)
                session.flush()
            session.commit()


def url(engine: str, secret: str, host: str = "10.9.0.1") -> str:
    scheme = {"postgres": "postgresql", "mariadb": "mysql", "redis": "redis"}[engine]
    return f"{scheme}://berthadmin:{secret}@{host}:4000/"


def call_server_down(
    env: Env, method: str, path: str, token: str, *, status: int = 503, **kw: Any
) -> httpx.Response:
    """A call answered 502/503 on purpose (a database server that failed): ``Env.call`` takes
    every 5xx for a crash, so this one goes around it and checks the error's shape."""
    resp = env.client().request(
        method, API + path, headers={"Authorization": f"Bearer {token}"}, **kw
    )
    env.client().cookies.clear()
    assert_error(resp, status)
    return resp


def add_server(env: Env, name: str, engine: str = "postgres", **extra: Any) -> dict[str, Any]:
    body = {"name": name, "engine": engine, "url": url(engine, f"pw-{name}"), **extra}
    data: dict[str, Any] = env.ok("POST", "/admin/db-servers", env.admin, json=body, status=201)
    return data


def create_db(
    env: Env, token: str, name: str, engine: str = "postgres", tenant: str | None = None, **kw: Any
) -> Any:
    body = {"name": name, "engine": engine, **kw}
    return env.ok("POST", "/databases", token, json=body, status=201, tenant=tenant)


# -- operators ------------------------------------------------------------------------------


def test_the_operator_adds_lists_drains_and_removes_servers(env: Env, fake: Servers) -> None:
    added = add_server(env, "pg-1", capacity=3, host="db-1.internal", port=5433)
    assert (added["engine"], added["host"], added["port"], added["capacity"]) == (
        "postgres",
        "db-1.internal",
        5433,
        3,
    )
    assert (added["state"], added["databases"], added["load"]) == ("active", 0, 0)
    add_server(env, "redis-1", "redis")
    listed = env.ok("GET", "/admin/db-servers", env.admin)
    assert [s["name"] for s in listed] == ["pg-1", "redis-1"]
    info = env.ok("GET", "/admin/db-servers/pg-1", env.admin)
    assert (info["reachable"], info["bytes_used"], info["connections"]) == (True, 0, 0)
    assert_error(
        env.call("POST", "/admin/db-servers", env.admin, json={"name": "pg-1", "engine": "postgres",
                 "url": url("postgres", "x")}),
        409, "db_server_exists",
    )  # fmt: skip
    assert env.ok("POST", "/admin/db-servers/pg-1/drain", env.admin)["state"] == "draining"
    assert env.ok("POST", "/admin/db-servers/pg-1/activate", env.admin)["state"] == "active"
    env.ok("DELETE", "/admin/db-servers/redis-1", env.admin, status=204)
    assert_error(env.call("GET", "/admin/db-servers/redis-1", env.admin), 404)
    fake.by_url[url("postgres", "pw-pg-1")].available = False
    down = env.ok("GET", "/admin/db-servers/pg-1", env.admin)
    assert down["reachable"] is False and "down" in down["message"]


def test_the_admin_url_is_never_answered(env: Env, fake: Servers) -> None:
    add_server(env, "pg-secret")
    user = env.signup("dbsecret")
    create_db(env, user.session, "main")
    secret = "pw-pg-secret"
    answers = [
        env.call("GET", "/admin/db-servers", env.admin),
        env.call("GET", "/admin/db-servers/pg-secret", env.admin),
        env.call("GET", "/databases/main", user.session),
        env.call("GET", "/databases/main/credentials", user.session),
        env.call("GET", "/openapi.json"),
    ]
    for resp in answers:
        assert secret not in resp.text
    fake.by_url[url("postgres", secret)].available = False
    refused = call_server_down(
        env,
        "POST",
        "/admin/db-servers",
        env.admin,
        json={"name": "pg-x", "engine": "postgres", "url": url("postgres", secret)},
    )
    assert secret not in refused.text
    with env.db() as session:
        events = session.scalars(select(AuditEvent.target)).all()
    assert not any(secret in t for t in events)


def test_a_server_that_fails_its_checks_is_refused_with_the_reason(env: Env, fake: Servers) -> None:
    unsafe_url = url("postgres", "unsafe")
    fake(ServerAddress("postgres", unsafe_url, "10.9.0.1", 4000)).unsafe = True
    body = {"name": "pg-unsafe", "engine": "postgres", "url": unsafe_url}
    err = assert_error(
        env.call("POST", "/admin/db-servers", env.admin, json=body), 422, "database_server_unsafe"
    )
    assert err["message"] == "the server is refused: the fake server has an open default account"
    down_url = url("postgres", "down")
    fake(ServerAddress("postgres", down_url, "10.9.0.1", 4000)).failing.add("check")
    body = {"name": "pg-down", "engine": "postgres", "url": down_url}
    err = call_server_down(env, "POST", "/admin/db-servers", env.admin, json=body).json()["error"]
    assert "failed check" in err["message"]
    assert env.ok("GET", "/admin/db-servers", env.admin) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"engine": "memcached"}, "engine_not_shared"),
        ({"engine": "mongodb"}, "unknown_engine"),
        ({"engine": None}, "invalid"),
        ({"name": "Bad Name"}, "invalid_name"),
        ({"name": "x'; drop"}, "invalid_name"),
        ({"url": "http://admin:pw@h:1/"}, "invalid_url"),
        ({"url": "postgresql://h:1/"}, "invalid_url"),
        ({"url": "postgresql://a:pw@h:99999/"}, "invalid_url"),
        ({"url": "postgresql://a:pw@h:1/?sslmode=disable"}, "invalid_url"),
        ({"url": "postgresql://a:p w@h:1/"}, "invalid_url"),
        ({"url": ""}, "invalid_url"),
        ({"host": "a b"}, "invalid_host"),
        ({"host": "-oProxyCommand"}, "invalid_host"),
        ({"port": 0}, "invalid_port"),
        ({"capacity": 0}, "invalid_capacity"),
        ({"capacity": 10**9}, "invalid_capacity"),
        ({"extra": 1}, "invalid"),
    ],
)
def test_bad_server_input_is_refused(
    env: Env, fake: Servers, change: dict[str, Any], code: str
) -> None:
    body = {"name": "pg-bad", "engine": "postgres", "url": url("postgres", "pw"), **change}
    err = assert_error(env.call("POST", "/admin/db-servers", env.admin, json=body), 422, code)
    assert "pw@" not in err["message"]
    assert env.ok("GET", "/admin/db-servers", env.admin) == []
    assert fake.all_databases() == set()


def test_only_operators_reach_the_servers(env: Env, fake: Servers) -> None:
    add_server(env, "pg-op")
    user = env.signup("notop")
    body = {"name": "pg-mine", "engine": "postgres", "url": url("postgres", "pw")}
    for method, path, payload in (
        ("GET", "/admin/db-servers", None),
        ("GET", "/admin/db-servers/pg-op", None),
        ("POST", "/admin/db-servers", body),
        ("POST", "/admin/db-servers/pg-op/drain", None),
        ("DELETE", "/admin/db-servers/pg-op", None),
        ("POST", "/admin/databases/purge", None),
        ("POST", "/admin/databases/usage", None),
    ):
        assert_error(env.call(method, path, user.session, json=payload), 403, "operator_only")
    assert [s["state"] for s in env.ok("GET", "/admin/db-servers", env.admin)] == ["active"]


# -- placement ------------------------------------------------------------------------------


def test_new_databases_go_to_the_least_loaded_active_server(env: Env, fake: Servers) -> None:
    user = env.signup("placer")
    resp = env.call("POST", "/databases", user.session, json={"name": "a", "engine": "postgres"})
    err = assert_error(resp, 409, "no_database_server")
    assert "no postgres database server is registered" in err["message"]
    add_server(env, "pg-small", capacity=2)
    add_server(env, "pg-big", capacity=10)
    add_server(env, "maria-1", "mariadb")
    for name in ("one", "two", "three"):
        create_db(env, user.session, name)
    loads = {s["name"]: s["databases"] for s in env.ok("GET", "/admin/db-servers", env.admin)}
    # By share of capacity: big (0/10) first, then small (0/2), then big again (1/10 < 1/2).
    assert loads == {"pg-small": 1, "pg-big": 2, "maria-1": 0}
    env.ok("POST", "/admin/db-servers/pg-big/drain", env.admin)
    create_db(env, user.session, "four")
    body = {"name": "five", "engine": "postgres"}
    err = assert_error(env.call("POST", "/databases", user.session, json=body), 409)
    assert "every active postgres database server is full" in err["message"]
    env.ok("POST", "/admin/db-servers/pg-small/drain", env.admin)
    body = {"name": "five", "engine": "postgres"}
    err = assert_error(env.call("POST", "/databases", user.session, json=body), 409)
    assert "draining" in err["message"]
    assert create_db(env, user.session, "m", "mariadb")["engine"] == "mariadb"
    assert len(fake.all_databases()) == 5


def test_a_server_holding_databases_is_not_removed(env: Env, fake: Servers) -> None:
    add_server(env, "pg-held")
    user = env.signup("holder")
    create_db(env, user.session, "kept")
    err = assert_error(env.call("DELETE", "/admin/db-servers/pg-held", env.admin), 409)
    assert "1 tenant databases" in err["message"]
    env.ok("DELETE", "/databases/kept", user.session)
    err = assert_error(env.call("DELETE", "/admin/db-servers/pg-held", env.admin), 409)
    assert "1 deleted ones" in err["message"]
    fake.now += 8 * DAY
    assert env.ok("POST", "/admin/databases/purge", env.admin) == {"purged": 1, "failed": []}
    env.ok("DELETE", "/admin/db-servers/pg-held", env.admin, status=204)


# -- tenants' input -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["postgres", "mariadb", "redis"])
def test_hostile_names_are_refused_and_nothing_is_created(
    env: Env, fake: Servers, engine: str
) -> None:
    add_server(env, f"s-{engine}", engine)
    user = env.signup("hostile")
    for name in HOSTILE_NAMES:
        resp = env.call("POST", "/databases", user.session, json={"name": name, "engine": engine})
        assert_error(resp, 422)
    assert fake.all_databases() == set()
    assert env.ok("GET", "/databases", user.session) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"engine": "memcached", "plan": "shared"}, "plan_not_available"),
        ({"engine": "mongodb"}, "unknown_engine"),
        ({"engine": "Postgres"}, "unknown_engine"),
        ({"plan": "dedicated", "size_mb": 0}, "invalid_size"),
        ({"plan": "dedicated", "size_mb": 2**40}, "invalid_size"),
        ({"engine": "redis", "plan": "dedicated", "size_mb": 4097}, "invalid_size"),
        ({"plan": "gold"}, "invalid_plan"),
        ({"size_mb": 0}, "invalid_size"),
        ({"size_mb": 15}, "invalid_size"),
        ({"size_mb": 2**40}, "invalid_size"),
        ({"size_mb": -1}, "invalid_size"),
        ({"size_mb": True}, "invalid_size"),
        ({"size_mb": "1G"}, "invalid"),
        ({"connections": 0}, "invalid_connections"),
        ({"connections": 100_000}, "invalid_connections"),
        ({"connections": "many"}, "invalid"),
        ({"server": "pg-1"}, "invalid"),
    ],
)
def test_bad_database_input_is_refused(
    env: Env, fake: Servers, change: dict[str, Any], code: str
) -> None:
    add_server(env, "pg-input")
    user = env.signup("badinput")
    body = {"name": "main", "engine": "postgres", **change}
    err = assert_error(env.call("POST", "/databases", user.session, json=body), 422, code)
    if change.get("engine") == "memcached":
        assert "memcached has no users, so it is never on a shared server" in err["message"]
    assert fake.all_databases() == set()


def test_create_shows_the_limits_and_names_are_per_tenant(env: Env, fake: Servers) -> None:
    add_server(env, "pg-c", host="db.internal", port=6543)
    a, b = env.signup("alice-db"), env.signup("bob-db")
    made = create_db(env, a.session, "main", size_mb=2048, connections=5)
    assert (made["size_mb"], made["connection_limit"], made["state"]) == (2048, 5, "active")
    assert (made["host"], made["port"], made["attached"]) == ("db.internal", 6543, [])
    assert "password" not in made
    assert create_db(env, b.session, "main")["size_mb"] == 1024  # the same name, another tenant
    assert_error(
        env.call("POST", "/databases", a.session, json={"name": "main", "engine": "redis"}),
        409,
        "database_exists",
    )
    assert len(fake.all_databases()) == 2


# -- roles and ownership --------------------------------------------------------------------


def test_roles_and_ownership(env: Env, fake: Servers) -> None:
    add_server(env, "pg-roles")
    owner, other = env.signup("dbowner"), env.signup("dbother")
    viewer, dev = env.signup("dbviewer"), env.signup("dbdev")
    team = env.unique("dbteam")
    env.ok("POST", "/teams", owner.session, json={"name": team}, status=201)
    join_team(env, owner, team, viewer, "viewer")
    join_team(env, owner, team, dev, "developer")
    env.create_app(owner.session, "db-team-app", tenant=team)
    create_db(env, owner.session, "teamdb", tenant=team)
    env.create_app(other.session, "db-other-app")
    create_db(env, other.session, "otherdb")
    read_token = env.mint(owner.session, "read", tenant=team)["token"]

    # Viewers and read tokens read, and do nothing else: no credentials either.
    for token in (viewer.session, read_token):
        assert [d["name"] for d in env.ok("GET", "/databases", token, tenant=team)] == ["teamdb"]
        env.ok("GET", "/databases/teamdb", token, tenant=team)
        for method, path, body in (
            ("GET", "/databases/teamdb/credentials", None),
            ("POST", "/databases", {"name": "mine", "engine": "postgres"}),
            ("POST", "/databases/teamdb/rotate", None),
            ("DELETE", "/databases/teamdb", None),
            ("POST", "/databases/teamdb/attachments", {"app": "db-team-app"}),
            ("DELETE", "/databases/teamdb/attachments/db-team-app", None),
        ):
            assert_error(env.call(method, path, token, tenant=team, json=body), 403, "read_only")
    # A developer may see the password (it could read it from its app's environment anyway).
    creds = env.ok("GET", "/databases/teamdb/credentials", dev.session, tenant=team)
    assert creds["password"] and creds["env"]["DATABASE_URL"] == creds["url"]

    # Another tenant's database and app are not found, and nothing of theirs changes.
    before = env.state([env.tenant_id(other.tenant)])
    other_server_state = {k: (v.password, v.write_allowed) for p in fake.by_url.values()
                          for k, v in p.databases.items()}  # fmt: skip
    for method, path, body in (
        ("GET", "/databases/otherdb", None),
        ("GET", "/databases/otherdb/credentials", None),
        ("POST", "/databases/otherdb/rotate", None),
        ("DELETE", "/databases/otherdb", None),
        ("POST", "/databases/otherdb/attachments", {"app": "db-team-app"}),
        ("POST", "/databases/teamdb/attachments", {"app": "db-other-app"}),
        ("DELETE", "/databases/otherdb/attachments/db-other-app", None),
    ):
        resp = env.call(method, path, owner.session, tenant=team, json=body)
        assert_error(resp, 404, ("database_not_found", "app_not_found"))
    assert env.state([env.tenant_id(other.tenant)]) == before
    assert {k: (v.password, v.write_allowed) for p in fake.by_url.values()
            for k, v in p.databases.items()} == other_server_state  # fmt: skip
    assert env.ok("GET", "/databases", other.session)[0]["attached"] == []


def test_reading_credentials_is_audited(env: Env, fake: Servers) -> None:
    add_server(env, "pg-audit")
    user = env.signup("auditdb")
    create_db(env, user.session, "watched")
    env.ok("GET", "/databases/watched/credentials", user.session)
    with env.db() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.tenant_id == env.tenant_id(user.tenant))
        ).all()
    assert "GET /databases/{name}/credentials" in actions


# -- attach, rotate, delete, purge ----------------------------------------------------------


def _release_config(env: Env, token: str, app: str) -> dict[str, str]:
    with env.db() as session:
        from berth.store.tables import App, Release

        found = session.scalar(select(App).where(App.name == app))
        assert found is not None and found.target_release_id
        release = session.get(Release, found.target_release_id)
        assert release is not None
        return dict(json.loads(release.config_json))


def test_attach_rotate_detach(env: Env, fake: Servers) -> None:
    add_server(env, "pg-att")
    add_server(env, "redis-att", "redis")
    user = env.signup("attacher")
    env.create_app(user.session, "att-web")
    first = env.deploy(user.session, "att-web")["release"]["version"]
    create_db(env, user.session, "main")
    create_db(env, user.session, "cache", "redis")
    creds = env.ok("GET", "/databases/main/credentials", user.session)

    attached = env.ok(
        "POST", "/databases/main/attachments", user.session, json={"app": "att-web"}, status=201
    )
    assert attached["config_keys"] == ["DATABASE_URL"] and "postgresql://" not in str(attached)
    assert attached["release"]["version"] == first + 1
    assert attached["deployment"]["status"] == "in_progress"
    assert _release_config(env, user.session, "att-web")["DATABASE_URL"] == creds["url"]
    again = env.call("POST", "/databases/main/attachments", user.session, json={"app": "att-web"})
    assert_error(again, 409, "attached")
    cache = env.ok(
        "POST",
        "/databases/cache/attachments",
        user.session,
        json={"app": "att-web", "as": "CACHE_URL"},
        status=201,
    )
    assert cache["config_keys"] == ["CACHE_URL", "CACHE_URL_KEY_PREFIX", "DATABASE_URL"]
    config = _release_config(env, user.session, "att-web")
    assert config["CACHE_URL"].startswith("redis://") and config["CACHE_URL_KEY_PREFIX"]
    info = env.ok("GET", "/databases/main", user.session)
    assert info["attached"] == [{"app": "att-web", "var": "DATABASE_URL"}]

    rotated = env.ok("POST", "/databases/main/rotate", user.session)
    (rel,) = rotated["releases"]
    assert rel["app"] == "att-web" and rel["release"]["version"] == first + 3
    new = env.ok("GET", "/databases/main/credentials", user.session)
    assert new["password"] != creds["password"]
    assert _release_config(env, user.session, "att-web")["DATABASE_URL"] == new["url"]

    detached = env.ok("DELETE", "/databases/main/attachments/att-web", user.session)
    assert "DATABASE_URL" not in detached["config_keys"]
    assert "DATABASE_URL" not in _release_config(env, user.session, "att-web")
    assert env.ok("GET", "/databases/main", user.session)["attached"] == []
    assert_error(env.call("DELETE", "/databases/main/attachments/att-web", user.session), 404)


def test_attach_refuses_a_key_the_app_already_has(env: Env, fake: Servers) -> None:
    add_server(env, "pg-key")
    user = env.signup("keyholder")
    env.create_app(user.session, "key-web")
    env.ok("PATCH", "/apps/key-web/config", user.session, json={"set": {"DATABASE_URL": "mine"}})
    create_db(env, user.session, "main")
    resp = env.call("POST", "/databases/main/attachments", user.session, json={"app": "key-web"})
    assert_error(resp, 409, "config_key_taken")
    for bad in ("PORT", "1X", "a-b", "", "x" * 101):
        resp = env.call(
            "POST", "/databases/main/attachments", user.session, json={"app": "key-web", "as": bad}
        )
        assert_error(resp, 422)
    config = env.ok("GET", "/apps/key-web/config", user.session)["config"]
    assert config == {"DATABASE_URL": "mine"}
    # An app without a release gets the config; its first deploy carries it.
    ok = env.ok(
        "POST",
        "/databases/main/attachments",
        user.session,
        json={"app": "key-web", "as": "DB"},
        status=201,
    )
    assert ok["release"] is None and ok["config_keys"] == ["DATABASE_URL", "DB"]


def test_delete_closes_keeps_and_the_purge_drops_after_retention(env: Env, fake: Servers) -> None:
    add_server(env, "pg-del")
    user = env.signup("deleter")
    env.create_app(user.session, "del-web")
    made = create_db(env, user.session, "old")
    env.ok("POST", "/databases/old/attachments", user.session, json={"app": "del-web"}, status=201)
    err = assert_error(env.call("DELETE", "/databases/old", user.session), 409, "database_attached")
    assert "berth db detach del-web old" in err["message"]
    env.ok("DELETE", "/databases/old/attachments/del-web", user.session)
    (server,) = fake.by_url.values()
    (fake_db,) = server.databases.values()
    password = fake_db.password

    with env.settings_override(database_retention_days=3):
        gone = env.ok("DELETE", "/databases/old", user.session)
    assert (gone["state"], gone["write_allowed"]) == ("deleted", False)
    assert gone["deleted_at"] == fake.now and gone["purge_after"] == fake.now + 3 * DAY
    assert not fake_db.write_allowed and fake_db.password != password  # closed, data kept
    assert_error(env.call("GET", "/databases/old/credentials", user.session), 409)
    assert_error(env.call("POST", "/databases/old/rotate", user.session), 409)
    attach = env.call("POST", "/databases/old/attachments", user.session, json={"app": "del-web"})
    assert_error(attach, 409, "database_deleted")
    taken = env.call("POST", "/databases", user.session, json={"name": "old", "engine": "postgres"})
    assert "kept closed until" in assert_error(taken, 409)["message"]
    assert env.ok("DELETE", "/databases/old", user.session)["state"] == "deleted"  # again: same
    with env.db() as session:
        row = session.scalar(select(ManagedDatabase).where(ManagedDatabase.name == "old"))
        assert row is not None and row.password == ""

    fake.now += 3 * DAY - 1
    assert env.ok("POST", "/admin/databases/purge", env.admin)["purged"] == 0
    assert server.databases  # still there
    fake.now += 2
    server.failing.add("drop")
    failed = env.ok("POST", "/admin/databases/purge", env.admin)
    assert failed["purged"] == 0 and len(failed["failed"]) == 1
    server.failing.clear()
    assert env.ok("POST", "/admin/databases/purge", env.admin)["purged"] == 1
    assert server.databases == {}
    assert_error(env.call("GET", "/databases/old", user.session), 404)
    assert create_db(env, user.session, "old")["created_at"] >= made["created_at"]


# -- a server or the store failing half-way -------------------------------------------------


def test_a_server_failing_leaves_no_half_state(env: Env, fake: Servers) -> None:
    add_server(env, "pg-flaky")
    (server,) = fake.by_url.values()
    user = env.signup("flaky")
    server.failing.add("create")
    resp = call_server_down(
        env, "POST", "/databases", user.session, json={"name": "x", "engine": "postgres"}
    )
    err = assert_error(resp, 503, "database_server_unavailable")
    assert "fake" not in err["message"]  # the server's own words are for the operator's log
    assert env.ok("GET", "/databases", user.session) == [] and server.databases == {}
    server.failing.clear()
    create_db(env, user.session, "x")
    (fake_db,) = server.databases.values()
    password = fake_db.password

    server.failing.add("rotate_password")  # delete: writes closed, then the password fails
    call_server_down(env, "DELETE", "/databases/x", user.session)
    assert env.ok("GET", "/databases/x", user.session)["state"] == "active"
    assert fake_db.write_allowed and fake_db.password == password
    server.failing.add("add_credential")
    call_server_down(env, "POST", "/databases/x/rotate", user.session)
    assert env.ok("GET", "/databases/x/credentials", user.session)["password"] == password
    server.failing.clear()
    assert env.ok("DELETE", "/databases/x", user.session)["state"] == "deleted"


def test_a_store_failure_after_create_drops_what_the_server_made(
    env: Env, fake: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_server(env, "pg-store")
    user = env.signup("storefail")
    (server,) = fake.by_url.values()

    class StoreDown(Exception):
        pass

    with env.db() as session:

        def boom() -> None:
            raise StoreDown("the store went away")

        monkeypatch.setattr(session, "commit", boom)
        spec = svc.NewDatabase("lost", "postgres")
        with pytest.raises(StoreDown):
            svc.create_database(session, fake, env.tenant_id(user.tenant), spec)
    assert server.databases == {}
    assert env.ok("GET", "/databases", user.session) == []


def test_two_creates_of_one_name_leave_one_database(env: Env, fake: Servers) -> None:
    """The other create commits its row while this one is on the server: this one's row is
    refused by the store (409), and what it made on the server is dropped again."""
    add_server(env, "pg-race")
    user = env.signup("racer")
    (server,) = fake.by_url.values()

    def the_other_create() -> None:
        server.on_create = None
        create_db(env, user.session, "same")

    server.on_create = the_other_create
    resp = env.call("POST", "/databases", user.session, json={"name": "same", "engine": "postgres"})
    assert_error(resp, 409)
    assert [d["name"] for d in env.ok("GET", "/databases", user.session)] == ["same"]
    assert len(server.databases) == 1


# -- the CLI over the same app --------------------------------------------------------------


@pytest.fixture
def cli(env: Env, fake: Servers, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`berth ...` with its API client on the in-process app, as ``token`` (default operator)."""

    def run(*args: str, token: str | None = None, stdin: str = "") -> Result:
        secret = token or env.admin

        def api_client() -> ApiClient:
            api = ApiClient(CliConfig(api_url="http://testserver", token=secret))
            api.http = TestClient(
                env.app,
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {secret}"},
                raise_server_exceptions=False,
            )
            return api

        monkeypatch.setattr(db_cmd, "client", api_client)
        runner = CliRunner()
        return runner.invoke(cli_main.app, list(args), env={"COLUMNS": "250"}, input=stdin)

    return run


def test_the_cli(env: Env, fake: Servers, cli: Callable[..., Result]) -> None:
    secret_url = url("postgres", "cli-secret")
    added = cli("admin", "db-servers", "add", "pg-cli", "--engine", "postgres", "--url", "-",
                "--capacity", "4", stdin=secret_url + "\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "pg-cli" in added.output and "cli-secret" not in added.output
    listed = cli("admin", "db-servers", "list")
    assert "pg-cli" in listed.output and "0/4" in listed.output
    info = cli("admin", "db-servers", "info", "pg-cli", "--json")
    assert json.loads(info.output)["reachable"] is True

    user: Account = env.signup("cliuser")
    env.create_app(user.session, "cli-web")
    bad_size = cli("db", "create", "shop", "--engine", "postgres", "--size", "lots",
                   token=user.session)  # fmt: skip
    assert bad_size.exit_code == 1 and "--size is like 512M" in str(bad_size.exception)
    big = cli("db", "create", "big", "--engine", "postgres", "--size", "2G", "--json",
              token=user.session)  # fmt: skip
    assert json.loads(big.output)["size_mb"] == 2048
    made = cli("db", "create", "shop", "--engine", "postgres", "--size", "512M", token=user.session)
    assert made.exit_code == 0, made.output
    assert "512M" in made.output and "berth db attach APP shop" in made.output
    creds = json.loads(cli("db", "credentials", "shop", "--json", token=user.session).output)
    assert creds["password"] in cli("db", "credentials", "shop", token=user.session).output
    attached = cli("db", "attach", "cli-web", "shop", token=user.session)
    assert attached.exit_code == 0 and "Attached shop to cli-web" in attached.output
    shown = cli("db", "list", token=user.session)
    assert "shop" in shown.output and "cli-web" in shown.output
    rotated = cli("db", "rotate", "shop", "--json", token=user.session)
    assert json.loads(rotated.output)["releases"][0]["app"] == "cli-web"
    refused = cli("db", "delete", "shop", "--yes", token=user.session)
    assert refused.exit_code == 1 and isinstance(refused.exception, CliError)
    assert "detach it first" in refused.exception.message
    assert cli("db", "detach", "cli-web", "shop", token=user.session).exit_code == 0
    deleted = cli("db", "delete", "shop", "--yes", token=user.session)
    assert deleted.exit_code == 0 and "kept until" in deleted.output
    info_deleted = cli("db", "info", "shop", token=user.session)
    assert (
        "deleted, dropped after" in info_deleted.output and "dropped after" in info_deleted.output
    )
    mem = cli("db", "create", "c", "--engine", "memcached", "--plan", "shared", token=user.session)
    assert mem.exit_code == 1 and isinstance(mem.exception, CliError)
    assert "never on a shared server" in mem.exception.message
    bad = cli("db", "create", "x';drop", "--engine", "postgres", token=user.session)
    assert bad.exit_code == 1 and isinstance(bad.exception, CliError)
    removing = cli("admin", "db-servers", "remove", "pg-cli")
    assert removing.exit_code == 1 and isinstance(removing.exception, CliError)
    assert cli("db", "delete", "big", "--yes", token=user.session).exit_code == 0
    fake.now += 30 * DAY
    assert "Dropped 2" in cli("admin", "db-servers", "purge").output
    assert cli("admin", "db-servers", "remove", "pg-cli").exit_code == 0
    denied = cli("admin", "db-servers", "list", token=user.session)
    assert denied.exit_code == 1 and isinstance(denied.exception, CliError)


def test_rotate_re_releases_every_app_it_can_and_says_which_it_could_not(
    env: Env, fake: Servers
) -> None:
    add_server(env, "pg-rot")
    user = env.signup("rotator")
    for app in ("rot-small", "rot-big"):
        env.create_app(user.session, app)
        env.deploy(user.session, app)
    env.ok("PATCH", "/apps/rot-big/config", user.session, json={"set": {"BLOB": "x" * 4000}})
    create_db(env, user.session, "shared")
    for app in ("rot-small", "rot-big"):
        body = {"app": app}
        env.ok("POST", "/databases/shared/attachments", user.session, json=body, status=201)
    # rot-big's config is now over the limit: it cannot take a new release, rot-small can.
    with env.settings_override(max_config_bytes=2000):
        rotated = env.ok("POST", "/databases/shared/rotate", user.session)
    by_app = {r["app"]: r for r in rotated["releases"]}
    assert "limit is 2000 bytes" in by_app["rot-big"]["error"] and not by_app["rot-big"]["release"]
    assert by_app["rot-small"]["error"] == "" and by_app["rot-small"]["release"]
    new = env.ok("GET", "/databases/shared/credentials", user.session)["url"]
    assert _release_config(env, user.session, "rot-small")["DATABASE_URL"] == new
    assert _release_config(env, user.session, "rot-big")["DATABASE_URL"] != new


def test_the_background_purge_drops_what_is_due_and_only_when_it_may(
    env: Env, fake: Servers
) -> None:
    from berth.services.databases_purge import DatabasePurge

    add_server(env, "pg-bg")
    user = env.signup("bgpurge")
    create_db(env, user.session, "soon")
    create_db(env, user.session, "stays")
    env.ok("DELETE", "/databases/soon", user.session)
    (server,) = fake.by_url.values()
    holds = [False]
    purge = DatabasePurge(
        env.platform.sessions, fake, clock=lambda: fake.now + 8 * DAY, may_act=lambda: holds[0]
    )
    assert purge.run_once().purged == [] and len(server.databases) == 2  # not the leader
    holds[0] = True
    assert len(purge.run_once().purged) == 1
    assert [d["name"] for d in env.ok("GET", "/databases", user.session)] == ["stays"]
    assert len(server.databases) == 1
