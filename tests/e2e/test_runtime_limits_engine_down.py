"""With the container engine down, the API answers 503 with a clear message, never 500, and
changes nothing. In process, with the real Docker driver pointed at a socket that does not exist
(a real way for an engine to be unreachable) and a real store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from berth.api.app import create_app
from berth.platform import Platform, open_store
from berth.runtime.docker_driver import DockerRuntime
from berth.services.bootstrap import ensure_admin
from berth.settings import Settings
from berth.store.tables import Release

API = "/api/v1"


@pytest.fixture
def down(tmp_path: Path) -> Iterator[tuple[TestClient, Platform]]:
    settings = Settings(home=tmp_path, database_url="", base_domain="berth.localhost")
    engine, sessions, installation = open_store(settings)
    with sessions() as session:
        ensure_admin(session, settings.home / "admin-token", settings.currency)
    missing = f"unix://{tmp_path}/no-engine-{uuid.uuid4().hex[:8]}.sock"
    runtime = DockerRuntime(installation, docker_url=missing)
    platform = Platform(settings, engine, sessions, installation, runtime=runtime)
    token = (settings.home / "admin-token").read_text().strip()
    client = TestClient(
        create_app(platform),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        yield client, platform
    finally:
        client.close()
        engine.dispose()


def _assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "engine_unavailable"
    assert "container engine cannot be reached" in error["message"]
    assert resp.headers["Retry-After"] == "5"


def test_logs_and_deploys_answer_503_while_the_engine_is_down(
    down: tuple[TestClient, Platform],
) -> None:
    client, platform = down
    assert client.post(f"{API}/apps", json={"name": "web"}).status_code == 201

    _assert_unavailable(client.get(f"{API}/apps/web/logs"))
    _assert_unavailable(client.get(f"{API}/apps/web/logs", params={"follow": "true"}))
    _assert_unavailable(
        client.post(f"{API}/apps/web/releases", json={"image": "berth/busybox:latest"})
    )

    with platform.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Release)) == 0  # nothing changed
    assert client.get(f"{API}/apps/web").status_code == 200  # the rest of the API still works
