"""`berth apps update` with traffic control flags and `berth apps info` over the in-process app
and store: the flags become the API's partial update, the password comes from stdin (never
argv), bad input is a clear CLI error with nothing changed, and no hash is ever printed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner, Result

from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig, CliError
from berth.store.tables import App, Domain
from tests.api.conftest import Account, Env

pytestmark = pytest.mark.store


@pytest.fixture
def tenant(env: Env) -> tuple[Account, str]:
    user = env.signup("trafficcli")
    name = env.unique("trafficcli")
    env.create_app(user.session, name)
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == name))
        assert app is not None
        session.add(
            Domain(app_id=app.id, tenant_id=app.tenant_id, hostname=f"www.{name}.example.test",
                   verified_at=1.0)
        )  # fmt: skip
        session.commit()
    return user, name


@pytest.fixture
def cli(
    env: Env, tenant: tuple[Account, str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    user, _ = tenant

    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=user.session))
        api.http = TestClient(
            env.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {user.session}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(cli_main, "client", api_client)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Result:
        return runner.invoke(cli_main.app, list(args), input=stdin, env={"COLUMNS": "250"})

    return run


def _stored(env: Env, name: str) -> str:
    with env.db() as session:
        value = session.scalar(select(App.traffic_json).where(App.name == name))
        assert value is not None
        return value


def test_flags_set_the_controls_and_info_shows_them(
    env: Env, tenant: tuple[Account, str], cli: Callable[..., Result]
) -> None:
    _, name = tenant
    apex, www = f"{name}.{env.settings.base_domain}", f"www.{name}.example.test"
    result = cli(
        "apps", "update", name,
        "--redirect", f"{www}={apex}:308",
        "--basic-auth", "alice",
        "--maintenance", "on", "--maintenance-message", "Back at 5",
        "--allow", "10.0.0.0/8", "--allow", "127.0.0.1",
        "--deny", "10.9.0.0/16",
        "--rate-limit", "10/s", "--burst", "20",
        stdin="correct horse\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "alice" in result.output and "$2b$" not in result.output
    stored = _stored(env, name)
    assert "$2b$" in stored and "correct horse" not in stored

    info = cli("apps", "info", name)
    assert info.exit_code == 0, info.output
    for shown in (
        f"{www} -> {apex} (308)",
        "alice",
        "on: Back at 5",
        "10.0.0.0/8, 127.0.0.1/32",
        "10.9.0.0/16",
        "10/s per client address, burst 20",
    ):
        assert shown in info.output, info.output
    assert "$2b$" not in info.output and "correct horse" not in info.output

    as_json = json.loads(cli("apps", "info", name, "--json").output)
    assert as_json["traffic"]["basic_auth_users"] == ["alice"]

    # --burst alone keeps the rate; the --no-* flags remove.
    assert cli("apps", "update", name, "--burst", "5").exit_code == 0
    after = json.loads(cli("apps", "info", name, "--json").output)["traffic"]
    assert after["rate_limit"] == {"per_second": 10, "burst": 5}
    removed = cli(
        "apps", "update", name, "--no-redirects", "--no-basic-auth", "--maintenance", "off",
        "--no-allow", "--no-deny", "--no-rate-limit",
    )  # fmt: skip
    assert removed.exit_code == 0, removed.output
    assert _stored(env, name) == '{"maintenance_message":"Back at 5"}'


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--redirect", "A=B", "--redirect", "B=A"), "loop"),
        (("--rate-limit", "0/s"), "1 to 10000"),
        (("--rate-limit", "99999999/s"), "1 to 10000"),
        (("--rate-limit", "ten"), "like 10/s"),
        (("--allow", "10.0.0.0/33"), "CIDR"),
        (("--basic-auth", "eve\nroot"), "basic auth user"),
        (("--maintenance", "maybe"), "on or off"),
        (("--redirect", "nothing"), "FROM=TO"),
        (("--allow", "10.0.0.0/8", "--no-allow"), "not both"),
        (("--burst", "3"), "--rate-limit too"),
    ],
)
def test_bad_flags_are_a_clear_error_and_change_nothing(
    env: Env,
    tenant: tuple[Account, str],
    cli: Callable[..., Result],
    args: tuple[str, ...],
    says: str,
) -> None:
    _, name = tenant
    apex, www = f"{name}.{env.settings.base_domain}", f"www.{name}.example.test"
    before = _stored(env, name)
    real = [a.replace("A=B", f"{apex}={www}").replace("B=A", f"{www}={apex}") for a in args]
    result = cli("apps", "update", name, *real, stdin="pw\n")
    # berth's main() prints a CliError as "Error: ..." with exit status 1, no traceback.
    assert isinstance(result.exception, CliError), result.output
    assert says in str(result.exception)
    assert _stored(env, name) == before
