"""The tenant boundary, route by route: EVERY route of the API is in the table below, and a test
fails when a route is added without a row (or a row outlives its route).

Tenant A has an app with releases (an image deploy and a build), config, a domain, tokens,
usage, charges, notifications and webhook deliveries, and a team with its own app, members and
a pending invitation. Tenant B is another user with an app of their own. Then:

* B, with a login session and with an API token of each scope, calls every route naming A's
  resources. The answer is exactly the answer for a resource that does not exist: 404, or the
  403 that B's credential gets on that route whatever it names. Never 2xx, never 409.
* Where a name is global by design (app names and domains are hostnames, team names and emails
  are unique), B gets a 409 that says nothing about the owner.
* No answer B gets, lists included, contains any of A's data.
* Operator routes are 403 for everyone but operators; no credential at all is a 401 everywhere.
* A's viewer (a team member) and A's read-scoped token change nothing; a developer deploys but
  does not manage members or invitations.
* After every call that could change something, every stored row of A's is as it was.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from berth.api import deps
from berth.billing.watermark import Watermark
from berth.controllers.billing import BillingController
from berth.controllers.metering import record_watermark
from berth.store.tables import (
    Deployment,
    Invitation,
    LedgerTx,
    Release,
    RunIntervalRow,
    WebhookDelivery,
    new_id,
)
from tests.api.conftest import API, PASSWORD, Account, Env, assert_error

pytestmark = pytest.mark.store

FOREIGN = "foreign"  # names another tenant's resource: same answer as for one that does not exist
GLOBAL = "global"  # a name unique across tenants by design: a 409 that says nothing of the owner
OWN = "own"  # acts in the caller's own tenant: shows nothing of any other tenant
OPERATOR = "operator"  # platform operators only

LEVELS = ("public", "read", "account", "write", "manage", "operator")
# "account": any tenant member, but only with a login session or an admin-scoped token (minting
# tokens, creating and joining teams, revoking other tokens): checked in the route, not in deps.


@dataclass(frozen=True)
class Refs:
    """What a request names: a tenant's real resources, or made-up ones that do not exist."""

    app: str
    own_app: str  # the caller's own app, for requests that mix their app with a foreign name
    domain: str
    deployment: str
    token_id: str
    email: str
    invitation: str
    tenant: str
    team: str
    image: str


NOWHERE = Refs(
    app="no-such-app",
    own_app="",  # filled per caller
    domain="no-such-host.example",
    deployment="0123456789abcdef",
    token_id="fedcba9876543210",
    email="nobody-at-all@example.com",
    invitation="binv_" + "x" * 32,
    tenant="no-such-tenant",
    team="no-such-team",
    image="registry.example/no-such-image:v1",
)


@dataclass(frozen=True)
class Req:
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    fresh_ip: bool = False  # the login limiter counts failures per address

    def text(self) -> str:
        """Everything the caller sent, to tell echoed names from leaked ones."""
        return " ".join(
            (self.path, json.dumps(self.json), json.dumps(self.params), json.dumps(self.headers))
        ) + (self.content or b"").decode("latin-1")


@dataclass(frozen=True)
class Case:
    kind: str
    make: Callable[[Refs], Req]
    status: int | None = None  # expected when the credential may use the route at all
    code: str | None = None
    last: bool = False  # ends the caller's session: run after everything else


@dataclass(frozen=True)
class Route:
    level: str
    cases: tuple[Case, ...]


def foreign(make: Callable[[Refs], Req], code: str, status: int = 404) -> Case:
    return Case(FOREIGN, make, status, code)


def global_name(make: Callable[[Refs], Req], code: str, status: int = 409) -> Case:
    return Case(GLOBAL, make, status, code)


def own(make: Callable[[Refs], Req], status: int | None = None, code: str | None = None) -> Case:
    return Case(OWN, make, status, code)


def operator(make: Callable[[Refs], Req]) -> Case:
    return Case(OPERATOR, make, 403, "operator_only")


def build_context() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY . /\n"), ("index.html", b"hi\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = build_context()
TAR_HEADERS = {"Content-Type": "application/x-tar"}
PERIOD = datetime.now(UTC).strftime("%Y-%m")
FAKE_SIGNATURE = {"Berth-Signature": f"t={int(time.time())},v1={'0' * 64}"}


def _payment(r: Refs) -> Req:
    body = {"tenant": r.tenant, "amount": "100", "currency": "EUR", "idempotency_key": "b-pays"}
    return Req(
        "/billing/payments/webhook", content=json.dumps(body).encode(), headers=FAKE_SIGNATURE
    )


def _usage(r: Refs) -> Req:
    today = datetime.now(UTC).date()
    days = {"from": (today - timedelta(days=30)).isoformat(), "to": (today + timedelta(days=2))}
    return Req("/billing/usage", params={k: str(v) for k, v in days.items()})


def _usage_csv(r: Refs) -> Req:
    today = datetime.now(UTC).date()
    start, end = today - timedelta(days=3), today + timedelta(days=1)
    return Req("/billing/usage", params={"from": str(start), "to": str(end), "format": "csv"})


# fmt: off
TABLE: dict[tuple[str, str], Route] = {
    ("GET", "/status"): Route("read", (own(lambda r: Req("/status")),)),
    # -- accounts
    ("POST", "/auth/signup"): Route("public", (global_name(
        lambda r: Req("/auth/signup", json={"email": r.email, "password": PASSWORD}),
        "email_taken"),)),
    ("POST", "/auth/login"): Route("public", (foreign(
        lambda r: Req("/auth/login", json={"email": r.email, "password": "wrong password!"},
                      fresh_ip=True), "bad_credentials", 401),)),
    ("POST", "/auth/logout"): Route("read", (
        Case(OWN, lambda r: Req("/auth/logout"), 204, last=True),)),
    ("GET", "/auth/whoami"): Route("read", (own(lambda r: Req("/auth/whoami")),)),
    ("POST", "/tokens"): Route("account", (
        own(lambda r: Req("/tokens", json={"name": "matrix", "scope": "read"}), 201),)),
    ("GET", "/tokens"): Route("read", (own(lambda r: Req("/tokens")),)),
    ("DELETE", "/tokens/{token_id}"): Route("account", (
        foreign(lambda r: Req(f"/tokens/{r.token_id}"), "token_not_found"),)),
    ("POST", "/teams"): Route("account", (
        global_name(lambda r: Req("/teams", json={"name": r.team}), "tenant_exists"),
        global_name(lambda r: Req("/teams", json={"name": r.tenant}), "tenant_exists"),)),
    ("GET", "/teams"): Route("read", (own(lambda r: Req("/teams")),)),
    ("GET", "/members"): Route("read", (own(lambda r: Req("/members")),)),
    ("PATCH", "/members/{email}"): Route("manage", (foreign(
        lambda r: Req(f"/members/{r.email}", json={"role": "viewer"}), "member_not_found"),)),
    ("DELETE", "/members/{email}"): Route("manage", (
        foreign(lambda r: Req(f"/members/{r.email}"), "member_not_found"),)),
    ("POST", "/invitations"): Route("manage", (own(
        lambda r: Req("/invitations", json={"email": r.email, "role": "owner"}),
        409, "not_a_team"),)),
    ("POST", "/invitations/accept"): Route("account", (foreign(
        lambda r: Req("/invitations/accept", json={"token": r.invitation}),
        "invitation_not_found"),)),
    # -- apps
    ("POST", "/apps"): Route("write", (
        global_name(lambda r: Req("/apps", json={"name": r.app}), "app_exists"),)),
    ("GET", "/apps"): Route("read", (own(lambda r: Req("/apps")),)),
    ("GET", "/apps/{name}"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}"), "app_not_found"),)),
    ("DELETE", "/apps/{name}"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}"), "app_not_found"),)),
    ("PATCH", "/apps/{name}"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}", json={"constraints": ["zone==nowhere"]}),
                "app_not_found"),
        foreign(lambda r: Req(f"/apps/{r.app}", json={"traffic": {
            "maintenance": True, "allow": ["10.0.0.0/8"], "rate_limit": {"per_second": 1},
            "basic_auth": [{"user": "b", "password": "taken-over"}]}}), "app_not_found"),
    )),
    ("GET", "/apps/{name}/releases"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/releases"), "app_not_found"),)),
    ("POST", "/apps/{name}/releases"): Route("write", (foreign(
        lambda r: Req(f"/apps/{r.app}/releases", json={"image": r.image}), "app_not_found"),)),
    ("POST", "/apps/{name}/rollback"): Route("write", (foreign(
        lambda r: Req(f"/apps/{r.app}/rollback", json={"version": 1}), "app_not_found"),)),
    ("POST", "/apps/{name}/scale"): Route("write", (foreign(
        lambda r: Req(f"/apps/{r.app}/scale", json={"replicas": 3}), "app_not_found"),)),
    ("GET", "/apps/{name}/config"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/config"), "app_not_found"),)),
    ("PATCH", "/apps/{name}/config"): Route("write", (foreign(
        lambda r: Req(f"/apps/{r.app}/config", json={"set": {"INTRUDER": "1"}}),
        "app_not_found"),)),
    ("POST", "/apps/{name}/restart"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}/restart"), "app_not_found"),)),
    ("GET", "/apps/{name}/deployments/{deployment_id}"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/deployments/{r.deployment}"), "app_not_found"),
        foreign(lambda r: Req(f"/apps/{r.own_app}/deployments/{r.deployment}"),
                "deployment_not_found"),)),
    ("GET", "/apps/{name}/instances"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/instances"), "app_not_found"),)),
    ("GET", "/apps/{name}/logs"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/logs"), "app_not_found"),)),
    ("GET", "/apps/{name}/metrics"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/metrics"), "app_not_found"),)),
    # Served at /metrics too (Prometheus' default path); a tenant sees only its own apps.
    ("GET", "/metrics"): Route("read", (own(lambda r: Req("/metrics")),)),
    ("GET", "/apps/{name}/domains"): Route("read", (
        foreign(lambda r: Req(f"/apps/{r.app}/domains"), "app_not_found"),)),
    ("POST", "/apps/{name}/domains"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}/domains", json={"hostname": "intruder.example"}),
                "app_not_found"),
        global_name(lambda r: Req(f"/apps/{r.own_app}/domains", json={"hostname": r.domain}),
                    "domain_taken"),)),
    ("POST", "/apps/{name}/domains/{hostname}/verify"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}/domains/{r.domain}/verify"), "app_not_found"),
        global_name(lambda r: Req(f"/apps/{r.own_app}/domains/{r.domain}/verify"),
                    "domain_taken"),)),
    ("DELETE", "/apps/{name}/domains/{hostname}"): Route("write", (
        foreign(lambda r: Req(f"/apps/{r.app}/domains/{r.domain}"), "app_not_found"),
        foreign(lambda r: Req(f"/apps/{r.own_app}/domains/{r.domain}"), "domain_not_found"),)),
    ("POST", "/apps/{name}/builds"): Route("write", (foreign(
        lambda r: Req(f"/apps/{r.app}/builds", content=TAR, headers=TAR_HEADERS),
        "app_not_found"),)),
    # -- billing
    ("GET", "/billing/balance"): Route("read", (own(lambda r: Req("/billing/balance")),)),
    ("GET", "/billing/transactions"): Route("read", (
        own(lambda r: Req("/billing/transactions")),)),
    ("GET", "/billing/usage"): Route("read", (own(_usage, 200), own(_usage_csv, 200))),
    ("GET", "/billing/invoices/{period}"): Route("read", (
        own(lambda r: Req(f"/billing/invoices/{PERIOD}")),
        own(lambda r: Req(f"/billing/invoices/{PERIOD}", params={"format": "csv"})),)),
    ("GET", "/billing/notifications"): Route("read", (
        own(lambda r: Req("/billing/notifications")),)),
    ("GET", "/billing/webhooks"): Route("read", (own(lambda r: Req("/billing/webhooks")),)),
    ("POST", "/billing/payments/webhook"): Route("public", (
        foreign(_payment, "not_configured"),)),
    # -- certificates: a hostname of another tenant's app is no hostname of the caller's
    ("GET", "/certs"): Route("read", (own(lambda r: Req("/certs")),)),
    ("POST", "/certs"): Route("write", (foreign(
        lambda r: Req("/certs", json={"domain": r.domain, "cert": "-", "key": "-"}),
        "domain_not_found"),
        foreign(lambda r: Req("/certs", json={
            "domain": f"{r.app}.berth.localhost", "cert": "-", "key": "-"}),
            "domain_not_found"),)),
    ("DELETE", "/certs/{domain}"): Route("write", (
        foreign(lambda r: Req(f"/certs/{r.domain}"), "domain_not_found"),
        foreign(lambda r: Req(f"/certs/{r.app}.berth.localhost"), "domain_not_found"),)),
    # -- ingress nodes' agents: the ingress token only (no tenant's, no operator's)
    ("POST", "/ingress/sync"): Route("public", (foreign(
        lambda r: Req("/ingress/sync", json={"node": "w1"}), "unauthorized", 401),)),
    # -- managed databases ("a-db" is not B's: the same answer as for A's, which
    # tests/api/test_databases_api.py::test_roles_and_ownership holds against a real one)
    ("POST", "/databases"): Route("write", (own(
        lambda r: Req("/databases", json={"name": "matrix", "engine": "postgres"}),
        409, "no_database_server"),)),
    ("GET", "/databases"): Route("read", (own(lambda r: Req("/databases")),)),
    ("GET", "/databases/{name}"): Route("read", (
        foreign(lambda r: Req("/databases/a-db"), "database_not_found"),)),
    ("DELETE", "/databases/{name}"): Route("write", (
        foreign(lambda r: Req("/databases/a-db"), "database_not_found"),)),
    ("GET", "/databases/{name}/credentials"): Route("write", (
        foreign(lambda r: Req("/databases/a-db/credentials"), "database_not_found"),)),
    ("POST", "/databases/{name}/rotate"): Route("write", (
        foreign(lambda r: Req("/databases/a-db/rotate"), "database_not_found"),)),
    ("POST", "/databases/{name}/attachments"): Route("write", (foreign(
        lambda r: Req("/databases/a-db/attachments", json={"app": r.app}), "app_not_found"),)),
    ("DELETE", "/databases/{name}/attachments/{app}"): Route("write", (
        foreign(lambda r: Req(f"/databases/a-db/attachments/{r.app}"), "app_not_found"),)),
    ("POST", "/databases/{name}/backups"): Route("write", (
        foreign(lambda r: Req("/databases/a-db/backups"), "database_not_found"),)),
    ("GET", "/databases/{name}/backups"): Route("read", (
        foreign(lambda r: Req("/databases/a-db/backups"), "database_not_found"),)),
    ("GET", "/databases/{name}/backups/{backup_id}"): Route("read", (
        foreign(lambda r: Req("/databases/a-db/backups/0123456789abcdef"),
                "database_not_found"),)),
    ("GET", "/databases/{name}/backups/{backup_id}/file"): Route("write", (
        foreign(lambda r: Req("/databases/a-db/backups/0123456789abcdef/file"),
                "database_not_found"),)),
    ("POST", "/databases/{name}/restore"): Route("write", (foreign(
        lambda r: Req("/databases/a-db/restore", json={"backup": "0123456789abcdef"}),
        "database_not_found"),)),
    ("POST", "/admin/db-servers"): Route("operator", (operator(lambda r: Req(
        "/admin/db-servers",
        json={"name": "b-pg", "engine": "postgres", "url": "postgresql://b:pw@127.0.0.1/"})),)),
    ("POST", "/admin/db-servers/launch"): Route("operator", (operator(lambda r: Req(
        "/admin/db-servers/launch",
        json={"name": "b-launch", "engine": "redis", "listen": "127.0.0.1"})),)),
    ("GET", "/admin/db-servers"): Route("operator", (operator(
        lambda r: Req("/admin/db-servers")),)),
    ("GET", "/admin/db-servers/{name}"): Route("operator", (operator(
        lambda r: Req("/admin/db-servers/shared-1")),)),
    ("POST", "/admin/db-servers/{name}/drain"): Route("operator", (operator(
        lambda r: Req("/admin/db-servers/shared-1/drain")),)),
    ("POST", "/admin/db-servers/{name}/activate"): Route("operator", (operator(
        lambda r: Req("/admin/db-servers/shared-1/activate")),)),
    ("DELETE", "/admin/db-servers/{name}"): Route("operator", (operator(
        lambda r: Req("/admin/db-servers/shared-1")),)),
    ("POST", "/admin/databases/purge"): Route("operator", (operator(
        lambda r: Req("/admin/databases/purge")),)),
    ("POST", "/admin/databases/usage"): Route("operator", (operator(
        lambda r: Req("/admin/databases/usage")),)),
    # -- operators
    ("POST", "/admin/plans"): Route("operator", (operator(
        lambda r: Req("/admin/plans", json={"name": "b-free", "price_per_gb_hour": "0"})),)),
    ("GET", "/admin/plans"): Route("operator", (operator(lambda r: Req("/admin/plans")),)),
    ("GET", "/admin/tenants"): Route("operator", (operator(lambda r: Req("/admin/tenants")),)),
    ("PUT", "/admin/tenants/{tenant}/plan"): Route("operator", (operator(
        lambda r: Req(f"/admin/tenants/{r.tenant}/plan", json={"plan": "default"})),)),
    ("POST", "/admin/tenants/{tenant}/credit"): Route("operator", (operator(
        lambda r: Req(f"/admin/tenants/{r.tenant}/credit", json={"amount": "1000"})),)),
    ("POST", "/admin/tenants/{tenant}/adjust"): Route("operator", (operator(
        lambda r: Req(f"/admin/tenants/{r.tenant}/adjust",
                      json={"amount": "-1000", "memo": "theft"})),)),
    ("DELETE", "/admin/tenants/{tenant}"): Route("operator", (operator(
        lambda r: Req(f"/admin/tenants/{r.tenant}", params={"confirm": r.tenant})),)),
    ("GET", "/admin/webhooks"): Route("operator", (operator(lambda r: Req("/admin/webhooks")),)),
    ("GET", "/admin/billing/status"): Route("operator", (operator(
        lambda r: Req("/admin/billing/status")),)),
    ("POST", "/admin/domains/{hostname}/approve"): Route("operator", (operator(
        lambda r: Req(f"/admin/domains/{r.domain}/approve")),)),
    ("GET", "/admin/cluster"): Route("operator", (operator(lambda r: Req("/admin/cluster")),)),
    ("POST", "/admin/cluster/init"): Route("operator", (operator(
        lambda r: Req("/admin/cluster/init", json={})),)),
    ("GET", "/admin/cluster/join-command"): Route("operator", (operator(
        lambda r: Req("/admin/cluster/join-command")),)),
    ("GET", "/admin/nodes"): Route("operator", (operator(lambda r: Req("/admin/nodes")),)),
    ("GET", "/admin/nodes/{node}"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local")),)),
    ("POST", "/admin/nodes/{node}/labels"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local/labels", json={"set": {"zone": "a"}})),)),
    ("POST", "/admin/nodes/{node}/cordon"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local/cordon")),)),
    ("POST", "/admin/nodes/{node}/uncordon"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local/uncordon")),)),
    ("POST", "/admin/nodes/{node}/drain"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local/drain", json={"timeout_seconds": 5})),)),
    ("GET", "/admin/nodes/{node}/drain"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local/drain")),)),
    ("DELETE", "/admin/nodes/{node}"): Route("operator", (operator(
        lambda r: Req("/admin/nodes/local", params={"force": "true"})),)),
    ("GET", "/audit"): Route("read", (
        own(lambda r: Req("/audit")),
        own(lambda r: Req("/audit", params={"all": "true"}), 403, "operator_only"),)),
}
# fmt: on


def all_cases() -> Iterator[tuple[str, str, Route, Case]]:
    """Every case, those that end the caller's session last."""
    items = [(m, p, route, case) for (m, p), route in TABLE.items() for case in route.cases]
    yield from sorted(items, key=lambda item: item[3].last)


# -- credentials ----------------------------------------------------------------------------------

_LEVEL = {"public": -1, "read": 0, "write": 1, "manage": 2}


@dataclass(frozen=True)
class Cred:
    label: str
    secret: str
    level: int  # min(role, scope): 0 read, 1 deploy, 2 manage
    account: bool  # a login session or an admin-scoped token
    tenant: str | None = None  # sent as X-Berth-Tenant

    def may(self, level: str) -> bool:
        if level == "operator":
            return False
        if level == "account":
            return self.account
        return self.level >= _LEVEL[level]


# -- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    a: Account
    b: Account
    a_refs: Refs  # A's resources, as B names them (B's own app beside them)
    team_refs: Refs  # A's team's resources, as its viewer names them
    self_refs: Refs  # A's resources, as A's own read token names them
    a_tenants: list[str]
    a_users: list[str]
    viewer: Account
    developer: Account
    team: str
    a_read: str  # A's read-scoped token
    a_admin: str  # A's admin-scoped token
    secret_markers: set[str]  # A's data that B never names: must never reach B
    named_markers: set[str]  # A's names that B's requests use: only ever echoed back
    initial_state: dict[str, list[tuple[Any, ...]]]
    initial_apps: dict[str, Any]

    def a_state(self, env: Env, ignore_tokens_of: str = "") -> dict[str, list[tuple[Any, ...]]]:
        return env.state(self.a_tenants, self.a_users, ignore_tokens_of)


def join_team(env: Env, owner: Account, team: str, who: Account, role: str) -> None:
    inv = env.ok(
        "POST",
        "/invitations",
        owner.session,
        tenant=team,
        json={"email": who.email, "role": role},
        status=201,
    )
    env.ok("POST", "/invitations/accept", who.session, json={"token": inv["token"]})


def build(env: Env, token: str, app: str) -> dict[str, Any]:
    resp = env.call("POST", f"/apps/{app}/builds", token, content=TAR, headers=TAR_HEADERS)
    assert resp.status_code == 200, resp.text
    events = [json.loads(line) for line in resp.text.splitlines()]
    assert events[-1]["type"] == "release", events
    result: dict[str, Any] = events[-1]
    return result


def meter_usage(env: Env, tenant: str, app_id: str) -> None:
    """Two hours of A's app running, metered and charged, as the billing loop would."""
    now = time.time()
    hour = int(now // 3600 * 3600)
    with env.db() as session:
        session.add(
            RunIntervalRow(
                id=new_id(),
                container_id=f"ctr-{app_id}",
                tenant_id=env.tenant_id(tenant),
                app_id=app_id,
                memory_mb=256,
                cpus_milli=500,
                started_at=hour - 3 * 3600 + 60,
                stopped_at=hour - 3600,
            )
        )
        record_watermark(session, Watermark(now, now))  # a reconciler's pass saw it all
        session.commit()
    settings = env.settings.model_copy(update={"billing_webhook_url": "http://127.0.0.1:9/hook"})
    stats = BillingController(settings, env.platform.sessions, clock=lambda: now).run_once()
    assert stats.usage_records >= 2 and stats.charges >= 1, stats


@pytest.fixture(scope="module")
def world(env: Env) -> World:
    a, b = env.signup("alice"), env.signup("bob")
    viewer, developer = env.signup("vera"), env.signup("dev")
    a_admin = env.mint(a.session, "admin")
    a_deploy = env.mint(a.session, "deploy")
    a_read = env.mint(a.session, "read")

    # A's app: an image release, a build release, config (a third release), a domain.
    a_app = env.create_app(a.session, "a-app")
    deployed = env.deploy(a_admin["token"], "a-app", "registry.example/a-app:v1")
    build(env, a_deploy["token"], "a-app")
    env.ok("PATCH", "/apps/a-app/config", a.session, json={"set": {"SECRET_KEY": "a-s3cret-v4lue"}})
    env.ok(
        "POST",
        "/apps/a-app/domains",
        a.session,
        json={"hostname": "www.alice-shop.example"},
        status=201,
    )
    env.ok("POST", "/admin/domains/www.alice-shop.example/approve", env.admin)

    # A's team: an app with a release and a domain, a viewer, a developer, a pending invitation.
    team = env.unique("alice-team")
    env.ok("POST", "/teams", a.session, json={"name": team}, status=201)
    t_app = env.create_app(a.session, "t-app", tenant=team)
    t_deployed = env.deploy(a.session, "t-app", "registry.example/t-app:v1", tenant=team)
    env.ok(
        "POST",
        "/apps/t-app/domains",
        a.session,
        tenant=team,
        json={"hostname": "team.alice-shop.example"},
        status=201,
    )
    env.ok("POST", "/admin/domains/team.alice-shop.example/approve", env.admin)
    t_admin = env.mint(a.session, "admin", tenant=team)
    join_team(env, a, team, viewer, "viewer")
    join_team(env, a, team, developer, "developer")
    pending = env.ok(
        "POST",
        "/invitations",
        a.session,
        tenant=team,
        json={"email": "carol@example.com", "role": "owner"},
        status=201,
    )

    # A's money: a priced plan, a top-up, two metered hours charged, a low-balance warning.
    plan = env.plan(price_per_gb_hour="0.40", price_per_cpu_hour="0.20")
    env.assign(a.tenant, plan)
    env.credit(a.tenant, "2.00", key="matrix-a-topup")
    meter_usage(env, a.tenant, a_app["id"])

    # B: an app with a release (B's tokens are minted by each sweep).
    env.create_app(b.session, "bee-app")
    env.deploy(b.session, "bee-app", "registry.example/bee-app:v1")

    a_tenants = [env.tenant_id(a.tenant), env.tenant_id(team)]
    a_users = [env.user_id(u.email) for u in (a, viewer, developer)]
    secret: set[str] = {
        a_app["id"],
        t_app["id"],
        "t-app",
        "team.alice-shop.example",
        "SECRET_KEY",
        "a-s3cret-v4lue",
        "carol@example.com",
        viewer.email,
        developer.email,
        pending["id"],
        a_deploy["id"],
        a_read["id"],
        t_admin["id"],
        a_admin["prefix"],
        a_deploy["prefix"],
        a_read["prefix"],
        t_admin["prefix"],
        a_admin["token"],
        a_deploy["token"],
        a_read["token"],
        t_admin["token"],
    }
    with env.db() as session:
        for model in (Release, Deployment):
            for row in session.scalars(select(model).where(model.tenant_id.in_(a_tenants))):
                secret.add(row.id)
                if isinstance(row, Release):
                    secret.add(row.image_id)
        secret |= set(session.scalars(select(LedgerTx.id).where(LedgerTx.tenant_id.in_(a_tenants))))
        secret |= set(
            session.scalars(
                select(WebhookDelivery.id).where(WebhookDelivery.tenant_id.in_(a_tenants))
            )
        )
        invitations = session.scalars(select(Invitation).where(Invitation.tenant_id.in_(a_tenants)))
        secret |= {i.id for i in invitations}
    a_dep = deployed["deployment"]["id"]
    secret.discard(a_dep)
    a_refs = Refs(
        app="a-app",
        own_app="bee-app",
        domain="www.alice-shop.example",
        deployment=a_dep,
        token_id=a_admin["id"],
        email=a.email,
        invitation=pending["token"],
        tenant=a.tenant,
        team=team,
        image="registry.example/a-app:v1",
    )
    named = {getattr(a_refs, f.name) for f in fields(Refs)} - {"bee-app"}
    secret -= named
    assert not any(m in n for m in secret for n in named), "markers must be told apart"
    team_refs = Refs(
        app="t-app",
        own_app="t-app",
        domain="team.alice-shop.example",
        deployment=t_deployed["deployment"]["id"],
        token_id=t_admin["id"],
        email=a.email,
        invitation=pending["token"],
        tenant=team,
        team=team,
        image="registry.example/t-app:v1",
    )
    self_refs = replace(a_refs, own_app="a-app")
    made = World(
        a=a,
        b=b,
        a_refs=a_refs,
        team_refs=team_refs,
        self_refs=self_refs,
        a_tenants=a_tenants,
        a_users=a_users,
        viewer=viewer,
        developer=developer,
        team=team,
        a_read=a_read["token"],
        a_admin=a_admin["token"],
        secret_markers=secret,
        named_markers=named,
        initial_state={},
        initial_apps={},
    )
    made.initial_state = made.a_state(env)
    made.initial_apps = env.app_state(a.session)
    assert set(made.initial_apps) == {"a-app"}
    assert len(made.initial_apps["a-app"]["releases"]) == 3
    return made


# -- calling and judging --------------------------------------------------------------------------


def send(env: Env, method: str, rq: Req, cred: Cred | None, tenant: str | None = None) -> Any:
    return env.call(
        method,
        rq.path,
        cred.secret if cred else None,
        tenant=tenant or (cred.tenant if cred else None),
        ip=env.unique("10.77.0") if rq.fresh_ip else "testclient",
        json=rq.json,
        params=rq.params,
        content=rq.content,
        headers=rq.headers,
    )


def error_of(resp: httpx.Response) -> tuple[int, str, str]:
    if resp.status_code < 400:
        return resp.status_code, "", ""
    err = assert_error(resp, resp.status_code)
    return resp.status_code, err["code"], err["message"]


def normalized(err: tuple[int, str, str], refs: Refs) -> tuple[int, str, str]:
    """An answer with every name it echoes replaced by the name's role (``<app>``, ...)."""
    message = err[2]
    values = sorted(
        ((getattr(refs, f.name), f.name) for f in fields(Refs) if getattr(refs, f.name)),
        key=lambda item: -len(item[0]),
    )
    for value, role in values:
        message = message.replace(value, f"<{role}>")
    return err[0], err[1], message


def assert_no_leak(
    world: World, method: str, path: str, rq: Req, resp: httpx.Response, tenant: str = ""
) -> None:
    markers = set(world.secret_markers)
    if path != "/audit":  # B's own audit log lists the paths B itself requested
        sent = f"{rq.text()} {tenant}"
        markers |= {m for m in world.named_markers if m not in sent}
    leaked = sorted(m for m in markers if m in resp.text)
    assert not leaked, f"{method} {rq.path} shows A's data {leaked}: {resp.text[:500]}"


def expectation(route: Route, case: Case, cred: Cred) -> tuple[int | None, str | None]:
    if case.kind == OPERATOR:
        return 403, "operator_only"
    if not cred.may(route.level):
        return 403, None
    return case.status, case.code


def b_creds(env: Env, world: World, kind: str) -> Cred:
    if kind == "session":
        login = env.ok(
            "POST",
            "/auth/login",
            json={"email": world.b.email, "password": PASSWORD},
            ip=env.unique("10.78.0"),
        )
        return Cred("B session", login["token"], 2, True)
    token = env.mint(world.b.session, kind)["token"]
    return Cred(
        f"B {kind} token", token, {"read": 0, "deploy": 1, "admin": 2}[kind], kind == "admin"
    )


# -- the tests ------------------------------------------------------------------------------------


def declared_level(route: APIRoute) -> str:
    """The access level a route's dependencies enforce."""
    calls, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    for dependency, level in (
        (deps.require_operator, "operator"),
        (deps.require_manager, "manage"),
        (deps.require_write, "write"),
        (deps.get_principal, "read"),
    ):
        if dependency in calls:
            return level
    return "public"


def test_the_matrix_covers_every_route(env: Env) -> None:
    served = {
        (method.upper(), path.removeprefix(API))
        for path, operations in env.app.openapi()["paths"].items()
        for method in operations
    }
    missing = sorted(served - set(TABLE))
    stale = sorted(set(TABLE) - served)
    assert not missing, f"routes without a row in the cross-tenant matrix: {missing}"
    assert not stale, f"matrix rows for routes that no longer exist: {stale}"
    for (method, path), route in TABLE.items():
        assert route.level in LEVELS and route.cases, (method, path)
    # The levels in the table are the ones the routes' dependencies enforce.
    checked = set()
    for route in api_routes(env.app.routes):
        for method in route.methods:
            key = (method, route.path.removeprefix(API))
            table_level = TABLE[key].level
            expected = "read" if table_level == "account" else table_level
            assert declared_level(route) == expected, (key, declared_level(route), table_level)
            checked.add(key)
    assert checked == served


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The documented API routes, also inside included routers (however FastAPI nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            if route.include_in_schema:
                yield route
            continue
        inner = getattr(route, "original_router", None) or route
        yield from api_routes(list(getattr(inner, "routes", [])))


@pytest.mark.parametrize("kind", ["session", "admin", "deploy", "read"])
def test_another_tenant_reaches_nothing(env: Env, world: World, kind: str) -> None:
    cred = b_creds(env, world, kind)
    control_refs = replace(NOWHERE, own_app="bee-app")
    for method, path, route, case in all_cases():
        rq = case.make(world.a_refs)
        resp = send(env, method, rq, cred)
        where = f"{cred.label}: {method} {rq.path}"
        status, code = expectation(route, case, cred)
        if status is not None:
            assert resp.status_code == status, (where, resp.text)
        if resp.status_code >= 400:
            err = assert_error(resp, resp.status_code, code)
            if case.kind != OPERATOR and not cred.may(route.level):
                assert err["code"] in ("read_only", "owner_only", "forbidden"), (where, err)
        if case.kind == FOREIGN:
            assert resp.status_code in (401, 403, 404), (where, resp.text)
            control = send(env, method, case.make(control_refs), cred)
            assert normalized(error_of(resp), world.a_refs) == normalized(
                error_of(control), control_refs
            ), (where, resp.text, control.text)
        assert_no_leak(world, method, path, rq, resp)
        if method != "GET":
            assert world.a_state(env) == world.initial_state, f"{where} changed A's state"
    assert env.app_state(world.a.session) == world.initial_apps


def test_lists_show_only_the_callers_own_data(env: Env, world: World) -> None:
    b = world.b.session
    assert [a["name"] for a in env.ok("GET", "/apps", b)] == ["bee-app"]
    assert {t["name"] for t in env.ok("GET", "/teams", b)} == {world.b.tenant}
    assert [m["email"] for m in env.ok("GET", "/members", b)] == [world.b.email]
    assert env.ok("GET", "/billing/transactions", b) == []
    assert env.ok("GET", "/billing/usage", b) == []
    invoice = env.ok("GET", f"/billing/invoices/{PERIOD}", b)
    assert (invoice["tenant"], invoice["total_minor"], invoice["lines"]) == (world.b.tenant, 0, [])
    assert env.ok("GET", "/billing/balance", b)["tenant"] == world.b.tenant
    assert {e["tenant"] for e in env.ok("GET", "/audit", b)} <= {world.b.tenant}
    for delivery in env.ok("GET", "/billing/webhooks", b):
        assert delivery["id"] not in world.secret_markers
    # ... while A sees A's: the lists are not simply empty.
    a = world.a.session
    assert [x["name"] for x in env.ok("GET", "/apps", a)] == ["a-app"]
    assert len(env.ok("GET", "/billing/usage", a)) >= 2
    assert env.ok("GET", "/billing/transactions", a)
    assert env.ok("GET", "/billing/webhooks", a)
    assert any(e["actor"].startswith(world.a.email) for e in env.ok("GET", "/audit", a))


@pytest.mark.parametrize("target", ["team", "personal"])
def test_naming_another_tenant_in_the_header_is_404_everywhere(
    env: Env, world: World, target: str
) -> None:
    tenant = world.team if target == "team" else world.a.tenant
    creds = [b_creds(env, world, "session"), b_creds(env, world, "admin")]
    for method, path, route, case in all_cases():
        if route.level == "public":
            continue
        rq = case.make(world.a_refs)
        for cred in creds:
            resp = send(env, method, rq, cred, tenant=tenant)
            assert_error(resp, 404, "tenant_not_found")
            assert_no_leak(world, method, path, rq, resp, tenant)
    assert world.a_state(env) == world.initial_state


def test_no_credentials_is_401_everywhere(env: Env, world: World) -> None:
    for method, _path, route, case in all_cases():
        if route.level == "public":
            continue
        resp = send(env, method, case.make(world.a_refs), None)
        assert_error(resp, 401, "unauthorized")
    assert world.a_state(env) == world.initial_state


def test_operator_routes_are_403_for_everyone_else(env: Env, world: World) -> None:
    viewer_login = env.ok(
        "POST", "/auth/login", json={"email": world.viewer.email, "password": PASSWORD}
    )
    creds = [
        Cred("A session", world.a.session, 2, True),
        Cred("A admin token", world.a_admin, 2, True),
        Cred("A team viewer", viewer_login["token"], 0, True, world.team),
        Cred("A team developer", world.developer.session, 1, True, world.team),
    ]
    operator_cases = [(m, p, c) for m, p, _r, c in all_cases() if c.kind == OPERATOR]
    assert len(operator_cases) >= 8
    for method, _path, case in operator_cases:
        for cred in creds:
            resp = send(env, method, case.make(world.a_refs), cred)
            assert_error(resp, 403, "operator_only")
    assert_error(env.call("GET", "/audit", world.a.session, params={"all": "true"}), 403)
    assert world.a_state(env) == world.initial_state
    # The operator does get through (the 403 is about who calls, not about the route).
    tenants = {t["name"] for t in env.ok("GET", "/admin/tenants", env.admin)}
    assert {world.a.tenant, world.b.tenant, world.team} <= tenants
    assert env.ok("GET", "/audit", env.admin, params={"all": "true"})


def sweep_read_only(env: Env, world: World, cred: Cred, refs: Refs, ignore_tokens_of: str) -> None:
    """Every route that could change something: refused, or about the caller alone; and every
    stored row of A's is unchanged after each call."""
    for method, path, route, case in all_cases():
        if method == "GET":
            continue
        rq = case.make(refs)
        resp = send(env, method, rq, cred)
        where = f"{cred.label}: {method} {rq.path}"
        if route.level in ("write", "manage", "operator") or case.kind == OPERATOR:
            assert_error(resp, 403, ("read_only", "owner_only", "operator_only"))
        elif route.level == "account" and not cred.account:
            assert_error(resp, 403, "forbidden")
        elif resp.status_code < 300:
            # Only what concerns the caller alone: ending their own session, or (a login
            # session's right) minting a token for themselves, still bound by their role.
            assert (method, path) in (("POST", "/auth/logout"), ("POST", "/tokens")), where
        assert world.a_state(env, ignore_tokens_of) == world.initial_state, f"{where} changed A"


def test_a_viewer_changes_nothing(env: Env, world: World) -> None:
    login = env.ok("POST", "/auth/login", json={"email": world.viewer.email, "password": PASSWORD})
    viewer = Cred("A team viewer", login["token"], 0, True, world.team)
    sweep_read_only(env, world, viewer, world.team_refs, env.user_id(world.viewer.email))
    # The tokens the viewer may mint for themselves are bound by the viewer's role.
    for scope in ("admin", "deploy"):
        minted = env.mint(world.viewer.session, scope, tenant=world.team)["token"]
        resp = env.call("POST", "/apps/t-app/scale", minted, json={"replicas": 5})
        assert_error(resp, 403, "read_only")
        resp = env.call("DELETE", f"/members/{world.a.email}", minted)
        assert_error(resp, 403, "owner_only")
    ignore = env.user_id(world.viewer.email)
    assert world.a_state(env, ignore) == world.initial_state
    world.initial_state = world.a_state(env)  # with the viewer's own tokens, for later tests


def test_a_read_token_changes_nothing(env: Env, world: World) -> None:
    read = Cred("A read token", world.a_read, 0, False)
    sweep_read_only(env, world, read, world.self_refs, "")
    assert env.app_state(world.a.session) == world.initial_apps


def test_a_developer_deploys_but_does_not_manage_people(env: Env, world: World) -> None:
    dev, team = world.developer.session, world.team
    before_members = env.ok("GET", "/members", world.a.session, tenant=team)
    with env.db() as session:
        tid = env.tenant_id(team)
        invitations = sorted(
            (i.id, i.email, i.role, i.accepted_at)
            for i in session.scalars(select(Invitation).where(Invitation.tenant_id == tid))
        )
    attempts: list[tuple[str, str, dict[str, str] | None]] = [
        ("PATCH", f"/members/{world.developer.email}", {"role": "owner"}),
        ("PATCH", f"/members/{world.viewer.email}", {"role": "developer"}),
        ("DELETE", f"/members/{world.a.email}", None),
        ("DELETE", f"/members/{world.viewer.email}", None),
        ("POST", "/invitations", {"email": "mallory@example.com", "role": "owner"}),
    ]
    for method, path, body in attempts:
        assert_error(env.call(method, path, dev, tenant=team, json=body), 403, "owner_only")
    assert env.ok("GET", "/members", world.a.session, tenant=team) == before_members
    with env.db() as session:
        after = sorted(
            (i.id, i.email, i.role, i.accepted_at)
            for i in session.scalars(select(Invitation).where(Invitation.tenant_id == tid))
        )
    assert after == invitations
    # ... and deploys.
    result = env.deploy(dev, "t-app", "registry.example/t-app:v2", tenant=team)
    assert result["release"]["version"] == 2
    assert env.ok("POST", "/apps/t-app/scale", dev, tenant=team, json={"replicas": 2})["scale"] == 2
    world.initial_state = world.a_state(env)  # the developer's deploy, for later tests


def test_another_tenant_cannot_deploy_a_build_by_image_id(env: Env, world: World) -> None:
    """Docker resolves an image id, or any unambiguous prefix of one, to whatever image has it,
    whoever built it. Berth deploys images by name only, so B cannot run A's build."""
    releases = env.ok("GET", "/apps/a-app/releases", world.a.session)
    built = next(r for r in releases if r["image"].startswith("berth-app/a-app:"))
    image_id = built["image_id"]
    digest = image_id.removeprefix("sha256:")
    # Make the fake engine resolve ids and prefixes the way Docker does.
    refs = [image_id, digest, digest[:12], digest[:3], digest[:1], digest[:12].upper()]
    with env.runtime.engine.lock:
        for ref in refs:
            env.runtime.engine.images[ref] = image_id
    before = env.ok("GET", "/apps/bee-app/releases", world.b.session)
    for ref in refs:
        resp = env.call("POST", "/apps/bee-app/releases", world.b.session, json={"image": ref})
        assert_error(resp, 422, "invalid_image")
    assert env.ok("GET", "/apps/bee-app/releases", world.b.session) == before
    # Names still work, for anyone's own images.
    assert env.deploy(world.b.session, "bee-app", "registry.example/bee-app:v2")["release"]
