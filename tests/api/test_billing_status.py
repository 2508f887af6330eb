"""``GET /admin/billing/status`` and ``berth admin billing status``: where metering stands, up
to when every node's reports are in, and which node holds that back."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from berth.billing.watermark import Holder, Watermark
from berth.cli import billing_admin_cmd
from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig
from berth.controllers.metering import record_watermark
from tests.api.conftest import Env, assert_error

pytestmark = pytest.mark.store

HOUR = 3600


@pytest.fixture
def cli(env: Env, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`berth ...` with its API client talking to the in-process app as the operator."""

    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=env.admin))
        api.http = TestClient(
            env.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {env.admin}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(billing_admin_cmd, "client", api_client)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli_main.app, list(args), env={"COLUMNS": "250"})


def test_status_before_any_pass_says_nothing_is_billed_yet(
    env: Env, cli: Callable[..., Result]
) -> None:
    status = env.ok("GET", "/admin/billing/status", env.admin)
    assert status["reported_through"] is None and status["closable_until"] is None
    assert status["held_by"] == [] and status["not_waited_for"] == []
    shown = cli("admin", "billing", "status")
    assert shown.exit_code == 0, shown.output
    assert "no reconciler pass yet" in shown.output


def test_only_operators_see_it(env: Env) -> None:
    tenant = env.signup("status-peeker")
    assert_error(env.call("GET", "/admin/billing/status", tenant.session), 403)


def test_status_names_the_node_that_holds_billing_back(
    env: Env, cli: Callable[..., Result]
) -> None:
    now = time.time()
    since = now - 2 * HOUR
    held = Watermark(
        observed_at=now,
        reported_through=since - 7.6,
        held_by=(Holder("w1", "unknown", since),),
        not_waited_for=(Holder("w9", "disconnected", now - 5 * HOUR),),
    )
    with env.db() as session:
        record_watermark(session, held)
        session.commit()
    status = env.ok("GET", "/admin/billing/status", env.admin)
    assert status["reported_through"] == since - 7.6
    assert status["closable_until"] == math.floor((since - 7.6) / HOUR) * HOUR
    assert status["hours_waiting"] in (2, 3)  # depending on where in the hour "now" is
    assert status["held_by"] == [{"node": "w1", "state": "unknown", "since": since}]
    assert [h["node"] for h in status["not_waited_for"]] == ["w9"]
    shown = cli("admin", "billing", "status")
    assert shown.exit_code == 0, shown.output
    assert "w1" in shown.output and "waited for" in shown.output
    assert "w9" in shown.output and "not waited for" in shown.output
    as_json = cli("admin", "billing", "status", "--json")
    assert json.loads(as_json.output) == status
