"""Plan quotas through the API: the operator defines a plan with limits and assigns it; a tenant
going past a limit gets a 403 ``quota_exceeded`` naming the quota and its usage, and nothing
changes (no app, no release, the same scale, no domain)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store


def tenant_on_plan(env: Env, **limits: Any) -> tuple[Account, str]:
    user = env.signup("quota")
    plan = env.plan(**limits)
    assigned = env.assign(user.tenant, plan)
    assert assigned["plan"] == plan and assigned["name"] == user.tenant
    return user, plan


def app_names(env: Env, user: Account) -> list[str]:
    return [a["name"] for a in env.ok("GET", "/apps", user.session)]


def quota_error(resp: Any, plan: str, usage: str) -> None:
    err = assert_error(resp, 403, "quota_exceeded")
    assert usage in err["message"], err
    assert plan in err["message"], err


def test_operator_defines_and_assigns_plans(env: Env) -> None:
    plan = env.unique("starter")
    created = env.ok(
        "POST",
        "/admin/plans",
        env.admin,
        json={"name": plan, "price_per_gb_hour": "0.02", "max_apps": 3, "max_domains": 0},
        status=201,
    )
    assert created["price_per_gb_hour_minor"] == 2 and created["currency"] == "EUR"
    assert (created["max_apps"], created["max_instances"], created["max_domains"]) == (3, None, 0)
    assert plan in {p["name"] for p in env.ok("GET", "/admin/plans", env.admin)}
    assert_error(env.call("POST", "/admin/plans", env.admin, json={"name": plan}), 409)
    for bad in (
        {"max_apps": -1},
        {"max_memory_mb": "lots"},
        {"price_per_gb_hour": "-1"},
        {"price_per_gb_hour": "0.001"},
        {"price_per_cpu_hour": "abc"},
        {"included_gb_hours": -5},
        {"surprise": 1},
    ):
        body = {"name": env.unique("bad-plan"), **bad}
        assert_error(env.call("POST", "/admin/plans", env.admin, json=body), 422)
    user = env.signup("planned")
    env.credit(user.tenant, "12.50")
    assigned = env.assign(user.tenant, plan)
    listed = {t["name"]: t for t in env.ok("GET", "/admin/tenants", env.admin)}
    # The same tenant looks the same whichever operator route shows it.
    assert assigned == listed[user.tenant]
    assert assigned["balance"] == "12.50" and assigned["balance_minor"] == 1250
    assert env.ok("GET", "/billing/balance", user.session)["plan"] == plan
    body = {"plan": "no-such-plan"}
    resp = env.call("PUT", f"/admin/tenants/{user.tenant}/plan", env.admin, json=body)
    assert_error(resp, 404, "plan_not_found")
    resp = env.call("PUT", "/admin/tenants/no-such-tenant/plan", env.admin, json={"plan": plan})
    assert_error(resp, 404, "tenant_not_found")
    assert env.ok("GET", "/billing/balance", user.session)["plan"] == plan


def test_apps_beyond_the_plan_are_refused(env: Env) -> None:
    user, plan = tenant_on_plan(env, max_apps=2)
    first, second = env.unique("qa"), env.unique("qa")
    env.create_app(user.session, first)
    env.create_app(user.session, second)
    third = env.unique("qa")
    quota_error(env.call("POST", "/apps", user.session, json={"name": third}), plan, "apps 2/2")
    assert app_names(env, user) == sorted([first, second])
    # Deleting one makes room again.
    env.ok("DELETE", f"/apps/{first}", user.session, status=204)
    env.create_app(user.session, third)
    assert app_names(env, user) == sorted([second, third])


def test_scale_beyond_max_instances_is_refused(env: Env) -> None:
    user, plan = tenant_on_plan(env, max_instances=3)
    app = env.unique("qi")
    env.create_app(user.session, app)
    env.deploy(user.session, app)
    resp = env.call("POST", f"/apps/{app}/scale", user.session, json={"replicas": 4})
    quota_error(resp, plan, "instances 1/3")
    assert env.ok("GET", f"/apps/{app}", user.session)["scale"] == 1
    assert env.ok("POST", f"/apps/{app}/scale", user.session, json={"replicas": 3})["scale"] == 3
    resp = env.call("POST", f"/apps/{app}/scale", user.session, json={"replicas": 4})
    quota_error(resp, plan, "instances 3/3")
    assert env.ok("GET", f"/apps/{app}", user.session)["scale"] == 3


def test_scale_beyond_max_memory_is_refused(env: Env) -> None:
    user, plan = tenant_on_plan(env, max_instances=10, max_memory_mb=1024)
    app = env.unique("qm")
    env.create_app(user.session, app, memory="512M")
    env.deploy(user.session, app)
    resp = env.call("POST", f"/apps/{app}/scale", user.session, json={"replicas": 3})
    quota_error(resp, plan, "memory 512M/1024M")
    assert env.ok("GET", f"/apps/{app}", user.session)["scale"] == 1
    assert env.ok("POST", f"/apps/{app}/scale", user.session, json={"replicas": 2})["scale"] == 2


def test_first_deploy_that_would_exceed_is_refused_without_a_release(env: Env) -> None:
    user, plan = tenant_on_plan(env, max_instances=4)
    running = env.unique("qd")
    env.create_app(user.session, running)
    env.deploy(user.session, running)
    env.ok("POST", f"/apps/{running}/scale", user.session, json={"replicas": 2})
    # An app without a release holds no instances yet, so its scale is free to set ...
    waiting = env.unique("qd")
    env.create_app(user.session, waiting)
    assert (
        env.ok("POST", f"/apps/{waiting}/scale", user.session, json={"replicas": 3})["scale"] == 3
    )
    # ... but its first deploy would ask for 3 more: refused, and no release is made.
    image = f"registry.example/{waiting}:v1"
    env.runtime.add_image(image)
    resp = env.call("POST", f"/apps/{waiting}/releases", user.session, json={"image": image})
    quota_error(resp, plan, "instances 2/4")
    assert env.ok("GET", f"/apps/{waiting}/releases", user.session) == []
    shown = env.ok("GET", f"/apps/{waiting}", user.session)
    assert (shown["scale"], shown["target_release"], shown["deployment"]) == (3, None, None)
    # Scaled to fit, it deploys.
    env.ok("POST", f"/apps/{waiting}/scale", user.session, json={"replicas": 2})
    assert env.deploy(user.session, waiting, image)["release"]["version"] == 1


def test_domains_beyond_the_plan_are_refused(env: Env) -> None:
    user, plan = tenant_on_plan(env, max_domains=2)
    one, two = env.unique("qdom"), env.unique("qdom")
    env.create_app(user.session, one)
    env.create_app(user.session, two)
    env.ok("POST", f"/apps/{one}/domains", user.session, json={"hostname": f"{one}.example"})
    env.ok("POST", f"/apps/{two}/domains", user.session, json={"hostname": f"{two}.example"})
    resp = env.call(
        "POST", f"/apps/{one}/domains", user.session, json={"hostname": f"more-{one}.example"}
    )
    quota_error(resp, plan, "domains 2/2")
    assert [d["hostname"] for d in env.ok("GET", f"/apps/{one}/domains", user.session)] == [
        f"{one}.example"
    ]
    # The refused hostname is still free for anyone.
    other = env.signup("free")
    free_app = env.unique("qfree")
    env.create_app(other.session, free_app)
    env.ok(
        "POST", f"/apps/{free_app}/domains", other.session, json={"hostname": f"more-{one}.example"}
    )


def test_a_downgraded_tenant_can_still_shrink(env: Env) -> None:
    user = env.signup("downgrade")
    app = env.unique("qs")
    env.create_app(user.session, app)
    env.deploy(user.session, app)
    env.ok("POST", f"/apps/{app}/scale", user.session, json={"replicas": 5})
    small = env.plan(max_instances=2, max_apps=1)
    env.assign(user.tenant, small)
    # Above the new limits: growing is refused, shrinking (and staying) is allowed.
    quota_error(
        env.call("POST", f"/apps/{app}/scale", user.session, json={"replicas": 6}),
        small,
        "instances 5/2",
    )
    assert env.ok("POST", f"/apps/{app}/scale", user.session, json={"replicas": 5})["scale"] == 5
    assert env.ok("POST", f"/apps/{app}/scale", user.session, json={"replicas": 3})["scale"] == 3
    quota_error(
        env.call("POST", "/apps", user.session, json={"name": "qs-more"}), small, "apps 1/1"
    )
    # Config changes and restarts do not add instances: still allowed.
    env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"MODE": "lean"}})
    env.ok("POST", f"/apps/{app}/restart", user.session, status=201)


def test_plans_carry_build_disk_and_internet_limits(env: Env) -> None:
    plan = env.unique("closed")
    limits = {
        "max_concurrent_builds": 2,
        "build_memory_mb": 512,
        "build_cpus_milli": 500,
        "build_disk_mb": 1024,
        "instance_disk_mb": 64,
        "egress_internet": False,
    }
    created = env.ok("POST", "/admin/plans", env.admin, json={"name": plan, **limits}, status=201)
    assert {k: created[k] for k in limits} == limits
    listed = {p["name"]: p for p in env.ok("GET", "/admin/plans", env.admin)}
    assert listed[plan]["egress_internet"] is False
    # Unset, a plan takes the installation's settings (None) and keeps the internet on.
    other = env.ok("POST", "/admin/plans", env.admin, json={"name": env.unique("open")}, status=201)
    assert other["build_memory_mb"] is None and other["egress_internet"] is True
    for bad in (
        {"build_memory_mb": 1},
        {"build_cpus_milli": 0},
        {"max_concurrent_builds": 0},
        {"build_disk_mb": -1},
        {"egress_internet": "sometimes"},
    ):
        body = {"name": env.unique("bad-plan"), **bad}
        assert_error(env.call("POST", "/admin/plans", env.admin, json=body), 422)
