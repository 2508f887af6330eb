"""Bad input to the app API is refused with a 4xx in the one error shape, and changes nothing:
names, domains, resources, scale, config, images, versions, unknown apps on every app route.
No request here, however malformed, gets a 5xx (every call asserts it), and every change that
is made is in the audit log with who made it and from where."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.api.conftest import Account, Env, assert_error
from tests.api.test_cross_tenant_matrix import NOWHERE, TABLE
from tests.bad_inputs import BAD_DOMAINS, BAD_NAMES

pytestmark = pytest.mark.store

KEEP = "keep"  # deployed, with config and a custom domain: must never change below
OTHER = "other"  # another app of the same user, owning OTHER_DOMAIN
KEEP_DOMAIN = "keep.example.com"
OTHER_DOMAIN = "taken.example.com"
MAX_SCALE = 5


@pytest.fixture(scope="module")
def user(env: Env) -> Account:
    env.platform.settings = env.platform.settings.model_copy(update={"max_scale": MAX_SCALE})
    owner = env.signup("careful")
    env.create_app(owner.session, KEEP)
    env.deploy(owner.session, KEEP, "registry.example/keep:v1")
    env.ok("PATCH", f"/apps/{KEEP}/config", owner.session, json={"set": {"GREETING": "hi"}})
    env.ok("POST", f"/apps/{KEEP}/domains", owner.session, json={"hostname": KEEP_DOMAIN})
    env.create_app(owner.session, OTHER)
    env.ok("POST", f"/apps/{OTHER}/domains", owner.session, json={"hostname": OTHER_DOMAIN})
    # Verified: only a verified domain keeps others from claiming it.
    for hostname in (KEEP_DOMAIN, OTHER_DOMAIN):
        env.ok("POST", f"/admin/domains/{hostname}/approve", env.admin)
    return owner


@pytest.fixture(scope="module")
def seen(env: Env, user: Account) -> Iterator[dict[str, Any]]:
    """What the user sees of their apps before the bad input, and (checked last) after it all."""
    before = env.app_state(user.session)
    assert set(before) == {KEEP, OTHER}
    assert before[KEEP]["config"] == {"GREETING": "hi"}
    assert before[KEEP]["domains"] == [KEEP_DOMAIN]
    assert len(before[KEEP]["releases"]) == 2
    yield before
    assert env.app_state(user.session) == before


@pytest.fixture
def unchanged(env: Env, user: Account, seen: dict[str, Any]) -> Iterator[None]:
    """The test must leave every stored row of the user's as it was: apps, releases,
    deployments, domains, config, tokens, members (and so everything the API shows)."""
    tenant = env.tenant_id(user.tenant)
    before = env.state([tenant])
    yield
    assert env.state([tenant]) == before


def post(env: Env, user: Account, path: str, body: Any) -> Any:
    return env.call("POST", path, user.session, json=body)


# -- names, domains, resources -------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_app_names(env: Env, user: Account, unchanged: None, name: str) -> None:
    err = assert_error(post(env, user, "/apps", {"name": name}), 422)
    assert err["code"] in ("invalid_name", "invalid")


def test_taken_app_names(env: Env, user: Account, unchanged: None) -> None:
    assert_error(post(env, user, "/apps", {"name": KEEP}), 409, "app_exists")
    stranger = env.signup("stranger")
    assert_error(post(env, stranger, "/apps", {"name": OTHER}), 409, "app_exists")


@pytest.mark.parametrize("domain", BAD_DOMAINS, ids=repr)
def test_invalid_domains(env: Env, user: Account, unchanged: None, domain: str) -> None:
    err = assert_error(post(env, user, f"/apps/{KEEP}/domains", {"hostname": domain}), 422)
    assert err["code"] in ("invalid_domain", "invalid")


def test_taken_and_reserved_domains(env: Env, user: Account, unchanged: None) -> None:
    base = env.settings.base_domain
    for reserved in (base, f"x.{base}", f"{OTHER}.{base}", f"a.b.{base}"):
        resp = post(env, user, f"/apps/{KEEP}/domains", {"hostname": reserved})
        assert_error(resp, 422, "domain_reserved")
    resp = post(env, user, f"/apps/{KEEP}/domains", {"hostname": OTHER_DOMAIN})
    assert_error(resp, 409, "domain_taken")
    resp = post(env, user, f"/apps/{KEEP}/domains", {"hostname": KEEP_DOMAIN})
    assert_error(resp, 409, "domain_taken")
    # Another tenant cannot take them either.
    stranger = env.signup("squatter")
    env.create_app(stranger.session, "squat")
    resp = post(env, stranger, "/apps/squat/domains", {"hostname": KEEP_DOMAIN})
    assert_error(resp, 409, "domain_taken")
    # An app name whose hostname is already someone's custom domain cannot be created.
    resp = post(env, stranger, "/apps", {"name": "keep"})
    assert_error(resp, 409, "app_exists")


@pytest.mark.parametrize(
    "body",
    [
        {"memory": "8M"},
        {"memory": "15M"},
        {"memory": "0"},
        {"memory": "100000M"},
        {"memory": "64G"},
        {"memory": "lots"},
        {"memory": "-5M"},
        {"memory": "1.5G"},
        {"memory": "256 M"},
        {"memory": -5},
        {"memory": 0},
        {"memory": 10**12},
        {"memory": None},
        {"cpus": 0},
        {"cpus": 0.01},
        {"cpus": -1},
        {"cpus": 64},
        {"cpus": "many"},
        {"cpus": None},
        {"port": 0},
        {"port": -1},
        {"port": 70000},
        {"port": "http"},
        {"health_path": "no-slash"},
        {"health_path": "/a b"},
        {"health_path": "/x\n"},
        {"health_path": "/" + "a" * 300},
        {"health_path": 5},
        {"unknown_field": 1},
    ],
    ids=repr,
)
def test_out_of_range_resources(
    env: Env, user: Account, unchanged: None, body: dict[str, Any]
) -> None:
    assert_error(post(env, user, "/apps", {"name": "res", **body}), 422)


@pytest.mark.parametrize("cpus", [math.nan, math.inf, -math.inf])
def test_non_finite_cpus(env: Env, user: Account, unchanged: None, cpus: float) -> None:
    body = json.dumps({"name": "res", "cpus": cpus})  # NaN/Infinity: not JSON, sent anyway
    resp = env.call(
        "POST", "/apps", user.session, content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 422)


@pytest.mark.parametrize("replicas", [-1, -(2**40), MAX_SCALE + 1, 1000, 2**40, 2**70, 1.5, None])
def test_scale_out_of_range(env: Env, user: Account, unchanged: None, replicas: Any) -> None:
    err = assert_error(post(env, user, f"/apps/{KEEP}/scale", {"replicas": replicas}), 422)
    assert err["code"] in ("invalid_scale", "invalid")
    if isinstance(replicas, int) and replicas > MAX_SCALE:
        assert f"between 0 and {MAX_SCALE}" in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"set": {"1A": "x"}},
        {"set": {"A-B": "x"}},
        {"set": {"A B": "x"}},
        {"set": {"": "x"}},
        {"set": {"A;B": "x"}},
        {"set": {"ä": "x"}},
        {"set": {"A" * 129: "x"}},
        {"set": {"PORT": "1"}},
        {"set": {"A": "x\x00y"}},
        {"set": {"A": "x" * (32 * 1024 + 1)}},
        {"set": {"A": 5}},
        {"set": {"A": None}},
        {"set": ["A"]},
        {"set": {f"K{i}": "v" for i in range(201)}},
        {"unset": ["NOPE"]},
        {"unset": ["1A"]},
        {"unset": "GREETING"},
        {"set": {"GOOD": "x"}, "unset": ["NOPE"]},
        {"other": {}},
    ],
    ids=lambda b: repr(b)[:60],
)
def test_bad_config(env: Env, user: Account, unchanged: None, body: dict[str, Any]) -> None:
    resp = env.call("PATCH", f"/apps/{KEEP}/config", user.session, json=body)
    if "NOPE" in body.get("unset", []):
        assert_error(resp, 409, "config_not_set")  # well formed; the key is not set
    else:
        assert_error(resp, 422, ("invalid_config", "invalid"))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image": ""}, 422, "invalid_image"),
        ({"image": "has space:v1"}, 422, "invalid_image"),
        ({"image": "tab\there:v1"}, 422, "invalid_image"),
        ({"image": "x" * 256}, 422, "invalid"),
        ({"image": "registry.example/never-loaded:v1"}, 404, "image_not_found"),
        ({"image": "sha256:" + "a" * 64}, 422, "invalid_image"),
        ({"image": "0123456789ab"}, 422, "invalid_image"),
        ({"image": "f"}, 422, "invalid_image"),
        ({"image": None}, 422, "invalid"),
        ({}, 422, "invalid"),
    ],
    ids=repr,
)
def test_bad_images(
    env: Env, user: Account, unchanged: None, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(post(env, user, f"/apps/{KEEP}/releases", body), status, code)


def test_bad_versions_deployments_and_domains(env: Env, user: Account, unchanged: None) -> None:
    assert_error(post(env, user, f"/apps/{KEEP}/rollback", {"version": 99}), 404)
    for version in (-1, 0, 2**31, 2**63, 2**70, "one", 1.5):
        assert_error(post(env, user, f"/apps/{KEEP}/rollback", {"version": version}), 422)
    # Nothing serves yet (no reconciler runs here): nothing to roll back from.
    assert_error(post(env, user, f"/apps/{KEEP}/rollback", {}), 422, "no_release")
    assert_error(post(env, user, f"/apps/{OTHER}/restart", None), 422, "no_release")
    for dep in ("nope", "0" * 16, "%2e%2e"):
        resp = env.call("GET", f"/apps/{KEEP}/deployments/{dep}", user.session)
        assert_error(resp, 404)
    # (No literal "..": a client resolves it away, and would then name the app itself.)
    for host in ("nope.example.com", OTHER_DOMAIN, "%2e%2e"):
        resp = env.call("DELETE", f"/apps/{KEEP}/domains/{host}", user.session)
        assert_error(resp, 404)
    for params in ({"tail": -1}, {"tail": 10_001}, {"tail": "x"}, {"follow": "maybe"}):
        resp = env.call("GET", f"/apps/{KEEP}/logs", user.session, params=params)
        assert_error(resp, 422, "invalid")


def test_nul_bytes_anywhere_are_refused(env: Env, user: Account, unchanged: None) -> None:
    """PostgreSQL refuses NUL in text: that must be a 4xx (SQLite finds nothing: a 404)."""
    nul = "a%00b"
    for method, path in (
        ("GET", f"/apps/{nul}"),
        ("DELETE", f"/apps/{nul}"),
        ("GET", f"/apps/{KEEP}/deployments/{nul}"),
        ("DELETE", f"/apps/{KEEP}/domains/{nul}"),
        ("DELETE", f"/tokens/{nul}"),
        ("DELETE", f"/members/{nul}"),
        ("GET", f"/billing/invoices/{nul}"),
    ):
        assert_error(env.call(method, path, user.session), (404, 422))
    resp = env.call("POST", f"/admin/tenants/{nul}/credit", env.admin, json={"amount": "1"})
    assert_error(resp, (404, 422))
    resp = env.call("PATCH", f"/members/{nul}", user.session, json={"role": "viewer"})
    assert_error(resp, (404, 422))
    for body in (
        {"email": "a\x00@example.com", "password": "whatever password"},
        {"email": user.email, "password": "pass\x00word!!"},
    ):
        assert_error(env.call("POST", "/auth/login", json=body, ip="10.0.0.1"), (401, 422))
    resp = env.call("POST", "/invitations/accept", user.session, json={"token": "x\x00y"})
    assert_error(resp, (404, 422))
    resp = env.call("POST", f"/apps/{KEEP}/releases", user.session, json={"image": "a\x00b:v1"})
    assert_error(resp, 422)


def test_malformed_bodies(env: Env, user: Account, unchanged: None) -> None:
    json_type = {"Content-Type": "application/json"}
    for raw in (b"{", b"[]", b"null", b"1", b'"x"', b"\xff", b'{"name": "a", "name": 5}'):
        resp = env.call("POST", "/apps", user.session, content=raw, headers=json_type)
        assert_error(resp, (400, 422))
        resp = env.call("POST", f"/apps/{KEEP}/scale", user.session, content=raw, headers=json_type)
        assert_error(resp, (400, 422))
    resp = env.call("POST", "/apps", user.session, content=b"name=x")
    assert_error(resp, 422)


def test_unknown_app_is_404_on_every_app_route(env: Env, user: Account, unchanged: None) -> None:
    """Every app route in the API (from the cross-tenant table, which covers them all)."""
    routes = 0
    for name in ("nope", "does-not-exist", "NOPE", "a..b"):
        refs = replace(NOWHERE, app=name, own_app=name)
        for (method, path), route in TABLE.items():
            if not path.startswith("/apps/{name}"):
                continue
            for case in route.cases:
                rq = case.make(refs)
                if not rq.path.startswith(f"/apps/{name}"):
                    continue
                resp = env.call(
                    method,
                    rq.path,
                    user.session,
                    json=rq.json,
                    params=rq.params,
                    content=rq.content,
                    headers=rq.headers,
                )
                err = assert_error(resp, 404)
                assert err["code"] == "app_not_found", (method, rq.path, err)
                routes += 1
    assert routes >= 4 * 16


def test_unknown_routes_and_methods_keep_the_error_shape(env: Env, user: Account) -> None:
    assert_error(env.call("GET", "/nothing-here", user.session), 404, "not_found")
    assert_error(env.call("GET", f"/apps/{KEEP}/nothing", user.session), 404)
    assert_error(env.call("PUT", "/apps", user.session, json={}), 405, "method_not_allowed")
    assert_error(env.call("PATCH", f"/apps/{KEEP}/scale", user.session, json={}), 405)


def test_no_route_answers_5xx_to_garbage(env: Env, user: Account) -> None:
    """Every route (operator routes as the operator), with bodies and queries of the wrong shape
    (and names that do not exist, so that nothing is changed): a 4xx or a harmless 2xx."""
    garbage: list[dict[str, Any]] = [
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        {"json": []},
        {"json": None},
        {"json": {"unexpected": [1, {"x": None}]}},
        {"json": "x" * 10_000},
        {"params": {"limit": "abc", "format": "xml", "tail": "-5", "all": "maybe"}},
        {"content": b"\x00\xff" * 100, "headers": {"Content-Type": "application/x-tar"}},
    ]
    refs = replace(NOWHERE, own_app="no-such-app")
    throwaway = env.ok("POST", "/auth/login", json={"email": user.email, "password": user.password})
    for (method, _path), route in TABLE.items():
        token = env.admin if route.level == "operator" else throwaway["token"]
        for case in route.cases:
            path = case.make(refs).path
            for extra in garbage:
                resp = env.call(method, path, token, **extra)
                if resp.status_code >= 400:
                    assert_error(resp, resp.status_code)
    assert env.app_state(user.session)[KEEP]["app"]["scale"] == 1


# -- the audit log --------------------------------------------------------------------------------


def test_changes_are_audited_with_actor_and_address(env: Env) -> None:
    auditor = env.signup("audited")
    token = env.mint(auditor.session, "deploy")
    app = env.unique("aud")
    env.ok("POST", "/apps", auditor.session, json={"name": app}, ip="192.0.2.10", status=201)
    env.ok("POST", f"/apps/{app}/scale", token["token"], json={"replicas": 2}, ip="192.0.2.11")
    resp = env.call(
        "POST", f"/apps/{app}/scale", token["token"], json={"replicas": -1}, ip="192.0.2.12"
    )
    assert_error(resp, 422)
    env.ok("GET", f"/apps/{app}", auditor.session, ip="192.0.2.13")  # reads are not audited
    events = env.ok("GET", "/audit", auditor.session)
    mine = [
        (e["action"].replace(" /api/v1/", " /"), e["target"], e["actor"], e["ip"], e["status"])
        for e in events
    ]
    assert mine[:3] == [
        (
            "POST /apps/{name}/scale",
            f"/api/v1/apps/{app}/scale",
            f"{auditor.email} via token",
            "192.0.2.12",
            422,
        ),
        (
            "POST /apps/{name}/scale",
            f"/api/v1/apps/{app}/scale",
            f"{auditor.email} via token",
            "192.0.2.11",
            200,
        ),
        ("POST /apps", "/api/v1/apps", f"{auditor.email} via session", "192.0.2.10", 201),
    ]
    assert all(e["tenant"] == auditor.tenant for e in events)
    assert not any(e["ip"] == "192.0.2.13" for e in events)
    # Sign-ups and failed logins (nobody is signed in yet) are in the operator's view.
    env.call(
        "POST",
        "/auth/login",
        json={"email": auditor.email, "password": "wrong password!"},
        ip="192.0.2.14",
    )
    everything = env.ok("GET", "/audit", env.admin, params={"all": "true", "limit": 1000})
    failed = [e for e in everything if e["ip"] == "192.0.2.14"]
    assert [(e["action"], e["actor"], e["status"]) for e in failed] == [
        ("login failed", "anonymous", 401)
    ]
    assert any(e["action"] == "signup" and e["actor"] == auditor.email for e in everything)
    assert_error(env.call("GET", "/audit", auditor.session, params={"all": "true"}), 403)
