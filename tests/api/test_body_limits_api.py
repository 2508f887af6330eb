"""Request body limits per plan through the API and the CLI: the operator sets a plan's
``max_request_body_mb`` (shown where plans are shown), bad values are a 422 with nothing
created, and the limit reaches the routes planned from the store (a server's own and the
ingress nodes' config) for the tenant's apps: the plan's own, else the setting; a change of
plan changes the config."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from berth.cli import accounts_cmd
from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig, CliError
from berth.controllers.ingress_sync import plan_from_rows
from berth.controllers.snapshot import load_apps
from berth.proxy.model import Route
from berth.services import ingress_nodes
from berth.store.tables import PlanRow
from tests.api.conftest import Env, assert_error

pytestmark = pytest.mark.store

BAD_LIMITS: tuple[Any, ...] = (0, -1, 10241, 10**12, "5", "lots", 5.5, True, [5], {"mb": 5})


def plan_count(env: Env) -> int:
    with env.db() as session:
        return int(session.scalar(select(func.count(PlanRow.id))) or 0)


def stored_routes(env: Env) -> dict[str, Route]:
    """The routes a follower would plan from the store now, by app name."""
    with env.db() as session:
        apps = load_apps(session)
    routes = plan_from_rows(apps, [], env.settings.base_domain, env.settings.request_body_max_mb)
    return {r.app_name: r for r in routes}


def test_a_plan_takes_a_limit_and_shows_it(env: Env) -> None:
    name = env.unique("uploads")
    made = env.ok(
        "POST", "/admin/plans", env.admin, json={"name": name, "max_request_body_mb": 2}, status=201
    )
    assert made["max_request_body_mb"] == 2
    default = env.ok("POST", "/admin/plans", env.admin, json={"name": env.unique("d")}, status=201)
    assert default["max_request_body_mb"] is None  # the setting applies
    listed = {p["name"]: p for p in env.ok("GET", "/admin/plans", env.admin)}
    assert listed[name]["max_request_body_mb"] == 2
    top = env.ok(
        "POST",
        "/admin/plans",
        env.admin,
        json={"name": env.unique("top"), "max_request_body_mb": 10240},
        status=201,
    )
    assert top["max_request_body_mb"] == 10240


@pytest.mark.parametrize("bad", BAD_LIMITS)
def test_a_bad_limit_is_a_422_and_creates_nothing(env: Env, bad: Any) -> None:
    before = plan_count(env)
    name = env.unique("bad-body")
    resp = env.call(
        "POST", "/admin/plans", env.admin, json={"name": name, "max_request_body_mb": bad}
    )
    err = assert_error(resp, 422)
    assert "max_request_body_mb" in err["message"], err
    assert plan_count(env) == before
    assert name not in {p["name"] for p in env.ok("GET", "/admin/plans", env.admin)}


def test_a_tenants_apps_route_with_its_plans_limit_else_the_setting(env: Env) -> None:
    small = env.plan(max_request_body_mb=1)
    big = env.plan(max_request_body_mb=300)
    unset = env.plan()
    owner, other = env.signup("small"), env.signup("other")
    env.assign(owner.tenant, small)
    env.assign(other.tenant, big)
    mine, theirs = env.unique("up"), env.unique("up")
    env.create_app(owner.session, mine)
    env.create_app(other.session, theirs)

    routes = stored_routes(env)
    assert routes[mine].max_body_mb == 1
    assert routes[theirs].max_body_mb == 300  # another plan keeps its own

    env.assign(owner.tenant, unset)
    assert stored_routes(env)[mine].max_body_mb == env.settings.request_body_max_mb == 64
    with env.settings_override(request_body_max_mb=5) as changed:
        with env.db() as session:
            apps = load_apps(session)
        (route,) = [
            r
            for r in plan_from_rows(apps, [], changed.base_domain, changed.request_body_max_mb)
            if r.app_name == mine
        ]
        assert route.max_body_mb == 5
    env.assign(owner.tenant, big)
    assert stored_routes(env)[mine].max_body_mb == 300


def test_the_ingress_nodes_config_follows_a_change_of_plan(env: Env) -> None:
    small, big = env.plan(max_request_body_mb=1), env.plan(max_request_body_mb=7)
    owner = env.signup("nodes")
    env.assign(owner.tenant, small)
    name = env.unique("edge")
    env.create_app(owner.session, name)

    def config() -> ingress_nodes.NodeConfig:
        with env.db() as session:
            made = ingress_nodes.current_config(
                session, env.settings.base_domain, 80, env.settings.request_body_max_mb
            )
            session.commit()
        return made

    first = config()
    block = first.text[first.text.index(f"server_name {name}.") :]
    assert "client_max_body_size 1m;" in block[: block.index("\n    }\n")]
    env.assign(owner.tenant, big)
    second = config()
    assert second.generation > first.generation and second.etag != first.etag
    block = second.text[second.text.index(f"server_name {name}.") :]
    assert "client_max_body_size 7m;" in block[: block.index("\n    }\n")]


def test_the_cli_sets_and_shows_a_plans_limit(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
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
    name = env.unique("cli-body")
    made = runner.invoke(
        cli_main.app,
        ["admin", "plan-create", name, "--max-request-body-mb", "16"],
        env={"COLUMNS": "250"},
    )
    assert made.exit_code == 0, made.output
    plans = {p["name"]: p for p in env.ok("GET", "/admin/plans", env.admin)}
    assert plans[name]["max_request_body_mb"] == 16
    shown = runner.invoke(cli_main.app, ["admin", "plans"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "BODY" in shown.output
    (line,) = [ln for ln in shown.output.splitlines() if name in ln]
    assert "16" in line

    before = plan_count(env)
    zero = runner.invoke(
        cli_main.app, ["admin", "plan-create", env.unique("bad"), "--max-request-body-mb", "0"]
    )
    assert isinstance(zero.exception, CliError)
    assert "max_request_body_mb" in str(zero.exception)
    word = runner.invoke(
        cli_main.app,
        ["admin", "plan-create", env.unique("bad"), "--max-request-body-mb", "lots"],
        env={"COLUMNS": "250"},
    )
    assert word.exit_code == 2 and "Invalid value for '--max-request-body-mb'" in word.output
    assert plan_count(env) == before
