"""Writes to one app never race: parallel writes each land whole or answer 409, never a 500.

Run on SQLite and, under ``make test-postgres``, on PostgreSQL (the ``store`` marker). The
parallel requests come from threads, each through its own client, against the real app and
store; ``Env.call`` fails the test on any 5xx.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from berth.api.errors import is_write_conflict
from berth.store.tables import App, Instance, Release, new_id
from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store

PARALLEL = 12


def in_parallel(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``call(i)`` for i in 0..n-1, all at once, each from its own thread and client."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def conflicts_are_clear(responses: list[httpx.Response]) -> None:
    for resp in responses:
        if resp.status_code == 409:
            err = assert_error(resp, 409, "conflict")
            assert "retry" in err["message"]


def signup(env: Env, prefix: str) -> Account:
    """A new user from an address of its own (sign-ups are limited per address)."""
    n = int(env.unique("ip").rsplit("-", 1)[1])
    return env.signup(prefix, ip=f"10.200.{n // 250}.{n % 250 + 1}")


def make_app(env: Env, token: str, *, released: bool) -> str:
    name = env.unique("w")
    env.create_app(token, name)
    if released:
        env.deploy(token, name)
    return name


@pytest.mark.parametrize("released", [False, True], ids=["no-release", "with-release"])
def test_parallel_config_sets_keep_every_key_that_was_answered_200(
    env: Env, released: bool
) -> None:
    user = signup(env, "cfg")
    app = make_app(env, user.session, released=released)

    def set_key(i: int) -> httpx.Response:
        body = {"set": {f"KEY_{i}": f"value-{i}"}}
        return env.call("PATCH", f"/apps/{app}/config", user.session, json=body, ip=f"10.1.0.{i}")

    answers = in_parallel(PARALLEL, set_key)
    assert set(statuses(answers)) <= {200, 409}, [r.text for r in answers]
    conflicts_are_clear(answers)
    kept = [i for i, r in enumerate(answers) if r.status_code == 200]
    assert kept, "at least one set went through"
    config = env.ok("GET", f"/apps/{app}/config", user.session)["config"]
    for i in kept:
        assert config[f"KEY_{i}"] == f"value-{i}", config
    if released:
        # One release per accepted change, each with the config as it was after that change.
        releases = env.ok("GET", f"/apps/{app}/releases", user.session)
        assert len(releases) == 1 + len(kept)
        assert sorted(releases[0]["config_keys"]) == sorted(config)


def test_parallel_deploys_get_unique_contiguous_versions(env: Env) -> None:
    user = signup(env, "dep")
    app = make_app(env, user.session, released=False)
    images = [f"registry.example/{app}:p{i}" for i in range(PARALLEL)]
    for image in images:
        env.runtime.add_image(image)

    def deploy(i: int) -> httpx.Response:
        body = {"image": images[i]}
        return env.call("POST", f"/apps/{app}/releases", user.session, json=body, ip=f"10.2.0.{i}")

    answers = in_parallel(PARALLEL, deploy)
    assert set(statuses(answers)) <= {201, 409}, [r.text for r in answers]
    conflicts_are_clear(answers)
    answered = [r.json()["release"]["version"] for r in answers if r.status_code == 201]
    assert answered and len(answered) == len(set(answered))
    versions = sorted(r["version"] for r in env.ok("GET", f"/apps/{app}/releases", user.session))
    assert versions == sorted(answered) == list(range(1, len(answered) + 1))
    # The app targets the newest release, which is one of those answered.
    assert env.ok("GET", f"/apps/{app}", user.session)["target_release"] == max(versions)


def test_parallel_writes_of_different_kinds_never_fail_with_a_500(env: Env) -> None:
    user = signup(env, "mix")
    app = make_app(env, user.session, released=True)
    image = f"registry.example/{app}:v2"
    env.runtime.add_image(image)
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", f"/apps/{app}/scale", {"replicas": 2}),
        ("PATCH", f"/apps/{app}/config", {"set": {"A": "1"}}),
        ("POST", f"/apps/{app}/releases", {"image": image}),
        ("POST", f"/apps/{app}/restart", None),
        ("PATCH", f"/apps/{app}/config", {"set": {"B": "2"}}),
        ("POST", f"/apps/{app}/domains", {"hostname": f"{app}.example.com"}),
    ]

    def write(i: int) -> httpx.Response:
        method, path, body = requests[i % len(requests)]
        return env.call(method, path, user.session, json=body, ip=f"10.3.0.{i}")

    answers = in_parallel(PARALLEL, write)
    assert all(r.status_code in (200, 201, 409) for r in answers), [r.text for r in answers]
    versions = [r["version"] for r in env.ok("GET", f"/apps/{app}/releases", user.session)]
    assert len(versions) == len(set(versions))


# -- config size ---------------------------------------------------------------------------


def test_total_config_size_is_capped_before_anything_is_written(env: Env) -> None:
    user = signup(env, "big")
    app = make_app(env, user.session, released=True)
    before = env.app_state(user.session)
    value = "x" * 30_000  # each value is within the per-value cap; three are not, together
    body = {"set": {"BIG_A": value, "BIG_B": value, "BIG_C": value}}
    err = assert_error(
        env.call("PATCH", f"/apps/{app}/config", user.session, json=body), 422, "config_too_large"
    )
    assert str(env.settings.max_config_bytes) in err["message"]
    assert env.app_state(user.session) == before
    # Growing it one key at a time stops at the same limit.
    env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"BIG_A": value}})
    env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"BIG_B": value}})
    grown = env.app_state(user.session)
    resp = env.call("PATCH", f"/apps/{app}/config", user.session, json={"set": {"BIG_C": value}})
    assert_error(resp, 422, "config_too_large")
    assert env.app_state(user.session) == grown


def test_config_cap_follows_the_setting(env: Env) -> None:
    user = signup(env, "small")
    app = make_app(env, user.session, released=False)
    with env.settings_override(max_config_bytes=1024):
        resp = env.call(
            "PATCH", f"/apps/{app}/config", user.session, json={"set": {"K": "v" * 1100}}
        )
        err = assert_error(resp, 422, "config_too_large")
        assert "1024" in err["message"]
        env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"K": "v" * 900}})


# -- release history -----------------------------------------------------------------------


def release_ids(env: Env, app: str) -> dict[int, str]:
    with env.db() as session:
        app_id = session.scalar(select(App.id).where(App.name == app))
        rows = session.execute(select(Release.version, Release.id).where(Release.app_id == app_id))
        return {int(version): rid for version, rid in rows}


def serve(env: Env, app: str, version: int) -> None:
    """What the reconciler records when a rollout of ``version`` passes (no loops run here)."""
    with env.db() as session:
        row = session.scalar(select(App).where(App.name == app))
        assert row is not None
        row.serving_release_id = release_ids(env, app)[version]
        session.commit()


def run_instance(env: Env, app: str, version: int) -> None:
    """An instance row as the reconciler writes it for a running container of ``version``."""
    with env.db() as session:
        row = session.scalar(select(App).where(App.name == app))
        assert row is not None
        session.add(
            Instance(
                id=new_id(),
                app_id=row.id,
                tenant_id=row.tenant_id,
                release_id=release_ids(env, app)[version],
                container_id=f"c{new_id()}",
                state="running",
            )
        )
        session.commit()


def test_release_history_is_bounded_and_keeps_what_is_in_use(env: Env) -> None:
    user = signup(env, "hist")
    app = make_app(env, user.session, released=True)  # v1
    serve(env, app, 1)
    env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"N": "2"}})  # v2
    run_instance(env, app, 2)  # an old instance still runs v2
    with env.settings_override(release_history=5):
        for n in range(3, 16):  # v3 .. v15
            env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"N": str(n)}})
        releases = env.ok("GET", f"/apps/{app}/releases", user.session)
        versions = sorted(r["version"] for r in releases)
        # The newest five, the serving release and the one an instance runs.
        assert versions == [1, 2, 11, 12, 13, 14, 15]
        info = env.ok("GET", f"/apps/{app}", user.session)
        assert info["serving_release"] == 1 and info["target_release"] == 15
        # A pruned version is a clear 404; a kept one rolls back (into a new release).
        err = assert_error(
            env.call("POST", f"/apps/{app}/rollback", user.session, json={"version": 5}),
            404,
            "release_not_found",
        )
        assert "v5" in err["message"] and "newest 5" in err["message"]
        rolled = env.ok(
            "POST", f"/apps/{app}/rollback", user.session, json={"version": 12}, status=201
        )
        assert rolled["release"]["version"] == 16
    config = env.ok("GET", f"/apps/{app}/config", user.session)["config"]
    assert config == {"N": "12"}


def test_release_history_bounds_the_store_it_uses(env: Env) -> None:
    user = signup(env, "store")
    app = make_app(env, user.session, released=True)
    with env.settings_override(release_history=3):
        env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"BIG": "y" * 30_000}})
        for n in range(10):
            env.ok("PATCH", f"/apps/{app}/config", user.session, json={"set": {"N": str(n)}})
    with env.db() as session:
        app_id = session.scalar(select(App.id).where(App.name == app))
        stored = list(session.scalars(select(Release.config_json).where(Release.app_id == app_id)))
    assert len(stored) == 3
    assert all(json.loads(c)["BIG"] == "y" * 30_000 for c in stored)


# -- what counts as a lost race ------------------------------------------------------------


@pytest.mark.parametrize(
    ("orig", "conflict"),
    [
        (
            sqlite3.IntegrityError("UNIQUE constraint failed: releases.app_id, releases.version"),
            True,
        ),
        (sqlite3.OperationalError("database is locked"), True),
        (psycopg.errors.UniqueViolation("duplicate key value"), True),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (sqlite3.IntegrityError("NOT NULL constraint failed: apps.name"), False),
        (psycopg.errors.ForeignKeyViolation("violates foreign key constraint"), False),
        (sqlite3.OperationalError("no such table: apps"), False),
        (psycopg.errors.AdminShutdown("terminating connection"), False),
    ],
)
def test_only_lost_races_are_conflicts(orig: Exception, conflict: bool) -> None:
    kind = (
        IntegrityError
        if isinstance(orig, sqlite3.IntegrityError | psycopg.IntegrityError)
        else OperationalError
    )
    assert is_write_conflict(kind("UPDATE apps ...", {}, orig)) is conflict
