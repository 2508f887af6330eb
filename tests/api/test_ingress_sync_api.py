"""``POST /ingress/sync`` through the real app and store: an ingress node's agent is sent the
node's whole nginx config, rendered from the same routes as every server's own nginx, and
only with the ingress token. What it reports is what `berth nodes list` says of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from berth.ingress import tokens
from berth.services import ingress_nodes
from berth.store.tables import App, Instance, Meta, Release, new_id
from tests.api.conftest import Env, assert_error
from tests.api.test_app_writes import make_app, serve, signup

pytestmark = pytest.mark.store

PATH = "/api/v1/ingress/sync"


@pytest.fixture
def token(env: Env) -> Iterator[str]:
    secret = tokens.new_token()
    with env.db() as session:
        tokens.store_hash(session, tokens.token_sha256(secret))
        session.commit()
    yield secret
    with env.db() as session:
        for row in session.query(Meta).filter(Meta.key.startswith("ingress")):
            session.delete(row)
        session.commit()


def _sync(env: Env, token: str, **body: Any) -> Any:
    payload = {"node": "w1", "etag": "", "live_generation": None, "error": "", **body}
    return env.client().post(PATH, json=payload, headers={"Authorization": f"Bearer {token}"})


def test_the_agent_is_sent_the_whole_config_then_only_what_changed(env: Env, token: str) -> None:
    first = _sync(env, token)
    assert first.status_code == 200, first.text
    answer = first.json()
    conf = answer["conf"]
    assert "listen 0.0.0.0:80 default_server;" in conf
    assert "/var/lib/berth-ingress/nginx.pid" in conf
    assert f'return 200 "{answer["generation"]}";' in conf
    # The same etag back: nothing to send.
    again = _sync(env, token, etag=answer["etag"], live_generation=answer["generation"])
    expected = {
        "etag": answer["etag"], "generation": answer["generation"], "conf": None, "files": None
    }  # fmt: skip
    assert again.json() == expected
    with env.db() as session:
        report = ingress_nodes.reports(session)["w1"]
        generation = ingress_nodes.current_generation(session)
    assert report.live_generation == answer["generation"] == generation
    assert ingress_nodes.describe("running", report, generation, report.at) == (
        f"serving (generation {generation})"
    )


def test_an_app_with_a_healthy_instance_is_routed_on_the_node(env: Env, token: str) -> None:
    user = signup(env, "edge")
    app = make_app(env, user.session, released=True)
    serve(env, app, 1)
    with env.db() as session:
        row = session.scalar(select(App).where(App.name == app))
        assert row is not None
        release = session.scalar(select(Release).where(Release.app_id == row.id))
        assert release is not None
        session.add(
            Instance(
                id=new_id(),
                app_id=row.id,
                tenant_id=row.tenant_id,
                release_id=release.id,
                generation=row.serving_generation,
                container_id=f"c{new_id()}",
                state="running",
                healthy=True,
                address="10.213.0.12",
                host_port=31001,
            )
        )
        session.commit()
    answer = _sync(env, token).json()
    assert f"server_name {app}.{env.settings.base_domain}" in answer["conf"]
    assert "server 10.213.0.12:31001 " in answer["conf"]
    # A route change is a new generation, and a new config for an agent that had the old one.
    with env.db() as session:
        for inst in session.scalars(select(Instance).where(Instance.app_id == row.id)):
            inst.healthy = False
        session.commit()
    after = _sync(env, token, etag=answer["etag"]).json()
    assert after["generation"] == answer["generation"] + 1
    assert after["conf"] is not None and "10.213.0.12:31001" not in after["conf"]


@pytest.mark.parametrize(
    "body",
    [
        {"node": "../etc"},
        {"node": "w1;reload"},
        {"node": "n" * 51},
        {"etag": "ZZ"},
        {"live_generation": -1},
        {"error": "x" * 501},
        {"extra": 1},
    ],
)
def test_bad_reports_are_refused_and_record_nothing(
    env: Env, token: str, body: dict[str, Any]
) -> None:
    resp = _sync(env, token, **body)
    assert resp.status_code == 422, resp.text
    with env.db() as session:
        assert ingress_nodes.reports(session) == {}


def test_only_the_ingress_token_is_let_in(env: Env, token: str) -> None:
    for presented in ("", "bit_wrong", env.admin, token + "x"):
        resp = env.client().post(
            PATH,
            json={"node": "w1"},
            headers={"Authorization": f"Bearer {presented}"} if presented else {},
        )
        assert_error(resp, 401, "unauthorized")
        assert "conf" not in resp.text
    with env.db() as session:
        assert ingress_nodes.reports(session) == {}
