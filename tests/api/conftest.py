"""The API tests' world: the real FastAPI app over a real store, a fake runtime and builder.

One ``env`` per test module: a clean schema (SQLite in a temporary home, or the PostgreSQL of
``BERTH_DATABASE_URL`` with every table dropped first), the operator and its token, a
``FakeRuntime`` (the same protocol as the Docker driver) and a ``FakeBuilder``. No background
loops run: tests drive the billing controller and the webhook sender themselves.

Every call made through :meth:`Env.call` also asserts that the server did not answer 5xx: no
request in these tests, however bad, may crash a route.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, MetaData, create_engine, select
from sqlalchemy.orm import Session

from berth.api.app import create_app
from berth.api.routes_apps import txt_resolver
from berth.api.routes_nodes import engine_api
from berth.billing.ledger import tenant_account
from berth.builds.protocol import BuildEvent, BuildRequest
from berth.errors import EngineUnavailable
from berth.platform import Platform, open_store
from berth.runtime.fake import FakeRuntime
from berth.services import accounts
from berth.services.bootstrap import ensure_admin
from berth.services.certificates import Certificates
from berth.services.domains import TxtLookupError
from berth.settings import Settings
from berth.store.tables import Base, LedgerEntryRow, LedgerTx, Tenant, User

API = "/api/v1"
PASSWORD = "correct horse battery staple"
# Tables whose rows are not a tenant's state: the audit log (every request adds to it), login
# sessions (logging in adds one) and installation facts (the billing cursor).
NOT_STATE = frozenset({"audit_events", "web_sessions", "meta"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every API test runs under `make test-postgres` too: it must carry the store marker."""
    here = Path(__file__).parent
    unmarked = [
        item.nodeid
        for item in items
        if here in Path(str(item.fspath)).parents and item.get_closest_marker("store") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests/api tests without pytest.mark.store: {unmarked}")


class FakeBuilder:
    """An ImageBuilder that 'builds' by registering the tag in the FakeRuntime."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.builds: list[tuple[str, dict[str, str], list[str]]] = []

    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        context_dir, tag, labels = request.context_dir, request.tag, dict(request.labels)
        files = sorted(str(p.relative_to(context_dir)) for p in context_dir.rglob("*"))
        self.builds.append((tag, dict(labels), files))
        yield BuildEvent("log", f"Step 1/1 : COPY . / ({len(files)} files)")
        image_id = self.runtime.add_image(tag)
        yield BuildEvent("done", "", image_id)


class NoEngine:
    """The engine `cluster init` would make a Swarm manager: none in the API tests (the
    default is the host's engine, which must never join a swarm). A test that means to init
    overrides engine_api with a fake Swarm of its own."""

    def __getattr__(self, name: str) -> Any:
        raise EngineUnavailable("no container engine in the API tests")


class NoDns:
    """A TXT resolver that never touches the network and finds no record."""

    def txt_records(self, name: str) -> list[str]:
        raise TxtLookupError(f"{name} does not exist in DNS (NXDOMAIN; no DNS in the API tests)")


@dataclass(frozen=True)
class Account:
    """A signed-up user: email, password, a login session token and the personal tenant."""

    email: str
    password: str
    session: str
    tenant: str


def assert_error(
    resp: httpx.Response, status: int | Iterable[int], code: str | Iterable[str] | None = None
) -> dict[str, str]:
    """A 4xx in Berth's one error shape, {"error": {"code", "message"}}; returns the error."""
    statuses = {status} if isinstance(status, int) else set(status)
    assert resp.status_code in statuses, (resp.request.method, resp.request.url, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message"}, body
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        codes = {code} if isinstance(code, str) else set(code)
        assert err["code"] in codes, body
    return dict(err)


def charges_in_ledger(env: Env, tenant_id: str) -> list[tuple[str, int, int]]:
    """(key, period hour, amount) of the tenant's charge transactions."""
    with env.db() as session:
        rows = session.execute(
            select(LedgerTx.key, LedgerTx.period_hour, LedgerEntryRow.amount_minor)
            .join(LedgerEntryRow, LedgerEntryRow.tx_id == LedgerTx.id)
            .where(
                LedgerTx.tenant_id == tenant_id,
                LedgerTx.kind == "charge",
                LedgerEntryRow.account == tenant_account(tenant_id),
            )
        )
        return [(key, int(hour), -int(amount)) for key, hour, amount in rows]


def reset_database(url: str) -> None:
    """Drop every table (Berth's, alembic_version and anything else) for a clean schema."""
    engine = create_engine(url)
    try:
        Base.metadata.drop_all(engine)
        leftovers = MetaData()
        leftovers.reflect(engine)
        leftovers.drop_all(engine)
    finally:
        engine.dispose()


@dataclass
class Env:
    settings: Settings
    platform: Platform
    engine: Engine
    runtime: FakeRuntime
    builder: FakeBuilder
    admin: str  # the operator's admin-scoped token
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _clients: dict[str, TestClient] = field(default_factory=dict)
    _app: FastAPI | None = None

    # -- calling the API ---------------------------------------------------------------------

    @property
    def app(self) -> FastAPI:
        if self._app is None:
            self._app = create_app(self.platform)
            # No API test may send a DNS query (fuzzed domain verifications included): TXT
            # lookups find nothing unless a test injects its own resolver.
            self._app.dependency_overrides[txt_resolver] = NoDns
            # Nor any Swarm call to the host's engine (cluster init).
            self._app.dependency_overrides[engine_api] = NoEngine
        return self._app

    def client(self, ip: str = "testclient") -> TestClient:
        """A client whose requests come from ``ip`` (the login limiter counts per address)."""
        if ip not in self._clients:
            self._clients[ip] = TestClient(
                self.app, client=(ip, 50000), raise_server_exceptions=False
            )
        return self._clients[ip]

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        tenant: str | None = None,
        ip: str = "testclient",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if tenant is not None:
            sent["X-Berth-Tenant"] = tenant
        url = path if path.startswith(API) else API + path
        client = self.client(ip)
        resp = client.request(method, url, headers=sent, **kwargs)
        # A login sets the session cookie, and the client would send it from then on: every
        # request here says who it is explicitly instead.
        client.cookies.clear()
        assert resp.status_code < 500, f"{method} {url} -> {resp.status_code}: {resp.text}"
        return resp

    def ok(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        status: int | None = None,
        **kwargs: Any,
    ) -> Any:
        resp = self.call(method, path, token, **kwargs)
        expected = status if status is not None else resp.status_code
        assert resp.status_code < 300 and resp.status_code == expected, (
            method,
            path,
            resp.status_code,
            resp.text,
        )
        if not resp.content:
            return None
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text

    # -- accounts ----------------------------------------------------------------------------

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self._counter)}"

    def signup(self, prefix: str = "user", ip: str = "testclient") -> Account:
        email = f"{self.unique(prefix)}@example.com"
        data = self.ok(
            "POST",
            "/auth/signup",
            json={"email": email, "password": PASSWORD},
            status=201,
            ip=ip,
        )
        assert data["email"] == email
        return Account(email, PASSWORD, data["token"], data["tenant"])

    def mint(
        self, token: str, scope: str = "deploy", *, tenant: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A new API token (the response, with the secret in ``token`` and its ``id``)."""
        body = {"name": self.unique(f"{scope}-token"), "scope": scope, **extra}
        data: dict[str, Any] = self.ok(
            "POST", "/tokens", token, json=body, tenant=tenant, status=201
        )
        return data

    # -- apps --------------------------------------------------------------------------------

    def create_app(
        self, token: str, name: str, *, tenant: str | None = None, **spec: Any
    ) -> dict[str, Any]:
        data: dict[str, Any] = self.ok(
            "POST", "/apps", token, json={"name": name, **spec}, tenant=tenant, status=201
        )
        return data

    def deploy(
        self, token: str, app: str, image: str | None = None, *, tenant: str | None = None
    ) -> dict[str, Any]:
        """POST a release of an image that the (fake) engine has."""
        image = image or f"registry.example/{app}:v1"
        self.runtime.add_image(image)
        data: dict[str, Any] = self.ok(
            "POST", f"/apps/{app}/releases", token, json={"image": image}, tenant=tenant, status=201
        )
        return data

    # -- operator ----------------------------------------------------------------------------

    def plan(self, **fields: Any) -> str:
        name = fields.pop("name", None) or self.unique("plan")
        self.ok("POST", "/admin/plans", self.admin, json={"name": name, **fields}, status=201)
        return name

    def assign(self, tenant: str, plan: str) -> dict[str, Any]:
        data: dict[str, Any] = self.ok(
            "PUT", f"/admin/tenants/{tenant}/plan", self.admin, json={"plan": plan}
        )
        return data

    def credit(self, tenant: str, amount: str, key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"amount": amount}
        if key is not None:
            body["idempotency_key"] = key
        data: dict[str, Any] = self.ok(
            "POST", f"/admin/tenants/{tenant}/credit", self.admin, json=body, status=201
        )
        return data

    # -- settings and the store --------------------------------------------------------------

    @contextmanager
    def settings_override(self, **changes: Any) -> Iterator[Settings]:
        """Run with changed settings (the routes read ``platform.settings`` on every request)."""
        before = self.platform.settings
        self.platform.settings = before.model_copy(update=changes)
        try:
            yield self.platform.settings
        finally:
            self.platform.settings = before

    @contextmanager
    def db(self) -> Iterator[Session]:
        with self.platform.sessions() as session:
            yield session

    def tenant_id(self, name: str) -> str:
        with self.db() as session:
            tid = session.scalar(select(Tenant.id).where(Tenant.name == name))
        assert tid is not None, name
        return tid

    def user_id(self, email: str) -> str:
        with self.db() as session:
            uid = session.scalar(select(User.id).where(User.email == email))
        assert uid is not None, email
        return uid

    def balance(self, tenant: str) -> int:
        from berth.services.billing import balance

        with self.db() as session:
            return balance(session, self.tenant_id(tenant))

    def state(
        self, tenant_ids: Iterable[str], user_ids: Iterable[str] = (), ignore_tokens_of: str = ""
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Every stored row that belongs to these tenants (and users), table by table.

        Two equal snapshots mean nothing of theirs changed: apps, releases, deployments, domains,
        config, tokens, members, invitations, ledger, usage, notifications, the tenant rows.
        ``ignore_tokens_of`` leaves out the API tokens of one user (who may mint their own).
        """
        tids, uids = set(tenant_ids), set(user_ids)
        accounts = {f"tenant:{t}:balance" for t in tids}
        out: dict[str, list[tuple[Any, ...]]] = {}
        with self.db() as session:
            tx_ids = set(session.scalars(select(LedgerTx.id).where(LedgerTx.tenant_id.in_(tids))))
            for table in Base.metadata.sorted_tables:
                if table.name in NOT_STATE:
                    continue
                cols = table.c
                stmt = select(table)
                if table.name == "tenants":
                    stmt = stmt.where(cols.id.in_(tids))
                elif table.name == "users":
                    stmt = stmt.where(cols.id.in_(uids) | cols.personal_tenant_id.in_(tids))
                elif table.name == "ledger_entries":
                    stmt = stmt.where(cols.account.in_(accounts) | cols.tx_id.in_(tx_ids))
                elif "tenant_id" in cols:
                    stmt = stmt.where(cols.tenant_id.in_(tids))
                if table.name == "api_tokens" and ignore_tokens_of:
                    stmt = stmt.where(cols.user_id.is_(None) | (cols.user_id != ignore_tokens_of))
                rows = [tuple(row) for row in session.execute(stmt)]
                out[table.name] = sorted(rows, key=repr)
        return out

    def app_state(self, token: str, tenant: str | None = None) -> dict[str, Any]:
        """What a user sees of their apps: settings, releases, domains and config."""
        state: dict[str, Any] = {}
        for app in self.ok("GET", "/apps", token, tenant=tenant):
            name = app["name"]
            keep = ("id", "memory_mb", "cpus", "port", "health_path", "scale", "domains")
            state[name] = {
                "app": {k: app[k] for k in (*keep, "serving_release", "target_release")},
                "releases": [
                    (r["version"], r["id"], r["image_id"], r["config_keys"])
                    for r in self.ok("GET", f"/apps/{name}/releases", token, tenant=tenant)
                ],
                "domains": [
                    d["hostname"]
                    for d in self.ok("GET", f"/apps/{name}/domains", token, tenant=tenant)
                ],
                "config": self.ok("GET", f"/apps/{name}/config", token, tenant=tenant)["config"],
            }
        return state


def build_env(home: Path, **overrides: Any) -> Env:
    url = os.environ.get("BERTH_DATABASE_URL", "")
    if url:
        reset_database(url)
    # Explicit values, so that BERTH_* variables in the caller's environment change nothing.
    values: dict[str, Any] = {
        "home": home,
        "database_url": url,
        "base_domain": "berth.localhost",
        "currency": "EUR",
        "max_scale": 20,
        "payment_webhook_secret": "",
        "billing_webhook_url": "",
        "billing_webhook_secret": "",
        "low_balance_threshold_minor": 500,
        "arrears_grace_seconds": 72 * 3600,
        "signup_limit_per_address": 10_000,  # every test signs up from the same address
        # The fake runtime's images are registry references (no build labels to prove
        # ownership), so the tests deploy from a configured registry.
        "registry": "registry.example",
    }
    values.update(overrides)
    settings = Settings(**values)
    engine, sessions, installation = open_store(settings)
    with sessions() as session:
        ensure_admin(session, settings.home / "admin-token", settings.currency)
    admin = (settings.home / "admin-token").read_text().strip()
    runtime = FakeRuntime(installation)
    builder = FakeBuilder(runtime)
    platform = Platform(settings, engine, sessions, installation, runtime=runtime, builder=builder)
    # HTTPS without a CA (uploads only): the files under home/certs, no nginx to feed.
    platform.certificates = Certificates(settings, None, sessions=sessions)
    return Env(settings, platform, engine, runtime, builder, admin)


@pytest.fixture(autouse=True, scope="session")
def quick_password_hashing() -> Iterator[None]:
    """argon2id with small cost parameters: the same code path at a fraction of the time (the
    suite signs up and logs in a hundred times). Stored hashes still say which parameters."""
    original = accounts._hasher
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        yield
    finally:
        accounts._hasher = original


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    made = build_env(tmp_path_factory.mktemp("berth-home"))
    try:
        yield made
    finally:
        for client in made._clients.values():
            client.close()
        made.engine.dispose()
