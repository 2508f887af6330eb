"""When a rotation's old credential goes, through the real API and store with the fake
provider (held to the providers' contract in test_contract.py): not while an attached app
serves the old URL or still runs an instance of a release with it; at once when both are
done; after the grace period whatever the apps do. A rotation while one is pending is a 409
that changes nothing; ``db info`` says pending (and until when) or revoked (and when)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from typer.testing import Result

from berth.api.routes_databases import clock, database_backups, database_providers
from berth.databases.rotation import logins
from berth.services.databases_access import account_of
from berth.services.databases_rotation import revoke_due
from berth.store.tables import App, Instance, ManagedDatabase, new_id
from tests.api.conftest import Env, assert_error, build_env
from tests.api.test_databases_api import FlakyProvider, Servers, add_server, cli, create_db

__all__ = ["cli"]  # the CLI fixture, over this module's env and ``fake``


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    made = build_env(tmp_path_factory.mktemp("berth-rotation-home"))
    try:
        yield made
    finally:
        for client in made._clients.values():
            client.close()
        made.engine.dispose()


@pytest.fixture
def servers(env: Env) -> Iterator[Servers]:
    found = Servers()
    env.app.dependency_overrides[database_providers] = lambda: found
    env.app.dependency_overrides[database_backups] = lambda: found
    env.app.dependency_overrides[clock] = lambda: lambda: found.now
    try:
        yield found
    finally:
        for dep in (database_providers, database_backups, clock):
            env.app.dependency_overrides.pop(dep, None)


@pytest.fixture
def fake(servers: Servers) -> Servers:
    return servers


def _serve(env: Env, app_name: str, *, release_id: str | None = None) -> str:
    """The app serves its target release now (as the reconciler records a rollout's success);
    returns that release's id."""
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == app_name))
        assert app is not None
        app.serving_release_id = release_id or app.target_release_id
        session.commit()
        assert app.serving_release_id is not None
        return app.serving_release_id


def _instance(env: Env, app_name: str, release_id: str, state: str = "running") -> str:
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == app_name))
        assert app is not None
        row = Instance(
            id=new_id(), app_id=app.id, tenant_id=app.tenant_id, release_id=release_id,
            state=state, healthy=True,
        )  # fmt: skip
        session.add(row)
        session.commit()
        return row.id


def _set_state(env: Env, instance_id: str, state: str) -> None:
    with env.db() as session:
        row = session.get(Instance, instance_id)
        assert row is not None
        row.state = state
        session.commit()


def _pass(env: Env, servers: Servers) -> tuple[list[str], list[str]]:
    with env.db() as session:
        result = revoke_due(session, servers, servers.now)
    assert result.failed == []
    return result.revoked, result.pending


def _logs_in(env: Env, servers: Servers, name: str, creds: dict[str, str]) -> bool:
    with env.db() as session:
        db = session.scalar(select(ManagedDatabase).where(ManagedDatabase.name == name))
        assert db is not None
        account = account_of(db)
    provider: FlakyProvider = next(iter(servers.by_url.values()))
    return provider.logs_in(account, creds["username"], creds["password"])


def test_the_old_credential_goes_once_every_app_serves_the_new_url(
    env: Env, servers: Servers
) -> None:
    add_server(env, f"pg-rot-{new_id()[:6]}")
    user = env.signup(f"rot{new_id()[:6]}")
    app = f"rot-web-{new_id()[:6]}"
    env.create_app(user.session, app)
    env.deploy(user.session, app)
    create_db(env, user.session, "main")
    env.ok("POST", "/databases/main/attachments", user.session, json={"app": app}, status=201)
    old_release = _serve(env, app)
    old_instance = _instance(env, app, old_release)
    first = env.ok("GET", "/databases/main/credentials", user.session)
    info = env.ok("GET", "/databases/main", user.session)
    assert info["old_credential"] == "" and info["rotated_at"] is None

    rotated = env.ok("POST", "/databases/main/rotate", user.session)
    assert rotated["database"]["old_credential"] == "pending_revocation"
    grace = env.settings.database_rotation_grace_seconds
    assert rotated["database"]["old_credential_revoke_by"] == servers.now + grace
    second = env.ok("GET", "/databases/main/credentials", user.session)
    with env.db() as session:
        db = session.scalar(select(ManagedDatabase).where(ManagedDatabase.name == "main"))
        assert db is not None
        names = account_of(db).names
    # The first rotation moves the account from its first login to the pair's first.
    assert first["username"] == logins(names)[0] and second["username"] == logins(names)[1]
    assert _logs_in(env, servers, "main", first) and _logs_in(env, servers, "main", second)

    # The app still serves the release with the old URL: nothing goes.
    revoked, pending = _pass(env, servers)
    assert revoked == [] and len(pending) == 1
    again = env.call("POST", "/databases/main/rotate", user.session)
    assert_error(again, 409, "rotation_pending")
    assert env.ok("GET", "/databases/main/credentials", user.session) == second

    # The new release serves, but an instance of the old one is still alive (stopping).
    _serve(env, app)
    assert _pass(env, servers)[0] == []
    assert _logs_in(env, servers, "main", first)
    _set_state(env, old_instance, "exited")
    revoked, _ = _pass(env, servers)
    assert len(revoked) == 1
    assert not _logs_in(env, servers, "main", first) and _logs_in(env, servers, "main", second)
    info = env.ok("GET", "/databases/main", user.session)
    assert info["old_credential"] == "revoked"
    assert info["old_credential_revoked_at"] == servers.now
    assert info["old_credential_revoke_by"] is None

    # The next rotation takes the other login of the pair; a deploy that never serves it keeps
    # the old credential only until the grace period ends.
    rotated = env.ok("POST", "/databases/main/rotate", user.session)
    third = env.ok("GET", "/databases/main/credentials", user.session)
    assert third["username"] == logins(names)[2]
    _serve(env, app, release_id=old_release)  # a failed rollout: the old URL stays served
    servers.now += grace - 1
    assert _pass(env, servers)[0] == [] and _logs_in(env, servers, "main", second)
    servers.now += 1
    assert len(_pass(env, servers)[0]) == 1
    assert not _logs_in(env, servers, "main", second) and _logs_in(env, servers, "main", third)
    servers.now = time.time()


def test_without_attached_apps_the_old_credential_goes_at_the_next_pass(
    env: Env, servers: Servers
) -> None:
    add_server(env, f"rd-rot-{new_id()[:6]}", "redis")
    user = env.signup(f"rot{new_id()[:6]}")
    create_db(env, user.session, "kv", "redis")
    first = env.ok("GET", "/databases/kv/credentials", user.session)
    env.ok("POST", "/databases/kv/rotate", user.session)
    second = env.ok("GET", "/databases/kv/credentials", user.session)
    # Redis keeps its one user and takes a second password.
    assert second["username"] == first["username"] and second["password"] != first["password"]
    assert _logs_in(env, servers, "kv", first) and _logs_in(env, servers, "kv", second)
    revoked, _ = _pass(env, servers)
    assert len(revoked) == 1
    assert not _logs_in(env, servers, "kv", first) and _logs_in(env, servers, "kv", second)


def test_a_deleted_database_has_nothing_pending(env: Env, servers: Servers) -> None:
    add_server(env, f"pg-del-{new_id()[:6]}")
    user = env.signup(f"rot{new_id()[:6]}")
    create_db(env, user.session, "gone")
    first = env.ok("GET", "/databases/gone/credentials", user.session)
    env.ok("POST", "/databases/gone/rotate", user.session)
    second = env.ok("GET", "/databases/gone/credentials", user.session)
    assert env.ok("DELETE", "/databases/gone", user.session)["state"] == "deleted"
    # Closing it refused every credential at once; the pass has nothing left to do for it.
    assert not _logs_in(env, servers, "gone", first)
    assert not _logs_in(env, servers, "gone", second)
    assert _pass(env, servers) == ([], [])


def test_db_info_in_the_cli_says_pending_then_revoked(
    env: Env, servers: Servers, cli: Callable[..., Result]
) -> None:
    add_server(env, f"pg-cli-{new_id()[:6]}")
    user = env.signup(f"rot{new_id()[:6]}")
    app = f"rot-cli-{new_id()[:6]}"
    env.create_app(user.session, app)
    env.deploy(user.session, app)
    create_db(env, user.session, "clidb")
    env.ok("POST", "/databases/clidb/attachments", user.session, json={"app": app}, status=201)
    old_release = _serve(env, app)
    before = cli("db", "info", "clidb", token=user.session)
    assert before.exit_code == 0 and "old credential" not in before.output
    rotated = cli("db", "rotate", "clidb", token=user.session)
    assert rotated.exit_code == 0, rotated.output
    assert "old one keeps working until every attached app serves the new URL" in rotated.output
    pending = cli("db", "info", "clidb", token=user.session)
    assert "pending revocation" in pending.output and "at the latest" in pending.output
    again = cli("db", "rotate", "clidb", token=user.session)
    # A CliError (the CLI's entry point prints it as "error: ..."), not a crash.
    assert again.exit_code != 0 and "still pending" in str(again.exception)
    assert type(again.exception).__name__ == "CliError"
    _serve(env, app)
    assert _serve(env, app) != old_release
    assert len(_pass(env, servers)[0]) == 1
    revoked = cli("db", "info", "clidb", token=user.session)
    assert "revoked at" in revoked.output, revoked.output
