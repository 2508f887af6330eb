"""Certificates through the API: a tenant uploads for its own hostnames only, every bad upload
is a 4xx with a precise code that changes nothing, the wildcard is the operator's, a hostname
that leaves its app takes its certificate with it, and HTTP-01 answers come from the store."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from berth.certs.store_challenges import StoreChallenges
from tests.api.conftest import Account, Env, assert_error
from tests.certs import selfsigned

pytestmark = pytest.mark.store

BASE = "berth.localhost"


def _app(env: Env, prefix: str) -> tuple[Account, str, str]:
    user = env.signup(prefix)
    name = env.unique(prefix)
    env.create_app(user.session, name)
    return user, name, f"{name}.{BASE}"


def _upload(env: Env, token: str, domain: str, cert: str, key: str) -> httpx.Response:
    return env.call("POST", "/certs", token, json={"domain": domain, "cert": cert, "key": key})


def _listed(env: Env, token: str) -> dict[str, dict[str, object]]:
    return {c["domain"]: c for c in env.ok("GET", "/certs", token)}


def test_an_owner_uploads_and_removes_its_own_certificate(env: Env) -> None:
    user, _, host = _app(env, "certown")
    before = _listed(env, user.session)[host]
    assert before["state"] == "off" and "berth certs add" in str(before["reason"])
    made = selfsigned.issue((host,))
    done = env.ok("POST", "/certs", user.session, status=201, json={
        "domain": host, "cert": made.chain_pem, "key": made.key_pem})  # fmt: skip
    assert done["state"] == "issued" and done["source"] == "upload"
    assert env.platform.certificates is not None
    assert env.platform.certificates.pair_for(host) is not None  # what nginx will serve
    assert _listed(env, user.session)[host]["source"] == "upload"
    env.ok("DELETE", f"/certs/{host}", user.session, status=204)
    assert env.platform.certificates.pair_for(host) is None
    assert_error(env.call("DELETE", f"/certs/{host}", user.session), 404, "certificate_not_found")


def test_bad_uploads_are_refused_with_a_reason_and_change_nothing(env: Env) -> None:
    user, _, host = _app(env, "certbad")
    good = selfsigned.issue((host,))
    env.ok("POST", "/certs", user.session, json={
        "domain": host, "cert": good.chain_pem, "key": good.key_pem})  # fmt: skip
    certs = env.platform.certificates
    assert certs is not None
    served = certs.pair_for(host)
    expired = selfsigned.issue(
        (host,), valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        valid_for=dt.timedelta(days=30),
    )  # fmt: skip
    future = selfsigned.issue((host,), valid_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    elsewhere = selfsigned.issue(("elsewhere.example.test",))
    for cert, key, code in (
        (good.chain_pem, selfsigned.other_key(), "key_mismatch"),
        (expired.chain_pem, expired.key_pem, "cert_expired"),
        (future.chain_pem, future.key_pem, "cert_not_yet_valid"),
        (elsewhere.chain_pem, elsewhere.key_pem, "cert_not_covering"),
        ("not a pem", good.key_pem, None),
        (good.chain_pem, "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n", None),
    ):
        assert_error(_upload(env, user.session, host, cert, key), 422, code)
        assert certs.pair_for(host) == served
    huge = "A" * (64 * 1024 + 1)
    assert_error(_upload(env, user.session, host, huge, good.key_pem), 422)
    assert certs.pair_for(host) == served


def test_another_tenants_hostname_and_the_wildcard_are_not_a_tenants(env: Env) -> None:
    owner, _, host = _app(env, "certa")
    intruder, _, _ = _app(env, "certb")
    made = selfsigned.issue((host,))
    resp = _upload(env, intruder.session, host, made.chain_pem, made.key_pem)
    assert_error(resp, 404, "domain_not_found")
    assert host not in _listed(env, intruder.session)
    wildcard = selfsigned.issue((f"*.{BASE}",))
    resp = _upload(env, owner.session, f"*.{BASE}", wildcard.chain_pem, wildcard.key_pem)
    assert_error(resp, 403, "operator_only")
    resp = _upload(env, env.admin, "*.example.org", wildcard.chain_pem, wildcard.key_pem)
    assert_error(resp, 403, "wildcard_not_allowed")
    for bad in ("", "a" * 300, "bad host.example", "*.*.x", "exa\nmple.com"):
        resp = _upload(env, owner.session, bad, made.chain_pem, made.key_pem)
        assert_error(resp, 422)


def test_the_operators_wildcard_covers_every_platform_hostname(env: Env) -> None:
    user, _, host = _app(env, "certwild")
    certs = env.platform.certificates
    assert certs is not None
    wildcard = selfsigned.issue((f"*.{BASE}",))
    env.ok("POST", "/certs", env.admin, status=201, json={
        "domain": f"*.{BASE}", "cert": wildcard.chain_pem, "key": wildcard.key_pem})  # fmt: skip
    try:
        assert certs.pair_for(host) is not None
        assert _listed(env, user.session)[host]["source"] == "wildcard"
        assert f"*.{BASE}" in _listed(env, env.admin)
        assert certs.pair_for(f"a.b.{BASE}") is None  # one label only, as TLS matches
    finally:
        env.ok("DELETE", f"/certs/*.{BASE}", env.admin, status=204)


def test_a_hostname_leaving_its_app_takes_its_certificate_along(env: Env) -> None:
    user, name, host = _app(env, "certgone")
    domain = f"{env.unique('shop')}.example.net"
    env.ok("POST", f"/apps/{name}/domains", user.session, json={"hostname": domain})
    certs = env.platform.certificates
    assert certs is not None
    for hostname in (host, domain):
        made = selfsigned.issue((hostname,))
        env.ok("POST", "/certs", user.session, json={
            "domain": hostname, "cert": made.chain_pem, "key": made.key_pem})  # fmt: skip
    listed = env.ok("GET", f"/apps/{name}/domains", user.session)
    assert listed[0]["certificate"]["source"] == "upload"
    env.ok("DELETE", f"/apps/{name}/domains/{domain}", user.session, status=204)
    assert certs.pair_for(domain) is None and domain not in certs.manager.statuses()
    env.call("DELETE", f"/apps/{name}", user.session)
    assert certs.pair_for(host) is None and host not in certs.manager.statuses()


def test_http01_answers_come_from_the_store(env: Env) -> None:
    challenges = StoreChallenges(env.platform.sessions)
    challenges.put("tok-en_1", "tok-en_1.thumbprint_x")
    client = env.client()
    resp = client.get("/.well-known/acme-challenge/tok-en_1")
    assert resp.status_code == 200 and resp.text == "tok-en_1.thumbprint_x"
    assert resp.headers["content-type"].startswith("text/plain")
    challenges.remove("tok-en_1")
    assert client.get("/.well-known/acme-challenge/tok-en_1").status_code == 404
    for bad in ("..%2f..%2fetc", "a" * 200, "x.y", "%00"):
        assert client.get(f"/.well-known/acme-challenge/{bad}").status_code == 404
    with pytest.raises(ValueError):
        challenges.put("bad token", "x.y")
