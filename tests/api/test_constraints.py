"""Placement constraints through the API: PATCH /apps/{name} sets them (a change is a new
revision rolled out start-first), apps info shows them, bad ones are a 422 that changes nothing,
and another tenant's app answers exactly like a missing one."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from berth.store.tables import App, Deployment
from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store


def _app_with_release(env: Env, prefix: str) -> tuple[Account, str]:
    user = env.signup(prefix)
    name = env.unique(prefix)
    env.create_app(user.session, name)
    env.deploy(user.session, name)
    return user, name


def _patch(env: Env, user: Account, name: str, constraints: Any) -> Any:
    return env.ok("PATCH", f"/apps/{name}", user.session, json={"constraints": constraints})


def _row(env: Env, name: str) -> App:
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == name))
        assert app is not None
        session.expunge(app)
        return app


def test_a_change_is_a_new_revision_rolled_out_start_first(env: Env) -> None:
    user, name = _app_with_release(env, "placed")
    before = _row(env, name)
    first = before.deployment_id
    result = _patch(env, user, name, ["zone==b", " disk!=hdd", "zone==b"])
    assert result["app"]["constraints"] == ["zone==b", "disk!=hdd"]  # normalized
    dep = result["deployment"]
    assert dep["kind"] == "constraints" and dep["status"] == "in_progress"
    assert dep["release_version"] == 1  # the same release, the next generation
    after = _row(env, name)
    assert after.generation == before.generation + 1
    assert after.target_generation == after.generation
    assert after.deployment_id == dep["id"]
    with env.db() as session:
        previous = session.get(Deployment, first)
        assert previous is not None and previous.status == "superseded"
        current = session.get(Deployment, dep["id"])
        assert current is not None and current.generation == after.generation
    info = env.ok("GET", f"/apps/{name}", user.session)
    assert info["constraints"] == ["zone==b", "disk!=hdd"]
    assert info["deployment"]["id"] == dep["id"]
    listed = {a["name"]: a for a in env.ok("GET", "/apps", user.session)}
    assert listed[name]["constraints"] == ["zone==b", "disk!=hdd"]

    # The same constraints again (in another spelling): no new revision, nothing written.
    state = env.state([user.tenant])
    again = _patch(env, user, name, [" zone==b", "disk!=hdd", "zone==b"])
    assert again["deployment"] is None
    assert env.state([user.tenant]) == state

    # None at all: another revision.
    cleared = _patch(env, user, name, [])
    assert cleared["app"]["constraints"] == []
    assert cleared["deployment"]["kind"] == "constraints"
    assert _row(env, name).generation == after.generation + 1


def test_before_the_first_deploy_they_are_kept_for_it(env: Env) -> None:
    user = env.signup("early")
    name = env.unique("early")
    env.create_app(user.session, name)
    result = _patch(env, user, name, ["zone==a"])
    assert result["deployment"] is None and result["app"]["constraints"] == ["zone==a"]
    assert _row(env, name).generation == 0
    deployed = env.deploy(user.session, name)
    assert deployed["deployment"]["kind"] == "deploy"
    assert env.ok("GET", f"/apps/{name}", user.session)["constraints"] == ["zone==a"]


def test_a_body_without_constraints_changes_nothing(env: Env) -> None:
    user, name = _app_with_release(env, "keep")
    _patch(env, user, name, ["zone==b"])
    state = env.state([user.tenant])
    for body in ({}, {"constraints": None}):
        result = env.ok("PATCH", f"/apps/{name}", user.session, json=body)
        assert result["deployment"] is None
        assert result["app"]["constraints"] == ["zone==b"]
    assert env.state([user.tenant]) == state


BAD_CONSTRAINTS: list[Any] = [
    ["zone=b"],
    ["zone"],
    ["==b"],
    ["zone==b c"],
    ["zone==$(reboot)"],
    ["zone==b;rm -rf /"],
    ["zone==b\n"],
    ["zone==B"],
    ["ingress==maybe"],
    ["node.role==manager"],
    ["node.labels.zone==b"],
    ["berth.managed==true"],
    ["com.docker.x==y"],
    ["Zone==b"],
    ["disk==a@b"],
    ["k==" + "v" * 126],  # 129 characters
    ["zone==a", "zone==b"],
    ["zone==a", "zone!=a"],
    [f"k{i}==v" for i in range(11)],
    ["zone==b", "zone=a"],  # one bad item refuses them all
]


@pytest.mark.parametrize("bad", BAD_CONSTRAINTS)
def test_bad_constraints_are_a_422_and_change_nothing(env: Env, bad: Any) -> None:
    user, name = _app_with_release(env, "refused")
    _patch(env, user, name, ["zone==a"])
    state = env.state([user.tenant])
    resp = env.call("PATCH", f"/apps/{name}", user.session, json={"constraints": bad})
    err = assert_error(resp, 422, "invalid_constraint")
    assert len(err["message"]) < 500
    assert env.state([user.tenant]) == state


@pytest.mark.parametrize(
    "body",
    [
        {"constraints": "zone==b"},
        {"constraints": [1]},
        {"constraints": [None]},
        {"constraints": {"zone": "b"}},
        {"constraint": ["zone==b"]},  # a misspelt field is refused, not ignored
        {"constraints": ["zone==b"], "scale": 3},
    ],
)
def test_malformed_bodies_are_a_422(env: Env, body: dict[str, Any]) -> None:
    user, name = _app_with_release(env, "malformed")
    state = env.state([user.tenant])
    assert_error(env.call("PATCH", f"/apps/{name}", user.session, json=body), 422)
    assert env.state([user.tenant]) == state


def test_another_tenants_app_is_not_found_and_unchanged(env: Env) -> None:
    owner, name = _app_with_release(env, "owner")
    intruder = env.signup("intruder")
    token = env.mint(intruder.session, "deploy")["token"]
    state = env.state([owner.tenant])
    for credential in (intruder.session, token):
        resp = env.call(
            "PATCH", f"/apps/{name}", credential, json={"constraints": ["zone==nowhere"]}
        )
        assert_error(resp, 404, "app_not_found")
        # A bad body is refused as for a missing app of one's own, whatever the name.
        assert_error(
            env.call("PATCH", f"/apps/{name}", credential, json={"constraints": ["x"]}),
            (404, 422),
        )
    assert env.state([owner.tenant]) == state
    assert env.ok("GET", f"/apps/{name}", owner.session)["constraints"] == []


def test_read_only_credentials_change_nothing(env: Env) -> None:
    owner, name = _app_with_release(env, "reader")
    read = env.mint(owner.session, "read")["token"]
    state = env.state([owner.tenant])
    resp = env.call("PATCH", f"/apps/{name}", read, json={"constraints": ["zone==b"]})
    assert_error(resp, 403)
    assert_error(env.call("PATCH", f"/apps/{name}", json={"constraints": ["zone==b"]}), 401)
    assert env.state([owner.tenant]) == state


def test_an_app_being_deleted_takes_no_constraints(env: Env) -> None:
    user, name = _app_with_release(env, "leaving")
    with env.db() as session:
        app = session.scalar(select(App).where(App.name == name))
        assert app is not None
        app.deleting_at = 1.0
        session.commit()
    state = env.state([user.tenant])
    resp = env.call("PATCH", f"/apps/{name}", user.session, json={"constraints": ["zone==b"]})
    assert_error(resp, 409, "app_deleting")
    assert env.state([user.tenant]) == state
