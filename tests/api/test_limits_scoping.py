"""What a tenant may see and name: /status scoped to the caller, reserved app names; and the
audit log's retention."""

from __future__ import annotations

import time
import types

import pytest
from sqlalchemy import func, select

from berth.controllers.billing import BillingController
from berth.services.audit_log import prune_audit_events
from berth.store.tables import App, AuditEvent, new_id
from tests.api.conftest import Env, assert_error

pytestmark = pytest.mark.store

OPERATOR_ONLY = (
    "engine_version",
    "engine_error",
    "nginx",
    "nginx_pid",
    "installation",
    "reconciler",
)
SECRET_TEXT = "container of app rival-shop (tenant rival-1a2b3c) failed: out of memory"


@pytest.fixture
def troubled(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is down and the reconciler's last pass failed, both naming another tenant."""

    def down() -> str:
        raise RuntimeError(SECRET_TEXT)

    monkeypatch.setattr(env.runtime, "version", down)
    fake_reconciler = types.SimpleNamespace(last_error=SECRET_TEXT, passes=7)
    monkeypatch.setattr(env.platform, "reconciler", fake_reconciler)
    monkeypatch.setattr(env.platform, "started", True)


def test_a_tenant_sees_only_what_concerns_it(env: Env) -> None:
    user = env.signup("status")
    status = env.ok("GET", "/status", user.session)
    assert status["server"] == "ok" and status["engine"] == "ok"
    assert status["tenant"] == user.tenant
    assert status["base_domain"] == env.settings.base_domain
    assert status["ingress_port"] == env.settings.ingress_port
    assert {k: status[k] for k in OPERATOR_ONLY} == dict.fromkeys(OPERATOR_ONLY)
    assert env.platform.installation not in str(status)


def test_an_engine_failure_reaches_tenants_without_its_text(env: Env, troubled: None) -> None:
    user = env.signup("status-down")
    for token in (user.session, env.mint(user.session, "read")["token"]):
        status = env.ok("GET", "/status", token)
        assert status["engine"] == "unavailable"
        assert "rival" not in str(status) and env.platform.installation not in str(status)


def test_operators_see_the_installation_and_the_errors(env: Env, troubled: None) -> None:
    status = env.ok("GET", "/status", env.admin)
    assert status["engine"] == "unavailable"
    assert status["engine_error"] == SECRET_TEXT
    assert status["reconciler"] == f"error: {SECRET_TEXT}"
    assert status["installation"] == env.platform.installation
    assert status["nginx"] == "not managed"


def test_an_operator_user_without_an_admin_token_is_a_tenant_here(env: Env) -> None:
    read = env.mint(env.admin, "read")["token"]
    status = env.ok("GET", "/status", read)
    assert status["installation"] is None and status["reconciler"] is None


# -- reserved names -------------------------------------------------------------------------------


def app_count(env: Env) -> int:
    with env.db() as session:
        return int(session.scalar(select(func.count(App.id))) or 0)


@pytest.mark.parametrize(
    "name", ["www", "api", "admin", "berth", "default", "localhost", "nginx", "mail", "status"]
)
def test_reserved_app_names_are_refused(env: Env, name: str) -> None:
    user = env.signup("reserver")
    before = app_count(env)
    err = assert_error(env.call("POST", "/apps", user.session, json={"name": name}), 422)
    assert err["code"] == "name_reserved" and name in err["message"]
    assert app_count(env) == before


def test_the_reserved_list_is_the_operators(env: Env) -> None:
    user = env.signup("reserver")
    name = env.unique("house")
    with env.settings_override(reserved_app_names=[name, "shop"]):
        assert_error(env.call("POST", "/apps", user.session, json={"name": name}), 422)
        assert_error(env.call("POST", "/apps", user.session, json={"name": "shop"}), 422)
        env.create_app(user.session, env.unique("mail"))  # not reserved by this operator
        env.create_app(user.session, "www")
    assert_error(env.call("POST", "/apps", user.session, json={"name": "status"}), 422)


# -- audit retention ------------------------------------------------------------------------------


def add_audit_row(env: Env, at: float, target: str) -> None:
    with env.db() as session:
        session.add(
            AuditEvent(
                id=new_id(), at=at, actor="test", action="test", target=target, ip="", status=200
            )
        )
        session.commit()


def audit_targets(env: Env, prefix: str) -> set[str]:
    with env.db() as session:
        rows = session.scalars(
            select(AuditEvent.target).where(AuditEvent.target.like(prefix + "%"))
        )
        return set(rows)


def test_prune_deletes_only_rows_past_the_retention(env: Env) -> None:
    now = time.time()
    tag = env.unique("prune")
    add_audit_row(env, now - 10 * 86400 - 5, f"{tag}-old")
    add_audit_row(env, now - 10 * 86400 + 60, f"{tag}-young")
    add_audit_row(env, now, f"{tag}-new")
    with env.db() as session:
        removed = prune_audit_events(session, 10, now)
        session.commit()
    assert removed >= 1
    assert audit_targets(env, tag) == {f"{tag}-young", f"{tag}-new"}


def test_the_billing_pass_applies_the_retention(env: Env) -> None:
    now = time.time()
    tag = env.unique("billing-prune")
    add_audit_row(env, now - 91 * 86400, f"{tag}-old")
    add_audit_row(env, now - 89 * 86400, f"{tag}-kept")
    BillingController(env.platform.settings, env.platform.sessions, clock=lambda: now).run_once()
    assert audit_targets(env, tag) == {f"{tag}-kept"}
    with env.settings_override(audit_retention_days=30) as settings:
        BillingController(settings, env.platform.sessions, clock=lambda: now).run_once()
    assert audit_targets(env, tag) == set()
