"""The usage pass through the API and the CLI on the fake provider (held to the real
providers' contract in tests/databases/test_contract.py; the same quota on the real servers:
tests/databases/test_usage_quota.py): a decision the server fails to apply is stored, shown
pending in `db info` with why, retried by the next pass until applied; the tenant is notified
and the webhook event queued once per change."""

from __future__ import annotations

import calendar
import json
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from berth.cli import accounts_cmd
from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig, CliError
from berth.databases.provider import Account as DbAccount
from berth.databases.provider import Usage
from berth.services import billing as bsvc
from berth.services.databases_usage import REFUSED, RESUMED, DatabaseUsagePass, run_pass
from berth.store.tables import DbServer, ManagedDatabase, Tenant, WebhookDelivery
from tests.api.conftest import Env, charges_in_ledger
from tests.api.test_databases_api import FlakyProvider, Servers, cli, fake, url  # noqa: F401

pytestmark = pytest.mark.store
MIB = 1024 * 1024
HOUR = 3600


@pytest.fixture
def pg(env: Env, fake: Servers) -> Iterator[FlakyProvider]:  # noqa: F811
    body = {"name": "pg-usage", "engine": "postgres", "url": url("postgres", "s3cret")}
    env.ok("POST", "/admin/db-servers", env.admin, json=body, status=201)
    yield fake.by_url[body["url"]]


def _db(env: Env, token: str, name: str) -> tuple[str, str]:
    tenant = env.ok("GET", "/billing/balance", token)["tenant"]
    with env.db() as session:
        row = session.scalar(
            select(ManagedDatabase)
            .join(Tenant, Tenant.id == ManagedDatabase.tenant_id)
            .where(Tenant.name == tenant, ManagedDatabase.name == name)
        )
        assert row is not None
        return row.id, row.tenant_id


def test_a_change_the_server_fails_is_pending_and_retried(
    env: Env,
    fake: Servers,  # noqa: F811
    pg: FlakyProvider,
    cli,  # noqa: F811
) -> None:
    user = env.signup("usage")
    env.ok("POST", "/databases", user.session, json={"name": "app", "engine": "postgres",
           "size_mb": 16}, status=201)  # fmt: skip
    database_id, tenant_id = _db(env, user.session, "app")
    (server_db,) = pg.databases.values()
    server_db.bytes_used = 17 * MIB
    pg.failing.add("set_write_allowed")
    hooked = env.settings.model_copy(update={"billing_webhook_url": "http://127.0.0.1:9/h"})

    with env.db() as session:
        result = run_pass(session, hooked, fake, fake.now)
    assert result.refused == [database_id] and [d for d, _ in result.failed] == [database_id]
    info = env.ok("GET", "/databases/app", user.session)
    assert info["writes_refused"] is True and info["quota_pending"] is True
    assert "not applied on the server yet (retried)" in info["usage_error"]
    assert server_db.write_allowed is True  # the server has not got it yet
    shown = cli("db", "info", "app", token=user.session)
    assert shown.exit_code == 0, shown.output
    assert "17.0M / 16M" in shown.output and "not applied on the server yet" in shown.output

    fake.now += 300
    with env.db() as session:
        result = run_pass(session, hooked, fake, fake.now)  # still failing: still pending
    assert result.refused == [] and [d for d, _ in result.failed] == [database_id]
    assert env.ok("GET", "/databases/app", user.session)["quota_pending"] is True
    pg.failing.clear()
    fake.now += 300
    with env.db() as session:
        result = run_pass(session, hooked, fake, fake.now)
    assert result.refused == [] and result.failed == []
    assert server_db.write_allowed is False
    info = env.ok("GET", "/databases/app", user.session)
    assert info["quota_pending"] is False and info["usage_error"] == ""
    assert info["measured_at"] == fake.now and info["bytes_used"] == 17 * MIB

    server_db.bytes_used = 1 * MIB
    fake.now += 300
    with env.db() as session:
        result = run_pass(session, hooked, fake, fake.now)
    assert result.resumed == [database_id] and server_db.write_allowed is True
    kinds = [n["kind"] for n in env.ok("GET", "/billing/notifications", user.session)]
    assert sorted(kinds) == [REFUSED, RESUMED]
    with env.db() as session:
        events = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
        ).all()
        assert sorted(e.event for e in events) == [REFUSED, RESUMED]
        payload = json.loads(next(e for e in events if e.event == REFUSED).payload_json)
        assert payload["database"] == "app" and payload["bytes_used"] == 17 * MIB
        assert payload["limit_bytes"] == 16 * MIB
    env.ok("DELETE", "/databases/app", user.session)


def test_a_server_down_keeps_its_databases_state(
    env: Env,
    fake: Servers,  # noqa: F811
    pg: FlakyProvider,
) -> None:
    user = env.signup("usage")
    env.ok("POST", "/databases", user.session, json={"name": "down", "engine": "postgres"},
           status=201)  # fmt: skip
    env.ok("POST", "/admin/databases/usage", env.admin)
    before = env.ok("GET", "/databases/down", user.session)
    pg.available = False
    fake.now += 300
    result = env.ok("POST", "/admin/databases/usage", env.admin)
    assert result["unreachable"] == ["pg-usage: the fake server is down"]
    after = env.ok("GET", "/databases/down", user.session)
    assert after["measured_at"] == before["measured_at"] and not after["writes_refused"]
    assert after["usage_error"].startswith("not measured: the server did not answer")
    with env.db() as session:
        assert session.scalar(select(DbServer).where(DbServer.name == "pg-usage")) is not None
    pg.available = True
    env.ok("DELETE", "/databases/down", user.session)


def test_an_hour_billed_after_its_months_invoice_goes_on_the_next(
    env: Env,
    fake: Servers,  # noqa: F811
    pg: FlakyProvider,
) -> None:
    user = env.signup("usage")
    env.assign(user.tenant, env.plan(storage_price_per_gib_month="50000"))
    env.ok("POST", "/databases", user.session, json={"name": "late", "engine": "postgres"},
           status=201)  # fmt: skip
    database_id, tenant_id = _db(env, user.session, "late")
    for server_db in pg.databases.values():
        server_db.bytes_used = 100 * MIB
    february = calendar.timegm((2027, 2, 1, 0, 0, 0))
    fake.now = february - 2 * HOUR + 60
    env.ok("POST", "/admin/databases/usage", env.admin)  # measures 22:00-23:00
    fake.now = february - HOUR + 60
    env.ok("POST", "/admin/databases/usage", env.admin)  # bills 22:00, measures 23:00
    with env.db() as session:  # the billing loop closes January first
        issued = bsvc.issue_invoice(session, tenant_id, "2027-01")
        assert issued is not None
        session.commit()
    fake.now = february + 60
    env.ok("POST", "/admin/databases/usage", env.admin)  # bills 23:00, after the invoice
    ledger = {k: a for k, _, a in charges_in_ledger(env, tenant_id) if database_id in k}
    last = f"storage:{tenant_id}:{database_id}:{february - HOUR}"
    before = f"storage:{tenant_id}:{database_id}:{february - 2 * HOUR}"
    assert set(ledger) >= {last, before} and ledger[last] > 0
    january = env.ok("GET", "/billing/invoices/2027-01", user.session)
    assert january["status"] == "issued"
    assert (
        january["total_minor"]
        == issued.total_minor
        == sum(a for k, a in ledger.items() if k != last)
    )
    feb = env.ok("GET", "/billing/invoices/2027-02", user.session)
    storage = [ln for ln in feb["lines"] if ln["kind"] == "storage"]
    assert [ln["amount_minor"] for ln in storage] == [ledger[last]]
    assert storage[0]["gib_hours"] == round(100 / 1024, 6)  # one hour of 100 MiB
    env.ok("DELETE", "/databases/late", user.session)


def test_the_cli_sets_a_plans_storage_price_and_shows_storage(
    env: Env,
    fake: Servers,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=env.admin))
        api.http = TestClient(
            env.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {env.admin}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(accounts_cmd, "client", api_client)
    runner = CliRunner()
    name = env.unique("stored")
    made = runner.invoke(
        cli_main.app,
        ["admin", "plan-create", name, "--storage-price", "0.25"],
        env={"COLUMNS": "250"},
    )
    assert made.exit_code == 0, made.output
    plans = {p["name"]: p for p in env.ok("GET", "/admin/plans", env.admin)}
    assert plans[name]["storage_price_per_gib_month_minor"] == 25
    shown = runner.invoke(cli_main.app, ["admin", "plans"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "STORAGE GIB-MONTH" in shown.output
    bad = runner.invoke(
        cli_main.app, ["admin", "plan-create", env.unique("bad"), "--storage-price", "-1"]
    )
    assert isinstance(bad.exception, CliError) and "invalid amount" in str(bad.exception)


class AnswersThenHangs:
    """A provider that measures ``answers`` databases per pass, then hangs until released (a
    server too slow for all its databases within a pass's time)."""

    def __init__(self, inner: FlakyProvider, answers: int, release: threading.Event) -> None:
        self.inner, self.answers, self.release = inner, answers, release
        self.engine = inner.engine

    def usage(self, account: DbAccount) -> Usage:
        if self.answers == 0:
            self.release.wait(60)
        self.answers -= 1
        return self.inner.usage(account)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_slow_server_has_every_database_measured_over_passes(
    env: Env,
    fake: Servers,  # noqa: F811
    pg: FlakyProvider,
) -> None:
    user = env.signup("usage")
    names = [f"slow{i}" for i in range(5)]
    for name in names:
        env.ok("POST", "/databases", user.session, json={"name": name, "engine": "postgres"},
               status=201)  # fmt: skip
    ids = {_db(env, user.session, name)[0]: name for name in names}
    quick = env.settings.model_copy(update={"database_usage_timeout_seconds": 0.5})
    release = threading.Event()
    seen: list[set[str]] = []
    try:
        for _ in range(3):
            fake.now += 300
            with env.db() as session:
                result = run_pass(
                    session, quick, lambda a: AnswersThenHangs(fake(a), 2, release), fake.now
                )  # fmt: skip
            assert result.unreachable == [("pg-usage", "did not answer within 0.5 s "
                                           "(measured 2 of 5)")]  # fmt: skip
            seen.append(set(result.measured) & set(ids))
    finally:
        release.set()
    assert len(seen[0]) == len(seen[1]) == 2 and not seen[0] & seen[1]
    assert seen[0] | seen[1] | seen[2] == set(ids)  # the longest unmeasured go first
    for name in names:
        env.ok("DELETE", f"/databases/{name}", user.session)


def test_the_leaders_pass_runs_once_and_only_while_it_may(
    env: Env,
    fake: Servers,  # noqa: F811
    pg: FlakyProvider,
) -> None:
    user = env.signup("usage")
    env.ok("POST", "/databases", user.session, json={"name": "led", "engine": "postgres"},
           status=201)  # fmt: skip
    leading = [False]
    loop = DatabaseUsagePass(
        env.platform.sessions, env.settings, fake, clock=lambda: fake.now,
        may_act=lambda: leading[0],
    )  # fmt: skip
    assert loop.run_once().measured == []  # not the leader: nothing
    assert env.ok("GET", "/databases/led", user.session)["measured_at"] is None
    leading[0] = True
    assert len(loop.run_once().measured) == 1
    assert env.ok("GET", "/databases/led", user.session)["measured_at"] == fake.now
    env.ok("DELETE", "/databases/led", user.session)
