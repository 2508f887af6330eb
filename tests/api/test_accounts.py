"""Accounts through the API: sign-up, login, logout, whoami, the login rate limit, API tokens
(shown once, hashed at rest, expiring, revocable, never wider than their creator) and teams
(invitations, roles, the last owner)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from berth.services import accounts as acc
from berth.services.accounts import LoginLimiter, SignupLimiter
from berth.services.ratelimit import Rule
from berth.store.tables import ApiToken, AuditEvent, Membership, User, WebSession
from tests.api.conftest import API, PASSWORD, Env, assert_error

pytestmark = pytest.mark.store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(env: Env) -> Iterator[Clock]:
    """Fresh limiters on a clock the test moves (the API reads them on every request)."""
    made = Clock()
    login_before = env.platform.login_limiter
    signup_before = env.app.state.signup_limiter
    env.platform.login_limiter = LoginLimiter(clock=made)
    env.app.state.signup_limiter = SignupLimiter(clock=made)
    try:
        yield made
    finally:
        env.platform.login_limiter = login_before
        env.app.state.signup_limiter = signup_before


def audit_rows(env: Env, ip: str) -> list[tuple[str, int]]:
    with env.db() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.status)
            .where(AuditEvent.ip == ip)
            .order_by(AuditEvent.at)
        )
        return [(a, s) for a, s in rows]


def whoami(env: Env, token: str, tenant: str | None = None) -> dict[str, object]:
    data: dict[str, object] = env.ok("GET", "/auth/whoami", token, tenant=tenant)
    return data


def user_count(env: Env) -> int:
    with env.db() as session:
        return int(session.scalar(select(func.count(User.id))) or 0)


def sessions_of(env: Env, email: str) -> int:
    uid = env.user_id(email)
    with env.db() as session:
        stmt = select(func.count(WebSession.id)).where(WebSession.user_id == uid)
        return int(session.scalar(stmt) or 0)


# -- sign-up, login, logout, whoami ------------------------------------------------------------


def test_signup_login_whoami_logout(env: Env) -> None:
    alice = env.signup("alice")
    me = whoami(env, alice.session)
    assert me["email"] == alice.email
    assert me["tenant"] == alice.tenant
    assert (me["role"], me["scope"], me["via"], me["is_operator"]) == (
        "owner",
        "admin",
        "session",
        False,
    )
    assert me["tenants"] == [{"name": alice.tenant, "kind": "personal", "role": "owner"}]

    # Email is matched without regard to case or surrounding spaces.
    login = env.ok(
        "POST", "/auth/login", json={"email": f"  {alice.email.upper()} ", "password": PASSWORD}
    )
    assert login["email"] == alice.email and login["tenant"] == alice.tenant
    second = login["token"]
    assert second != alice.session
    assert login["expires_at"] > time.time() + 13 * 86400
    assert whoami(env, second)["email"] == alice.email

    # The session also works as the cookie the login set (the panel's way).
    resp = env.call("GET", "/auth/whoami", headers={"Cookie": f"berth_session={second}"})
    assert resp.status_code == 200 and resp.json()["email"] == alice.email

    env.ok("POST", "/auth/logout", second, status=204)
    assert_error(env.call("GET", "/auth/whoami", second), 401, "unauthorized")
    assert_error(env.call("GET", "/apps", second), 401, "unauthorized")
    # Logging out ends that session only.
    assert whoami(env, alice.session)["email"] == alice.email


def test_no_or_garbage_credentials_are_401(env: Env) -> None:
    assert_error(env.call("GET", "/auth/whoami"), 401, "unauthorized")
    for secret in ("garbage", "berth_" + "x" * 43, "bsess_" + "y" * 43, "Bearer"):
        assert_error(env.call("GET", "/auth/whoami", secret), 401, "unauthorized")


def test_passwords_are_stored_as_argon2id_hashes(env: Env) -> None:
    user = env.signup("hashed")
    with env.db() as session:
        stored = session.scalar(select(User.password_hash).where(User.email == user.email))
    assert stored is not None and stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_wrong_password_is_401_and_changes_nothing(env: Env) -> None:
    bob = env.signup("bob")
    before = env.state([env.tenant_id(bob.tenant)], [env.user_id(bob.email)])
    sessions = sessions_of(env, bob.email)
    wrong = env.call(
        "POST",
        "/auth/login",
        json={"email": bob.email, "password": "not the password"},
        ip="10.1.0.1",
    )
    err = assert_error(wrong, 401, "bad_credentials")
    # An unknown email gets the very same answer: the API does not say which emails exist.
    unknown = env.call(
        "POST",
        "/auth/login",
        json={"email": "nobody-here@example.com", "password": "not the password"},
        ip="10.1.0.2",
    )
    assert assert_error(unknown, 401, "bad_credentials") == err
    assert "berth_session" not in wrong.headers.get("set-cookie", "")
    assert env.state([env.tenant_id(bob.tenant)], [env.user_id(bob.email)]) == before
    assert sessions_of(env, bob.email) == sessions
    assert whoami(env, bob.session)["email"] == bob.email


def test_duplicate_email_is_409(env: Env) -> None:
    carol = env.signup("carol")
    users = user_count(env)
    for email in (carol.email, carol.email.upper(), f" {carol.email}"):
        resp = env.call("POST", "/auth/signup", json={"email": email, "password": PASSWORD + "!"})
        assert_error(resp, 409, "email_taken")
    assert user_count(env) == users
    # The original password still works; the attempts did not overwrite it.
    env.ok("POST", "/auth/login", json={"email": carol.email, "password": PASSWORD}, ip="10.2.0.1")


@pytest.mark.parametrize(
    ("email", "password", "code"),
    [
        ("weak@example.com", "short", "weak_password"),
        ("weak@example.com", "123456789", "weak_password"),
        ("weak@example.com", "", "weak_password"),
        ("weak@example.com", "x" * 1025, "invalid"),
        ("not-an-email", PASSWORD, "invalid_email"),
        ("a@", PASSWORD, "invalid_email"),
        ("@example.com", PASSWORD, "invalid_email"),
        ("a b@example.com", PASSWORD, "invalid_email"),
        ("a@b@example.com", PASSWORD, "invalid_email"),
        ("", PASSWORD, "invalid_email"),
        ("x" * 250 + "@example.com", PASSWORD, "invalid"),
    ],
)
def test_weak_password_or_bad_email_is_422(env: Env, email: str, password: str, code: str) -> None:
    users = user_count(env)
    resp = env.call("POST", "/auth/signup", json={"email": email, "password": password})
    assert_error(resp, 422, code)
    assert user_count(env) == users


def test_signup_body_must_be_well_formed(env: Env) -> None:
    users = user_count(env)
    for body in ({}, {"email": "x@example.com"}, {"password": PASSWORD}, [], "text"):
        assert_error(env.call("POST", "/auth/signup", json=body), 422, "invalid")
    extra = {"email": "x@example.com", "password": PASSWORD, "is_operator": True}
    assert_error(env.call("POST", "/auth/signup", json=extra), 422, "invalid")
    assert user_count(env) == users


# -- the login rate limit ------------------------------------------------------------------------


def test_a_guesser_never_locks_the_owner_out(env: Env, clock: Clock) -> None:
    dave = env.signup("dave")
    bad = {"email": dave.email, "password": "wrong password!"}
    good = {"email": dave.email, "password": PASSWORD}
    attacker, owner = "10.3.0.1", "10.3.0.2"
    answers = [env.call("POST", "/auth/login", json=bad, ip=attacker) for _ in range(20)]
    assert [r.status_code for r in answers] == [401] * 5 + [429] * 15
    for resp in answers[5:]:
        err = assert_error(resp, 429, "too_many_attempts")
        assert "try again in" in err["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 300
    # The attacker's address is refused even the right password...
    assert_error(env.call("POST", "/auth/login", json=good, ip=attacker), 429, "too_many_attempts")
    # ...while the owner, elsewhere, logs in at once; existing sessions never stopped working.
    assert env.ok("POST", "/auth/login", json=good, ip=owner)["email"] == dave.email
    assert whoami(env, dave.session)["email"] == dave.email
    # Refused attempts are not audited: only the five that reached the password check.
    assert audit_rows(env, attacker) == [("login failed", 401)] * 5

    clock.now += 301  # after the window, the attacker's address may try again
    env.ok("POST", "/auth/login", json=good, ip=attacker)


def test_one_address_spraying_many_emails_is_held_back(env: Env, clock: Clock) -> None:
    ip = "10.4.0.1"
    for n in range(20):
        body = {"email": f"guess-{n}@example.com", "password": "wrong password!"}
        assert_error(env.call("POST", "/auth/login", json=body, ip=ip), 401)
    erin = env.signup("erin", ip="10.4.0.9")
    good = {"email": erin.email, "password": PASSWORD}
    assert_error(env.call("POST", "/auth/login", json=good, ip=ip), 429, "too_many_attempts")
    env.ok("POST", "/auth/login", json=good, ip="10.4.0.2")


def test_a_distributed_guess_meets_a_per_email_ceiling_but_not_the_owner_at_home(
    env: Env, clock: Clock
) -> None:
    env.platform.login_limiter = LoginLimiter(per_email=Rule(limit=10, window=60.0), clock=clock)
    fred = env.signup("fred", ip="10.6.0.1")  # fred has a session from 10.6.0.1
    bad = {"email": fred.email, "password": "wrong password!"}
    good = {"email": fred.email, "password": PASSWORD}
    for n in range(10):
        assert_error(env.call("POST", "/auth/login", json=bad, ip=f"10.7.0.{n}"), 401)
    refused = env.call("POST", "/auth/login", json=good, ip="10.8.0.1")
    assert_error(refused, 429, "too_many_attempts")
    assert int(refused.headers["retry-after"]) <= 60
    env.ok("POST", "/auth/login", json=good, ip="10.6.0.1")  # a known address is not held back
    clock.now += 61
    env.ok("POST", "/auth/login", json=good, ip="10.8.0.1")


def test_signups_are_limited_per_address_before_any_hash(
    env: Env, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real_hash = acc.hash_password
    monkeypatch.setattr(acc, "hash_password", lambda pw: hashed.append(pw) or real_hash(pw))
    ip = "2001:db8:5::1"
    with env.settings_override(signup_limit_per_address=3, signup_window_seconds=600):
        for n in range(3):
            env.signup("limited", ip=f"2001:db8:5::{n + 1}")  # one /64 counts as one address
        users, hashes = user_count(env), len(hashed)
        email = f"{env.unique('refused')}@example.com"
        body = {"email": email, "password": PASSWORD}
        resp = env.call("POST", "/auth/signup", json=body, ip=ip)
        err = assert_error(resp, 429, "too_many_signups")
        assert "try again in" in err["message"]
        assert int(resp.headers["retry-after"]) == 600
        assert (user_count(env), len(hashed)) == (users, hashes)
        assert audit_rows(env, ip) == [("signup", 201)]  # the refusal wrote no row
        # Bad input is a 422 whatever the limit, and costs neither a hash nor an audit row.
        weak = {"email": f"{env.unique('weak')}@example.com", "password": "short"}
        assert_error(env.call("POST", "/auth/signup", json=weak, ip=ip), 422, "weak_password")
        env.signup("elsewhere", ip="2001:db8:6::1")  # another /64 signs up
        clock.now += 601
        env.ok("POST", "/auth/signup", json=body, ip=ip, status=201)


def test_signup_from_a_limited_address_does_not_half_create_an_account(env: Env) -> None:
    """Sign-up is not a password guess: it either makes a working account or none at all."""
    ip = "10.5.0.1"
    for n in range(5):
        body = {"email": f"spray-{n}@example.com", "password": "wrong password!"}
        assert_error(env.call("POST", "/auth/login", json=body, ip=ip), 401)
    email = f"{env.unique('fresh')}@example.com"
    resp = env.call("POST", "/auth/signup", json={"email": email, "password": PASSWORD}, ip=ip)
    if resp.status_code == 201:
        assert whoami(env, resp.json()["token"])["email"] == email
    else:
        assert_error(resp, 429)
        with env.db() as session:
            assert session.scalar(select(User.id).where(User.email == email)) is None


# -- the session cookie ----------------------------------------------------------------------------


def cookie_attributes(resp: httpx.Response) -> dict[str, str]:
    parts = [p.strip() for p in resp.headers["set-cookie"].split(";")]
    assert parts[0].startswith("berth_session=bsess_"), parts
    return {k.lower(): v for k, _, v in (p.partition("=") for p in parts[1:])}


def test_the_session_cookie_is_httponly_lax_and_secure_over_tls(env: Env) -> None:
    user = env.signup("cookie")
    good = {"email": user.email, "password": PASSWORD}
    plain = cookie_attributes(env.call("POST", "/auth/login", json=good))
    assert "httponly" in plain and plain["samesite"].lower() == "lax"
    assert "secure" not in plain  # plain HTTP: a Secure cookie would never come back
    assert int(plain["max-age"]) == 14 * 86400

    tls = {"X-Forwarded-Proto": "https"}
    proxied = env.call("POST", "/auth/login", json=good, ip="127.0.0.1", headers=tls)
    assert "secure" in cookie_attributes(proxied)  # a TLS proxy on this machine said so
    spoofed = env.call("POST", "/auth/login", json=good, ip="10.9.0.1", headers=tls)
    assert "secure" not in cookie_attributes(spoofed)  # anyone else saying so is not believed
    with TestClient(env.app, base_url="https://testserver", client=("10.9.0.2", 50000)) as tc:
        direct = tc.post(API + "/auth/login", json=good)
    assert direct.status_code == 200 and "secure" in cookie_attributes(direct)


def test_the_cookie_takes_login_sessions_only(env: Env) -> None:
    user = env.signup("jar")
    token = env.mint(user.session, "admin")["token"]
    planted = env.call("GET", "/auth/whoami", headers={"Cookie": f"berth_session={token}"})
    err = assert_error(planted, 401, "unauthorized")
    assert "bearer" in err["message"]
    resp = env.call("GET", "/apps", headers={"Cookie": f"berth_session={token}"})
    assert_error(resp, 401, "unauthorized")
    cookie = env.call("GET", "/auth/whoami", headers={"Cookie": f"berth_session={user.session}"})
    assert cookie.status_code == 200 and cookie.json()["via"] == "session"
    # The bearer header keeps taking both.
    assert whoami(env, token)["via"] == "token"
    assert whoami(env, user.session)["via"] == "session"


# -- API tokens ----------------------------------------------------------------------------------


def test_token_secret_is_shown_once_and_hashed_at_rest(env: Env) -> None:
    fay = env.signup("fay")
    created = env.mint(fay.session, "deploy")
    secret = created["token"]
    assert secret.startswith("berth_") and len(secret) > 40
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < 16
    assert created["scope"] == "deploy"

    listed = env.ok("GET", "/tokens", fay.session)
    assert [t["id"] for t in listed] == [created["id"]]
    assert all("token" not in t for t in listed)
    assert secret not in env.call("GET", "/tokens", fay.session).text

    with env.db() as session:
        row = session.get(ApiToken, created["id"])
        assert row is not None
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert row.token_hash != secret
        assert all(secret not in str(v) for v in (row.name, row.prefix, row.scopes, row.token_hash))
    me = whoami(env, secret)
    assert (me["via"], me["scope"], me["email"]) == ("token", "deploy", fay.email)


def test_token_expiry(env: Env) -> None:
    gus = env.signup("gus")
    created = env.mint(gus.session, "read", expires_in_seconds=60)
    assert time.time() + 50 < created["expires_at"] <= time.time() + 61
    assert whoami(env, created["token"])["scope"] == "read"
    with env.db() as session:
        session.execute(
            update(ApiToken).where(ApiToken.id == created["id"]).values(expires_at=time.time() - 1)
        )
        session.commit()
    assert_error(env.call("GET", "/auth/whoami", created["token"]), 401, "token_expired")
    assert_error(env.call("GET", "/apps", created["token"]), 401, "token_expired")

    # Without an expiry a token lasts token_default_days (90), not forever.
    default = env.mint(gus.session, "read")
    assert time.time() + 90 * 86400 - 60 < default["expires_at"] <= time.time() + 90 * 86400
    with env.settings_override(token_default_days=7):
        week = env.mint(gus.session, "read")
    assert time.time() + 7 * 86400 - 60 < week["expires_at"] <= time.time() + 7 * 86400

    for seconds in (0, 59, -5, 367 * 86400):
        body = {"name": "bad expiry", "scope": "read", "expires_in_seconds": seconds}
        assert_error(env.call("POST", "/tokens", gus.session, json=body), 422, "invalid_expiry")
    assert len(env.ok("GET", "/tokens", gus.session)) == 3


def test_the_operators_first_start_token_does_not_expire(env: Env) -> None:
    """The token file written at first start is how the operator gets in: it never expires
    (it can be revoked); only tokens made through the API get the default expiry."""
    me = whoami(env, env.admin)
    with env.db() as session:
        row = session.get(ApiToken, me["token_id"])
        assert row is not None and row.expires_at is None


def test_token_revoke(env: Env) -> None:
    hal = env.signup("hal")
    keep = env.mint(hal.session, "deploy")
    gone = env.mint(hal.session, "admin")
    env.ok("DELETE", f"/tokens/{gone['id']}", hal.session, status=204)
    assert_error(env.call("GET", "/auth/whoami", gone["token"]), 401, "unauthorized")
    assert whoami(env, keep["token"])["scope"] == "deploy"
    listed = {t["id"]: t for t in env.ok("GET", "/tokens", hal.session)}
    assert listed[gone["id"]]["revoked_at"] is not None
    assert listed[keep["id"]]["revoked_at"] is None
    # Revoking again is harmless; an unknown id is a 404.
    env.ok("DELETE", f"/tokens/{gone['id']}", hal.session, status=204)
    assert_error(env.call("DELETE", "/tokens/0123456789abcdef", hal.session), 404)


def test_narrow_tokens_cannot_mint_tokens(env: Env) -> None:
    ivy = env.signup("ivy")
    read = env.mint(ivy.session, "read")
    deploy = env.mint(ivy.session, "deploy")
    admin = env.mint(ivy.session, "admin")
    before = env.ok("GET", "/tokens", ivy.session)
    for narrow in (read, deploy):
        for scope in ("read", "deploy", "admin"):
            body = {"name": "sneaky", "scope": scope}
            assert_error(env.call("POST", "/tokens", narrow["token"], json=body), 403)
    assert env.ok("GET", "/tokens", ivy.session) == before
    # An admin-scoped token may (a login session may too).
    minted = env.mint(admin["token"], "read")
    assert whoami(env, minted["token"])["scope"] == "read"
    for scope in ("root", "", "ADMIN", "read,admin"):
        body = {"name": "x", "scope": scope}
        assert_error(env.call("POST", "/tokens", ivy.session, json=body), 422, "invalid_scope")


def test_narrow_tokens_cannot_create_or_join_teams(env: Env) -> None:
    """Teams and memberships are account management: a login session or an admin token."""
    owner, joiner = env.signup("founder"), env.signup("joiner")
    team = env.unique("club")
    env.ok("POST", "/teams", owner.session, json={"name": team}, status=201)
    inv = env.ok(
        "POST",
        "/invitations",
        owner.session,
        tenant=team,
        json={"email": joiner.email, "role": "developer"},
        status=201,
    )
    for scope in ("read", "deploy"):
        narrow = env.mint(joiner.session, scope)["token"]
        body = {"name": env.unique("sneaky-team")}
        assert_error(env.call("POST", "/teams", narrow, json=body), 403, "forbidden")
        accept = {"token": inv["token"]}
        assert_error(env.call("POST", "/invitations/accept", narrow, json=accept), 403)
    assert {t["name"] for t in env.ok("GET", "/teams", joiner.session)} == {joiner.tenant}
    admin = env.mint(joiner.session, "admin")["token"]
    joined = env.ok("POST", "/invitations/accept", admin, json={"token": inv["token"]})
    assert joined["name"] == team


def test_read_token_cannot_revoke_other_tokens(env: Env) -> None:
    """A read-only token changes nothing, not even the owner's other tokens (it may end itself)."""
    jay = env.signup("jay")
    admin = env.mint(jay.session, "admin")
    read = env.mint(jay.session, "read")
    assert_error(env.call("DELETE", f"/tokens/{admin['id']}", read["token"]), 403)
    assert whoami(env, admin["token"])["scope"] == "admin"
    env.ok("DELETE", f"/tokens/{read['id']}", read["token"], status=204)
    assert_error(env.call("GET", "/auth/whoami", read["token"]), 401)


def test_effective_rights_are_the_smaller_of_role_and_scope(env: Env) -> None:
    kim = env.signup("kim")
    team = env.unique("kimteam")
    env.ok("POST", "/teams", kim.session, json={"name": team}, status=201)
    deploy = env.mint(kim.session, "deploy", tenant=team)
    me = whoami(env, deploy["token"])
    assert (me["tenant"], me["role"], me["scope"]) == (team, "owner", "deploy")
    env.create_app(deploy["token"], env.unique("kapp"))
    body = {"email": "someone@example.com", "role": "viewer"}
    assert_error(env.call("POST", "/invitations", deploy["token"], json=body), 403, "owner_only")
    env.ok("POST", "/invitations", kim.session, json=body, tenant=team, status=201)


# -- teams ----------------------------------------------------------------------------------------


def members(env: Env, token: str, team: str) -> dict[str, str]:
    return {m["email"]: m["role"] for m in env.ok("GET", "/members", token, tenant=team)}


def test_team_invitation_roles_and_last_owner(env: Env) -> None:
    owner = env.signup("owner")
    dev = env.signup("dev")
    outsider = env.signup("outsider")
    team = env.unique("team")
    created = env.ok("POST", "/teams", owner.session, json={"name": team}, status=201)
    assert created == {"name": team, "kind": "team", "role": "owner"}
    assert_error(env.call("POST", "/teams", dev.session, json={"name": team}), 409, "tenant_exists")
    for bad in ("Team", "a b", "x;y", "", "t" * 31):
        assert_error(env.call("POST", "/teams", owner.session, json={"name": bad}), 422)

    # Invite dev as a developer; only dev can accept, once.
    inv = env.ok(
        "POST",
        "/invitations",
        owner.session,
        tenant=team,
        json={"email": dev.email.upper(), "role": "developer"},
        status=201,
    )
    assert inv["email"] == dev.email and inv["role"] == "developer"
    assert inv["token"].startswith("binv_")
    accept = {"token": inv["token"]}
    assert_error(env.call("POST", "/invitations/accept", outsider.session, json=accept), 404)
    assert_error(env.call("GET", "/apps", dev.session, tenant=team), 404, "tenant_not_found")
    joined = env.ok("POST", "/invitations/accept", dev.session, json=accept)
    assert joined == {"name": team, "kind": "team", "role": "developer"}
    assert_error(env.call("POST", "/invitations/accept", dev.session, json=accept), 422)
    assert members(env, owner.session, team) == {owner.email: "owner", dev.email: "developer"}
    me = whoami(env, dev.session, tenant=team)
    assert (me["tenant"], me["role"]) == (team, "developer")
    assert {t["name"] for t in me["tenants"]} == {dev.tenant, team}  # type: ignore[union-attr]

    # A developer deploys, but does not manage people.
    app = env.unique("tapp")
    env.create_app(dev.session, app, tenant=team)
    env.deploy(dev.session, app, tenant=team)
    for method, path, body in (
        ("PATCH", f"/members/{dev.email}", {"role": "owner"}),
        ("DELETE", f"/members/{owner.email}", None),
        ("POST", "/invitations", {"email": outsider.email, "role": "owner"}),
    ):
        resp = env.call(method, path, dev.session, tenant=team, json=body)
        assert_error(resp, 403, "owner_only")
    assert members(env, owner.session, team) == {owner.email: "owner", dev.email: "developer"}

    # Demoted to viewer: reads, cannot deploy.
    env.ok("PATCH", f"/members/{dev.email}", owner.session, tenant=team, json={"role": "viewer"})
    assert [a["name"] for a in env.ok("GET", "/apps", dev.session, tenant=team)] == [app]
    resp = env.call("POST", f"/apps/{app}/scale", dev.session, tenant=team, json={"replicas": 2})
    assert_error(resp, 403, "read_only")
    # Config values are often secrets (an attached database's URL): a viewer sees keys only.
    env.ok(
        "PATCH",
        f"/apps/{app}/config",
        owner.session,
        tenant=team,
        json={"set": {"DATABASE_URL": "postgresql://u:s3cret@db/x"}},
    )
    shown = env.ok("GET", f"/apps/{app}/config", dev.session, tenant=team)
    assert shown["values_hidden"] is True and shown["config"]["DATABASE_URL"] == ""
    assert "s3cret" not in str(shown)
    full = env.ok("GET", f"/apps/{app}/config", owner.session, tenant=team)
    assert full["values_hidden"] is False
    assert full["config"]["DATABASE_URL"] == "postgresql://u:s3cret@db/x"
    assert_error(
        env.call(
            "PATCH", f"/members/{dev.email}", owner.session, tenant=team, json={"role": "god"}
        ),
        422,
        "invalid_role",
    )

    # The last owner can neither leave nor step down.
    resp = env.call("DELETE", f"/members/{owner.email}", owner.session, tenant=team)
    assert_error(resp, 422, "last_owner")
    resp = env.call(
        "PATCH", f"/members/{owner.email}", owner.session, tenant=team, json={"role": "developer"}
    )
    assert_error(resp, 422, "last_owner")
    assert members(env, owner.session, team)[owner.email] == "owner"
    # With a second owner, the first may step down.
    env.ok("PATCH", f"/members/{dev.email}", owner.session, tenant=team, json={"role": "owner"})
    env.ok("DELETE", f"/members/{owner.email}", dev.session, tenant=team, status=204)
    assert members(env, dev.session, team) == {dev.email: "owner"}
    assert_error(env.call("GET", "/apps", owner.session, tenant=team), 404, "tenant_not_found")
    assert_error(env.call("DELETE", "/members/nobody@example.com", dev.session, tenant=team), 404)


def test_removed_member_loses_team_tokens(env: Env) -> None:
    owner = env.signup("lead")
    member = env.signup("member")
    team = env.unique("crew")
    env.ok("POST", "/teams", owner.session, json={"name": team}, status=201)
    inv = env.ok(
        "POST",
        "/invitations",
        owner.session,
        tenant=team,
        json={"email": member.email, "role": "developer"},
        status=201,
    )
    env.ok("POST", "/invitations/accept", member.session, json={"token": inv["token"]})
    token = env.mint(member.session, "deploy", tenant=team)
    assert whoami(env, token["token"])["tenant"] == team
    env.ok("DELETE", f"/members/{member.email}", owner.session, tenant=team, status=204)
    assert_error(env.call("GET", "/apps", token["token"]), 401)
    with env.db() as session:
        uid = env.user_id(member.email)
        assert (
            session.scalar(
                select(Membership.id).where(
                    Membership.user_id == uid, Membership.tenant_id == env.tenant_id(team)
                )
            )
            is None
        )


def test_tenant_header_for_a_team_you_are_not_in_is_404(env: Env) -> None:
    owner = env.signup("mona")
    stranger = env.signup("ned")
    team = env.unique("secret")
    env.ok("POST", "/teams", owner.session, json={"name": team}, status=201)
    stranger_token = env.mint(stranger.session, "admin")
    for target in (team, owner.tenant, "no-such-tenant"):
        for secret in (stranger.session, stranger_token["token"]):
            err = assert_error(env.call("GET", "/apps", secret, tenant=target), 404)
            assert err["code"] == "tenant_not_found"
    # A user's token may name another tenant of the same user (the CLI's `berth switch`): the
    # membership gives the role there; any other tenant is a 404.
    own_token = env.mint(owner.session, "admin")
    assert env.ok("GET", "/apps", own_token["token"], tenant=team) == []
    assert env.ok("GET", "/apps", own_token["token"], tenant=owner.tenant) == []
    assert_error(
        env.call("GET", "/apps", own_token["token"], tenant=stranger.tenant),
        404,
        "tenant_not_found",
    )


def test_invitations_only_into_teams(env: Env) -> None:
    solo = env.signup("solo")
    body = {"email": "friend@example.com", "role": "developer"}
    assert_error(env.call("POST", "/invitations", solo.session, json=body), 409, "not_a_team")
    team = env.unique("band")
    env.ok("POST", "/teams", solo.session, json={"name": team}, status=201)
    for bad in ({"email": "nope", "role": "developer"}, {"email": "a@example.com", "role": "boss"}):
        assert_error(env.call("POST", "/invitations", solo.session, tenant=team, json=bad), 422)
