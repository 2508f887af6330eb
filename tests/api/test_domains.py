"""Custom domains need proof of control before they route.

Through the real API over a real store, with a fake TXT resolver injected in place of the
dnspython one (the same TxtResolver protocol; the real one is tested against a real DNS server
in tests/e2e/test_domains.py). What routes is read the way the controllers read it
(``load_apps``), so "routes" here means "is in the desired routing state".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from berth.api import routes_apps
from berth.controllers.snapshot import load_apps
from berth.services.domains import TxtLookupError
from berth.store.tables import Domain
from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store


@dataclass
class FakeTxt:
    """TXT records by name; a name mapped to an exception raises it (NXDOMAIN, timeout)."""

    records: dict[str, list[str] | TxtLookupError] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def txt_records(self, name: str) -> list[str]:
        self.asked.append(name)
        found = self.records.get(name, TxtLookupError(f"{name} does not exist in DNS (NXDOMAIN)"))
        if isinstance(found, TxtLookupError):
            raise found
        return list(found)

    def publish(self, challenge: dict[str, str]) -> None:
        self.records[challenge["name"]] = [challenge["value"]]


@pytest.fixture(scope="module")
def dns(env: Env) -> Iterator[FakeTxt]:
    fake = FakeTxt()
    overrides = env.app.dependency_overrides
    before = overrides.get(routes_apps.txt_resolver)
    overrides[routes_apps.txt_resolver] = lambda: fake
    try:
        yield fake
    finally:
        if before is None:
            overrides.pop(routes_apps.txt_resolver, None)
        else:
            overrides[routes_apps.txt_resolver] = before


def routed(env: Env) -> dict[str, set[str]]:
    """Custom hostnames per app name, as the controllers will route them."""
    with env.db() as session:
        return {view.name: set(view.domains) for view in load_apps(session)}


def owner_with_app(env: Env, prefix: str) -> tuple[Account, str]:
    user = env.signup(prefix)
    app = env.unique(prefix)
    env.create_app(user.session, app)
    return user, app


def add(env: Env, user: Account, app: str, hostname: str) -> dict[str, object]:
    data: dict[str, object] = env.ok(
        "POST", f"/apps/{app}/domains", user.session, json={"hostname": hostname}, status=201
    )
    return data


def verify(env: Env, user: Account, app: str, hostname: str) -> dict[str, object]:
    data: dict[str, object] = env.ok(
        "POST", f"/apps/{app}/domains/{hostname}/verify", user.session, status=200
    )
    return data


def test_a_new_domain_is_pending_and_says_what_to_publish(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "proof")
    added = add(env, user, app, "shop.example.com")
    assert added["status"] == "pending"
    assert added["verified_at"] is None and added["verified_by"] is None
    challenge = added["challenge"]
    assert isinstance(challenge, dict)
    assert challenge["type"] == "TXT"
    assert challenge["name"] == "_berth-challenge.shop.example.com"
    assert re.fullmatch(r"berth-verify=[0-9a-f]{32}", challenge["value"])
    assert env.ok("GET", f"/apps/{app}/domains", user.session) == [added]
    # Pending: not routed, and not among the app's URLs (the platform hostname needs no proof).
    assert routed(env)[app] == set()
    urls = env.ok("GET", f"/apps/{app}", user.session)["urls"]
    assert [u for u in urls if "shop.example.com" in u] == []
    assert any(f"{app}.{env.settings.base_domain}" in u for u in urls)


def test_the_txt_record_verifies_and_then_the_domain_routes(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "proven")
    added = add(env, user, app, "www.proven.example")
    assert isinstance(added["challenge"], dict)
    dns.publish(added["challenge"])
    verified = verify(env, user, app, "www.proven.example")
    assert verified["status"] == "verified" and verified["verified_by"] == "dns"
    assert verified["challenge"] is None and isinstance(verified["verified_at"], float)
    assert routed(env)[app] == {"www.proven.example"}
    urls = env.ok("GET", f"/apps/{app}", user.session)["urls"]
    assert any("www.proven.example" in u for u in urls)
    # Verifying again is a no-op that asks DNS nothing.
    asked = len(dns.asked)
    assert verify(env, user, app, "www.proven.example")["verified_at"] == verified["verified_at"]
    assert len(dns.asked) == asked


@pytest.mark.parametrize(
    ("published", "said"),
    [
        (None, "NXDOMAIN"),
        (TxtLookupError("the DNS resolver gave no answer within 3 s"), "no answer within 3 s"),
        (TxtLookupError("x exists but has no TXT record"), "has no TXT record"),
        (["berth-verify=0123456789abcdef0123456789abcdef"], "berth-verify=0123456789abcdef"),
        (["v=spf1 -all", "unrelated"], "'v=spf1 -all'"),
    ],
    ids=["nxdomain", "timeout", "no-txt", "wrong-token", "other-records"],
)
def test_a_failed_proof_is_a_clear_4xx_and_the_domain_stays_pending(
    env: Env, dns: FakeTxt, published: list[str] | TxtLookupError | None, said: str
) -> None:
    user, app = owner_with_app(env, "unproven")
    hostname = f"{app}.example.org"
    added = add(env, user, app, hostname)
    assert isinstance(added["challenge"], dict)
    if published is not None:
        dns.records[added["challenge"]["name"]] = published
    before = env.state([env.tenant_id(user.tenant)])
    resp = env.call("POST", f"/apps/{app}/domains/{hostname}/verify", user.session)
    err = assert_error(resp, 422, "domain_not_verified")
    assert said in err["message"], err
    assert added["challenge"]["value"] in err["message"]  # and what to publish instead
    assert env.state([env.tenant_id(user.tenant)]) == before
    assert env.ok("GET", f"/apps/{app}/domains", user.session)[0]["status"] == "pending"
    assert routed(env)[app] == set()


def test_the_operator_approves_without_dns(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "vouched")
    add(env, user, app, "vouched.example.net")
    resp = env.call("POST", "/admin/domains/vouched.example.net/approve", user.session)
    assert_error(resp, 403)
    assert routed(env)[app] == set()
    approved = env.ok("POST", "/admin/domains/vouched.example.net/approve", env.admin)
    assert approved["status"] == "verified" and approved["verified_by"] == "operator"
    assert routed(env)[app] == {"vouched.example.net"}
    listed = env.ok("GET", f"/apps/{app}/domains", user.session)
    assert [(d["hostname"], d["verified_by"]) for d in listed] == [
        ("vouched.example.net", "operator")
    ]
    missing = env.call("POST", "/admin/domains/nobody-claimed.example/approve", env.admin)
    assert_error(missing, 404, "domain_not_found")


def test_a_pending_claim_blocks_nobody_and_proof_wins(env: Env, dns: FakeTxt) -> None:
    squatter, squat_app = owner_with_app(env, "squatter")
    owner, owner_app = owner_with_app(env, "rightful")
    hostname = "contested.example.com"
    add(env, squatter, squat_app, hostname)
    mine = add(env, owner, owner_app, hostname)  # not blocked by the squatter's pending claim
    assert env.ok("GET", f"/apps/{squat_app}/domains", squatter.session) == []
    assert isinstance(mine["challenge"], dict)
    dns.publish(mine["challenge"])
    # The squatter takes the claim back while the record propagates ...
    theirs = add(env, squatter, squat_app, hostname)
    assert isinstance(theirs["challenge"], dict)
    assert theirs["challenge"]["value"] != mine["challenge"]["value"]  # tokens are per tenant
    assert_error(
        env.call("POST", f"/apps/{squat_app}/domains/{hostname}/verify", squatter.session),
        422,
        "domain_not_verified",
    )
    # ... but the published proof still holds (the token is stable) and verifying claims it.
    verified = verify(env, owner, owner_app, hostname)
    assert verified["status"] == "verified"
    assert env.ok("GET", f"/apps/{squat_app}/domains", squatter.session) == []
    assert routed(env)[owner_app] == {hostname} and routed(env)[squat_app] == set()
    # Verified: nobody else can add or verify it now.
    for path in (f"/apps/{squat_app}/domains", f"/apps/{squat_app}/domains/{hostname}/verify"):
        body = {"hostname": hostname} if path.endswith("domains") else None
        assert_error(env.call("POST", path, squatter.session, json=body), 409, "domain_taken")


def test_a_verified_domain_blocks_the_same_tenants_other_apps(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "twoapps")
    second = env.unique("twoapps")
    env.create_app(user.session, second)
    add(env, user, app, "one.twoapps.example")
    env.ok("POST", "/admin/domains/one.twoapps.example/approve", env.admin)
    resp = env.call(
        "POST", f"/apps/{second}/domains", user.session, json={"hostname": "one.twoapps.example"}
    )
    assert_error(resp, 409, "domain_taken")
    resp = env.call(
        "POST", f"/apps/{app}/domains", user.session, json={"hostname": "one.twoapps.example"}
    )
    assert_error(resp, 409, "domain_taken")


def test_the_token_is_stable_per_tenant_and_hostname(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "stable")
    first = add(env, user, app, "stable.example.com")
    env.ok("DELETE", f"/apps/{app}/domains/stable.example.com", user.session, status=204)
    again = add(env, user, app, "stable.example.com")
    assert first["challenge"] == again["challenge"]
    other = add(env, user, app, "other-stable.example.com")
    assert isinstance(other["challenge"], dict) and isinstance(first["challenge"], dict)
    assert other["challenge"]["value"] != first["challenge"]["value"]


@pytest.mark.parametrize("hostname", ["127.0.0.1", "10.1.2.3", "127.1", "0x7f.1", "a.123"])
def test_ip_addresses_are_not_domains(env: Env, dns: FakeTxt, hostname: str) -> None:
    user, app = owner_with_app(env, "byip")
    before = env.state([env.tenant_id(user.tenant)])
    resp = env.call("POST", f"/apps/{app}/domains", user.session, json={"hostname": hostname})
    err = assert_error(resp, 422, "invalid_domain")
    assert "IP address" in err["message"]
    resp = env.call("POST", f"/apps/{app}/domains/{hostname}/verify", user.session)
    assert_error(resp, 422, "invalid_domain")
    assert env.state([env.tenant_id(user.tenant)]) == before
    assert dns.asked == [n for n in dns.asked if hostname not in n]  # nothing was looked up


def test_verify_of_a_domain_nobody_claimed_claims_it_when_the_proof_holds(
    env: Env, dns: FakeTxt
) -> None:
    user, app = owner_with_app(env, "direct")
    hostname = "direct.example.com"
    resp = env.call("POST", f"/apps/{app}/domains/{hostname}/verify", user.session)
    err = assert_error(resp, 422, "domain_not_verified")
    assert env.ok("GET", f"/apps/{app}/domains", user.session) == []
    value = re.search(r"berth-verify=[0-9a-f]{32}", err["message"])
    assert value is not None
    dns.records[f"_berth-challenge.{hostname}"] = [value.group(0)]
    assert verify(env, user, app, hostname)["status"] == "verified"
    assert routed(env)[app] == {hostname}


def test_verifications_are_rate_limited_per_tenant(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "hammer")
    add(env, user, app, "hammer.example.com")
    path = f"/apps/{app}/domains/hammer.example.com/verify"
    for _ in range(routes_apps.VERIFY_RULE.limit):
        assert_error(env.call("POST", path, user.session), 422, "domain_not_verified")
    asked = len(dns.asked)
    resp = env.call("POST", path, user.session)
    assert_error(resp, 429, "too_many_requests")
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(dns.asked) == asked  # refused before any lookup
    # Another tenant is not affected.
    other, other_app = owner_with_app(env, "calm")
    add(env, other, other_app, "calm.example.com")
    resp = env.call("POST", f"/apps/{other_app}/domains/calm.example.com/verify", other.session)
    assert_error(resp, 422, "domain_not_verified")


def test_domains_from_before_proofs_show_as_legacy_and_route(env: Env, dns: FakeTxt) -> None:
    user, app = owner_with_app(env, "legacy")
    add(env, user, app, "old.legacy.example")
    with env.db() as session:  # what migration 0003 does to every domain that existed then
        row = session.scalar(select(Domain).where(Domain.hostname == "old.legacy.example"))
        assert row is not None
        row.verified_at, row.verified_by = row.created_at, "legacy"
        session.commit()
    listed = env.ok("GET", f"/apps/{app}/domains", user.session)
    assert [(d["status"], d["verified_by"], d["challenge"]) for d in listed] == [
        ("verified", "legacy", None)
    ]
    assert routed(env)[app] == {"old.legacy.example"}
