"""Deleting an app answers at once; the reconcile loop stops its instances, then its rows go.

The API runs in-process over the real store (SQLite, or PostgreSQL under the store marker);
the reconcile loop is the real ``Reconciler``, driven pass by pass over the same store and the
fake runtime, with a fake nginx and health checker (the end-to-end test has the real ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from berth.controllers.reconciler import Reconciler
from tests.api.conftest import Account, Env, assert_error
from tests.fakes import FakeHealth, FakeNginx, local_reconciler

pytestmark = pytest.mark.store


@dataclass
class Loop:
    reconciler: Reconciler
    nginx: FakeNginx

    def settle(self, passes: int = 4) -> None:
        for _ in range(passes):
            self.reconciler.run_once()
            # Let the background removals finish before the next pass, as time would.
            self.reconciler.workloads.wait_for_removals()  # type: ignore[attr-defined]


@pytest.fixture
def loop(env: Env) -> Iterator[Loop]:
    nginx = FakeNginx()
    reconciler = local_reconciler(
        env.settings, env.platform.sessions, env.runtime, nginx, FakeHealth(env.runtime)
    )
    try:
        yield Loop(reconciler, nginx)
    finally:
        reconciler.stop()


def signup(env: Env, prefix: str) -> Account:
    """A new user from an address of its own (sign-ups are limited per address)."""
    n = int(env.unique("ip").rsplit("-", 1)[1])
    return env.signup(prefix, ip=f"10.201.{n // 250}.{n % 250 + 1}")


def running(env: Env, app: str) -> list[str]:
    return [c.id for c in env.runtime.list({"berth.app-name": app}) if c.state == "running"]


def app_with_instances(env: Env, loop: Loop, token: str, scale: int = 1) -> str:
    name = env.unique("del")
    env.create_app(token, name)
    env.ok("POST", f"/apps/{name}/scale", token, json={"replicas": scale})
    env.deploy(token, name)
    loop.settle(passes=2)
    assert len(running(env, name)) == scale
    return name


def test_an_app_without_instances_goes_at_once_and_frees_its_name(env: Env) -> None:
    user = signup(env, "bare")
    app = env.unique("bare")
    env.create_app(user.session, app)
    env.ok("DELETE", f"/apps/{app}", user.session, status=204)
    assert_error(env.call("GET", f"/apps/{app}", user.session), 404, "app_not_found")
    env.create_app(user.session, app)


def test_delete_answers_202_and_the_loop_finishes_it(env: Env, loop: Loop) -> None:
    user = signup(env, "gone")
    other = signup(env, "other")
    app = app_with_instances(env, loop, user.session, scale=2)
    domain = f"{app}.example.com"
    env.ok("POST", f"/apps/{app}/domains", user.session, json={"hostname": domain}, status=201)
    loop.settle(passes=1)
    assert app in loop.nginx.routed_apps()

    answer = env.ok("DELETE", f"/apps/{app}", user.session, status=202)
    assert answer == {"deleted": app, "state": "deleting", "instances_stopping": 2}
    assert env.ok("GET", f"/apps/{app}", user.session)["state"] == "deleting"
    listed = {a["name"]: a["state"] for a in env.ok("GET", "/apps", user.session)}
    assert listed[app] == "deleting"
    # While it is deleting: every write is a 409, a second delete says the same again, the
    # name stays taken, and other tenants still cannot see it.
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"/apps/{app}/scale", {"replicas": 3}),
        ("PATCH", f"/apps/{app}/config", {"set": {"LATE": "1"}}),
        ("POST", f"/apps/{app}/releases", {"image": f"registry.example/{app}:v1"}),
        ("POST", f"/apps/{app}/rollback", {"version": 1}),
        ("POST", f"/apps/{app}/restart", None),
        ("POST", f"/apps/{app}/domains", {"hostname": f"late.{app}.example.com"}),
        ("DELETE", f"/apps/{app}/domains/{domain}", None),
    ]
    for method, path, body in writes:
        err = assert_error(env.call(method, path, user.session, json=body), 409, "app_deleting")
        assert "being deleted" in err["message"]
    again = env.ok("DELETE", f"/apps/{app}", user.session, status=202)
    assert again["state"] == "deleting"
    assert_error(env.call("POST", "/apps", other.session, json={"name": app}), 409, "app_exists")
    assert_error(env.call("GET", f"/apps/{app}", other.session), 404, "app_not_found")

    loop.settle()
    assert running(env, app) == [] and env.runtime.list({"berth.app-name": app}) == []
    assert app not in loop.nginx.routed_apps()
    assert_error(env.call("GET", f"/apps/{app}", user.session), 404, "app_not_found")
    # The name and the domain are free again, for anyone.
    env.create_app(other.session, app)
    env.ok("POST", f"/apps/{app}/domains", other.session, json={"hostname": domain}, status=201)


def test_deletes_beyond_the_tenant_cap_are_429(env: Env, loop: Loop) -> None:
    user = signup(env, "cap")
    apps = [app_with_instances(env, loop, user.session) for _ in range(3)]
    with env.settings_override(max_concurrent_deletes_per_tenant=2):
        for app in apps[:2]:
            env.ok("DELETE", f"/apps/{app}", user.session, status=202)
        err = assert_error(
            env.call("DELETE", f"/apps/{apps[2]}", user.session), 429, "too_many_deletes"
        )
        assert "at most 2" in err["message"]
        assert env.ok("GET", f"/apps/{apps[2]}", user.session)["state"] == "active"
        assert len(running(env, apps[2])) == 1
        # Another tenant's deletes are not counted against this one.
        neighbour = signup(env, "neighbour")
        theirs = app_with_instances(env, loop, neighbour.session)
        env.ok("DELETE", f"/apps/{theirs}", neighbour.session, status=202)
        # Once the first two are gone there is room again.
        loop.settle()
        env.ok("DELETE", f"/apps/{apps[2]}", user.session, status=202)
        loop.settle()
    for app in apps:
        assert_error(env.call("GET", f"/apps/{app}", user.session), 404, "app_not_found")
        assert env.runtime.list({"berth.app-name": app}) == []
