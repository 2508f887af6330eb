"""Traffic controls through the API and the store: PATCH /apps/{name} {"traffic": ...} sets
them, GET shows them (user names, never a password or its hash), bad input is a 422 with a
precise code that changes nothing, and another tenant's app answers like a missing one.

The end-to-end test routes from the store (the snapshot, the planner, the renderer) into the
real nginx, so "nothing changes" is seen where it matters: the previous controls keep serving.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from berth.controllers.ingress_sync import routed_apps
from berth.controllers.snapshot import load_apps
from berth.domain.routing import plan_routes
from berth.proxy.nginx import NginxManager
from berth.store.tables import App, Domain
from berth.workloads.protocol import WorkloadInstance
from tests.api.conftest import Account, Env, assert_error
from tests.integration.test_nginx_real import NGINX, free_port

pytestmark = pytest.mark.store


def _app(env: Env, prefix: str) -> tuple[Account, str]:
    user = env.signup(prefix)
    name = env.unique(prefix)
    env.create_app(user.session, name)
    return user, name


def _patch(env: Env, user: Account, name: str, traffic: dict[str, Any]) -> httpx.Response:
    return env.call("PATCH", f"/apps/{name}", user.session, json={"traffic": traffic})


def _stored(env: Env, name: str) -> str:
    with env.db() as session:
        value = session.scalar(select(App.traffic_json).where(App.name == name))
        assert value is not None
        return value


def _add_domain(env: Env, name: str, hostname: str, verified: bool = True) -> None:
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == name))
        assert app is not None
        session.add(
            Domain(
                app_id=app.id,
                tenant_id=app.tenant_id,
                hostname=hostname,
                verified_at=1.0 if verified else None,
            )
        )
        session.commit()


def test_every_control_is_set_shown_and_kept_apart(env: Env) -> None:
    user, name = _app(env, "traffic")
    apex = f"{name}.{env.settings.base_domain}"
    www = f"www.{name}.example.test"
    _add_domain(env, name, www)
    result = _patch(
        env,
        user,
        name,
        {
            "redirects": [{"source": www, "target": apex, "code": 308}],
            "basic_auth": [{"user": "alice", "password": "correct horse"}],
            "maintenance": False,
            "maintenance_message": "Back soon",
            "allow": ["10.0.0.0/8", "2001:DB8::/32"],
            "deny": ["10.9.0.0/16"],
            "rate_limit": {"per_second": 10, "burst": 20},
        },
    )
    assert result.status_code == 200, result.text
    assert result.json()["deployment"] is None  # no rollout: the ingress changes, not the app
    shown = env.ok("GET", f"/apps/{name}", user.session)["traffic"]
    assert shown == {
        "redirects": [{"source": www, "target": apex, "code": 308}],
        "basic_auth_users": ["alice"],
        "maintenance": False,
        "maintenance_message": "Back soon",
        "allow": ["10.0.0.0/8", "2001:db8::/32"],
        "deny": ["10.9.0.0/16"],
        "rate_limit": {"per_second": 10, "burst": 20},
        "https_redirect": True,
    }
    # Neither the password nor its hash leaves the store.
    stored = _stored(env, name)
    assert "$2b$" in stored and "correct horse" not in stored
    for text in (result.text, env.call("GET", f"/apps/{name}", user.session).text):
        assert "$2b$" not in text and "correct horse" not in text
    listed = {a["name"]: a for a in env.ok("GET", "/apps", user.session)}
    assert listed[name]["traffic"]["basic_auth_users"] == ["alice"]

    # Only the parts given change; null removes the rate limit.
    env.ok("PATCH", f"/apps/{name}", user.session, json={"traffic": {"maintenance": True}})
    after = env.ok("GET", f"/apps/{name}", user.session)["traffic"]
    assert after == {**shown, "maintenance": True}
    env.ok("PATCH", f"/apps/{name}", user.session, json={"traffic": {"rate_limit": None}})
    assert env.ok("GET", f"/apps/{name}", user.session)["traffic"]["rate_limit"] is None
    env.ok(
        "PATCH",
        f"/apps/{name}",
        user.session,
        json={"traffic": {"redirects": [], "basic_auth": [], "allow": [], "deny": []}},
    )
    cleared = env.ok("GET", f"/apps/{name}", user.session)["traffic"]
    assert cleared["redirects"] == [] and cleared["basic_auth_users"] == []
    assert cleared["allow"] == [] and cleared["deny"] == []


LOOP = [{"source": "A", "target": "B"}, {"source": "B", "target": "A"}]
AWAY = [{"source": "A", "target": "elsewhere.example.test"}]
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("loop", {"redirects": LOOP}, "redirect_loop"),
    ("self", {"redirects": [{"source": "A", "target": "A"}]}, "redirect_loop"),
    ("foreign", {"redirects": AWAY}, "invalid_redirect"),
    ("rate 0", {"rate_limit": {"per_second": 0, "burst": 0}}, "invalid_rate_limit"),
    ("rate absurd", {"rate_limit": {"per_second": 10**12}}, "invalid_rate_limit"),
    ("burst absurd", {"rate_limit": {"per_second": 5, "burst": 10**6}}, "invalid_rate_limit"),
    ("cidr", {"allow": ["10.0.0.0/33"]}, "invalid_cidr"),
    ("cidr words", {"deny": ["10.0.0.0/8; allow all"]}, "invalid_cidr"),
    (
        "user newline",
        {"basic_auth": [{"user": "eve\nroot", "password": "x"}]},
        "invalid_basic_auth",
    ),
    ("password newline", {"basic_auth": [{"user": "e", "password": "a\nb"}]}, "invalid_basic_auth"),
    ("message newline", {"maintenance_message": "a\nb"}, "invalid_maintenance"),
]


def _hosts(value: Any, a: str, b: str) -> Any:
    """``value`` with "A" and "B" standing for the app's own hostnames."""
    if isinstance(value, dict):
        return {k: _hosts(v, a, b) for k, v in value.items()}
    if isinstance(value, list):
        return [_hosts(v, a, b) for v in value]
    return {"A": a, "B": b}.get(value, value) if isinstance(value, str) else value


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    # Traversable by nginx's workers (they read the users file per request), as /var/lib is.
    parent = Path(tempfile.mkdtemp(prefix="berth-traffic-api-"))
    parent.chmod(0o711)
    try:
        yield parent / "nginx"
    finally:
        NginxManager(parent / "nginx", nginx_binary=NGINX, listen_host="127.0.0.1").stop()
        shutil.rmtree(parent, ignore_errors=True)


class _Backend:
    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "8")
                self.end_headers()
                self.wfile.write(b"from-app")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def backend() -> Iterator[_Backend]:
    made = _Backend()
    yield made
    made.server.shutdown()
    made.server.server_close()


def _route_from_store(env: Env, nginx: NginxManager, name: str, port: int, generation: int) -> bool:
    """What the reconciler does for ``name``: snapshot, planner, renderer, nginx."""
    with env.db() as session:
        views = [a for a in load_apps(session) if a.name == name]
    (app,) = routed_apps(views, env.settings.base_domain)
    (revision,) = app.revisions
    instance = WorkloadInstance(
        id="c-" + name, group=f"{app.app_id}/web/{revision}", tenant_id=app.tenant_id,
        app_id=app.app_id, revision=revision, state="running", address="127.0.0.1", port=port,
    )  # fmt: skip
    routes, _ = plan_routes([app], [instance], lambda _: True)
    changed = nginx.apply(nginx.config(routes, generation))
    assert nginx.wait_for_generation(generation, timeout=5)
    return changed


@pytest.mark.nginx
def test_bad_input_is_refused_and_the_previous_controls_keep_serving(
    env: Env, nginx_dir: Path, backend: _Backend
) -> None:
    user, name = _app(env, "guarded")
    env.deploy(user.session, name)
    apex = f"{name}.{env.settings.base_domain}"
    www = f"www.{name}.example.test"
    _add_domain(env, name, www)
    good = {
        "redirects": [{"source": www, "target": apex}],
        "basic_auth": [{"user": "alice", "password": "pw"}],
        "allow": ["127.0.0.1/32"],
        "rate_limit": {"per_second": 1000, "burst": 100},
    }
    assert _patch(env, user, name, good).status_code == 200
    before = _stored(env, name)
    shown = env.ok("GET", f"/apps/{name}", user.session)["traffic"]

    port = free_port()
    nginx = NginxManager(nginx_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    assert _route_from_store(env, nginx, name, backend.port, 1)
    live = nginx.conf_path.read_text()

    with httpx.Client(timeout=5.0, trust_env=False) as client:

        def status(host: str, **kwargs: Any) -> int:
            url = f"http://127.0.0.1:{port}/"
            code: int = client.get(url, headers={"Host": host}, **kwargs).status_code
            return code

        def serves_the_good_controls() -> None:
            assert status(apex) == 401
            assert status(apex, auth=("alice", "pw")) == 200
            assert status(www) == 301

        serves_the_good_controls()
        for label, part, code in BAD:
            body = _hosts(part, apex, www)
            assert_error(_patch(env, user, name, body), 422, code), label
            # Together with a good part: still nothing changes.
            assert_error(_patch(env, user, name, {**body, "maintenance": True}), 422, code)
            assert _stored(env, name) == before, label
            assert env.ok("GET", f"/apps/{name}", user.session)["traffic"] == shown
            assert _route_from_store(env, nginx, name, backend.port, 1) is False
            assert nginx.conf_path.read_text() == live
            serves_the_good_controls()


def test_pydantic_type_errors_are_422_and_change_nothing(env: Env) -> None:
    user, name = _app(env, "typed")
    before = _stored(env, name)
    for body in (
        {"rate_limit": {"per_second": "ten"}},
        {"redirects": [{"source": "a", "target": "b", "code": 302}]},
        {"allow": "10.0.0.0/8"},
        {"basic_auth": [{"user": "a"}]},
        {"nonsense": True},
    ):
        assert_error(_patch(env, user, name, body), 422)
        assert _stored(env, name) == before


def test_a_redirect_may_name_an_unverified_domain_but_routes_once_verified(env: Env) -> None:
    user, name = _app(env, "pending")
    apex = f"{name}.{env.settings.base_domain}"
    www = f"www.{name}.example.test"
    _add_domain(env, name, www, verified=False)
    env.ok(
        "PATCH",
        f"/apps/{name}",
        user.session,
        json={"traffic": {"redirects": [{"source": www, "target": apex}]}},
    )
    with env.db() as session:
        (view,) = [a for a in load_apps(session) if a.name == name]
    (app,) = routed_apps([view], env.settings.base_domain)
    (route,), _ = plan_routes([app], [], lambda _: True)
    assert route.controls is None  # the domain does not route yet, so neither does its redirect
    with env.db() as session:
        domain = session.scalar(select(Domain).where(Domain.hostname == www))
        assert domain is not None
        domain.verified_at = 2.0
        session.commit()
        (view,) = [a for a in load_apps(session) if a.name == name]
    (app,) = routed_apps([view], env.settings.base_domain)
    (route,), _ = plan_routes([app], [], lambda _: True)
    assert route.controls is not None
    assert [(r.source, r.target) for r in route.controls.redirects] == [(www, apex)]


def test_another_tenants_app_is_404_and_unchanged(env: Env) -> None:
    owner, name = _app(env, "owner")
    env.ok("PATCH", f"/apps/{name}", owner.session, json={"traffic": {"deny": ["10.0.0.0/8"]}})
    before = _stored(env, name)
    other = env.signup("other")
    for body in (
        {"traffic": {"maintenance": True}},
        {"traffic": {"deny": []}},
        {"traffic": {"basic_auth": [{"user": "x", "password": "y"}]}},
        {"traffic": {"rate_limit": {"per_second": 0}}},  # bad as well: still 404, not 422
    ):
        resp = env.call("PATCH", f"/apps/{name}", other.session, json=body)
        assert_error(resp, 404, "app_not_found")
        assert_error(env.call("PATCH", "/apps/no-such-app", other.session, json=body), 404)
    assert _stored(env, name) == before
    viewer_token = env.mint(owner.session, "read")["token"]
    resp = env.call("PATCH", f"/apps/{name}", viewer_token, json={"traffic": {"deny": []}})
    assert_error(resp, 403)
    assert _stored(env, name) == before
