"""Builds through a real server, with two tenants: limits, the queue, images across tenants,
and the sweep of what a killed server left behind.

The server runs with small build limits (64 processes, 128 MiB, one build per tenant at a
time) so the attacks stay bounded.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from berth.builds.context import pack_directory
from berth.builds.image_config import LABEL_BUILD_STEP
from tests.harness import BUSYBOX_APP, BerthServer, docker_client, wait_until, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx]

BERTH_SERVER_OPTIONS = {
    "extra_env": {
        "BERTH_BUILD_PIDS_LIMIT": "64",
        "BERTH_BUILD_MEMORY_MB": "128",
        "BERTH_MAX_CONCURRENT_BUILDS_PER_TENANT": "1",
        "BERTH_MAX_QUEUED_BUILDS_PER_TENANT": "1",
        # Every tenant here signs up from 127.0.0.1: more than the default 5 an hour.
        "BERTH_SIGNUP_LIMIT_PER_ADDRESS": "1000",
    }
}


def signup(berth: BerthServer) -> httpx.Client:
    resp = httpx.post(
        f"{berth.api_url}/api/v1/auth/signup",
        json={
            "email": f"{uuid.uuid4().hex[:10]}@example.com",
            "password": "a long enough password",
        },
        trust_env=False,
    )
    assert resp.status_code == 201, resp.text
    return httpx.Client(
        base_url=f"{berth.api_url}/api/v1",
        headers={"Authorization": f"Bearer {resp.json()['token']}"},
        timeout=240,
        trust_env=False,
    )


class BackgroundBuild:
    """A build streamed in a thread: ``seen`` is set once a line or status holds ``marker``."""

    def __init__(self, api: httpx.Client, app: str, directory: Path, marker: str) -> None:
        self.api, self.app, self.directory, self.marker = api, app, directory, marker
        self.seen = threading.Event()
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackgroundBuild:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(120)

    def _run(self) -> None:
        with self.api.stream(
            "POST",
            f"/apps/{self.app}/builds",
            content=pack_directory(self.directory),
            headers={"Content-Type": "application/gzip"},
        ) as resp:
            for line in resp.iter_lines():
                if line.strip():
                    self.events.append(json.loads(line))
                    last = self.events[-1]
                    if self.marker in (last.get("line") or last.get("message") or ""):
                        self.seen.set()


def build(api: httpx.Client, app: str, directory: Path) -> list[dict[str, Any]]:
    """POST a build and read its whole NDJSON stream."""
    with api.stream(
        "POST",
        f"/apps/{app}/builds",
        content=pack_directory(directory),
        headers={"Content-Type": "application/gzip"},
    ) as resp:
        assert resp.status_code == 200, resp.read()
        return [json.loads(line) for line in resp.iter_lines() if line.strip()]


def final(events: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [e for e in events if e["type"] in ("release", "error")]
    assert len(finals) == 1 and finals[0] is events[-1], events[-5:]
    return finals[0]


def log_of(events: list[dict[str, Any]]) -> str:
    return "\n".join(e["line"] for e in events if e["type"] == "log")


@pytest.fixture(scope="module")
def tenant_b(berth: BerthServer) -> dict[str, Any]:
    """Tenant B with a serving busybox app; its built image tag."""
    api = signup(berth)
    app = f"bee-{uuid.uuid4().hex[:6]}"
    assert api.post("/apps", json={"name": app, "health_path": "/healthz"}).status_code == 201
    release = final(build(api, app, BUSYBOX_APP))
    assert release["type"] == "release", release
    wait_until(lambda: berth.app_body(app) is not None, 60, f"{app} serves")
    return {"api": api, "app": app, "image": release["image"]}


def test_fork_bomb_build_fails_on_the_pids_limit_and_neighbours_keep_serving(
    berth: BerthServer, tenant_b: dict[str, Any], tmp_path: Path
) -> None:
    a = signup(berth)
    assert a.post("/apps", json={"name": "bomb"}).status_code == 201
    context = write_app(
        tmp_path / "bomb",
        "FROM berth/busybox\nRUN i=0; while [ $i -lt 300 ]; do sleep 20 & i=$((i+1)); done; wait\n",
    )
    with berth.client_loop(tenant_b["app"], max_seconds=120) as loop:
        events = build(a, "bomb", context)
        loop.wait_for_requests(5)
    result = final(events)
    assert result["type"] == "error"
    assert "hit the process limit of 64" in result["error"]["message"]
    assert loop.result.ok > 0 and not loop.result.failures, loop.result.failures[:3]
    assert berth.app_body(tenant_b["app"]) is not None


def test_memory_bomb_build_is_oom_killed_and_neighbours_keep_serving(
    berth: BerthServer, tenant_b: dict[str, Any], tmp_path: Path
) -> None:
    # Doubling a string towards 512 MiB under the server's 128 MiB build memory (no swap).
    a = signup(berth)
    assert a.post("/apps", json={"name": "membomb"}).status_code == 201
    context = write_app(
        tmp_path / "membomb",
        "FROM berth/busybox\n"
        "RUN awk 'BEGIN { s = \"x\"; while (length(s) < 536870912) s = s s; print length(s) }'\n",
    )
    with berth.client_loop(tenant_b["app"], max_seconds=120) as loop:
        events = build(a, "membomb", context)
        loop.wait_for_requests(5)
    result = final(events)
    assert result["type"] == "error"
    assert "more than 128 MiB of memory (the build memory limit)" in result["error"]["message"]
    assert loop.result.ok > 0 and not loop.result.failures, loop.result.failures[:3]
    assert a.get("/apps/membomb/releases").json() == []


def test_deploying_another_tenants_image_looks_like_a_missing_one(
    berth: BerthServer, tenant_b: dict[str, Any]
) -> None:
    a = signup(berth)
    assert a.post("/apps", json={"name": "thief"}).status_code == 201
    theirs = a.post("/apps/thief/releases", json={"image": tenant_b["image"]})
    missing_tag = tenant_b["image"].rsplit(":", 1)[0] + ":0000000000000000"
    missing = a.post("/apps/thief/releases", json={"image": missing_tag})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "image_not_found"
    assert theirs.json()["error"]["message"].replace(tenant_b["image"], "X") == (
        missing.json()["error"]["message"].replace(missing_tag, "X")
    )
    assert a.get("/apps/thief/releases").json() == []
    refused = a.post("/apps/thief/releases", json={"image": "ubuntu:22.04"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "image_not_allowed"
    assert "berth-app/<app>" in refused.json()["error"]["message"]
    # The owner may deploy it by name.
    own = tenant_b["api"].post(
        f"/apps/{tenant_b['app']}/releases", json={"image": tenant_b["image"]}
    )
    assert own.status_code == 201, own.text


def test_a_second_build_of_a_tenant_waits_in_line(berth: BerthServer, tmp_path: Path) -> None:
    api = signup(berth)
    assert api.post("/apps", json={"name": "slow"}).status_code == 201
    assert api.post("/apps", json={"name": "next"}).status_code == 201
    slow = write_app(tmp_path / "slow", "FROM berth/busybox\nRUN echo slow-started; sleep 8\n")
    quick = write_app(tmp_path / "quick", f"FROM berth/busybox\nRUN echo {uuid.uuid4().hex}\n")
    with BackgroundBuild(api, "slow", slow, "slow-started") as first:
        assert first.seen.wait(60), "the first build never started"
        # One more may wait; the one after that is refused before its upload is read.
        second = build(api, "next", quick)
    statuses = [e["message"] for e in second if e["type"] == "status"]
    assert statuses[0] == "queued: position 1 (1 build of yours running)", statuses
    assert final(second)["type"] == "release"
    assert final(first.events)["type"] == "release"


def test_too_many_waiting_builds_get_429(berth: BerthServer, tmp_path: Path) -> None:
    api = signup(berth)
    for app in ("w1", "w2", "w3"):
        assert api.post("/apps", json={"name": app}).status_code == 201
    slow = write_app(tmp_path / "slow", "FROM berth/busybox\nRUN echo w-started; sleep 8\n")
    waiting = write_app(tmp_path / "wait", f"FROM berth/busybox\nRUN echo {uuid.uuid4().hex}\n")
    with BackgroundBuild(api, "w1", slow, "w-started") as first:
        assert first.seen.wait(60)
        with BackgroundBuild(api, "w2", waiting, "queued: position 1") as second:
            assert second.seen.wait(60)
            third = api.post(
                "/apps/w3/builds",
                content=pack_directory(waiting),
                headers={"Content-Type": "application/gzip"},
            )
            assert third.status_code == 429, third.text
            assert third.json()["error"]["code"] == "too_many_requests"
    assert final(first.events)["type"] == "release"
    assert final(second.events)["type"] == "release"


def test_leftovers_of_a_killed_server_are_swept_at_start(fresh_berth: BerthServer) -> None:
    assert fresh_berth.installation is not None
    leftover_dir = fresh_berth.home / "builds" / "build-leftover" / "context"
    leftover_dir.mkdir(parents=True)
    (leftover_dir / "Dockerfile").write_text("FROM berth/busybox\n")
    with contextlib.closing(docker_client()) as client:
        container = client.api.create_container(
            "berth/busybox:latest",
            command=["true"],
            name=f"berth-test-leftover-{uuid.uuid4().hex[:8]}",
            labels={
                "berth.managed": "true",
                "berth.installation": fresh_berth.installation,
                LABEL_BUILD_STEP: fresh_berth.installation,
            },
        )
        try:
            fresh_berth.stop()
            fresh_berth.start()
            with pytest.raises(docker.errors.NotFound):
                client.api.inspect_container(container["Id"])
        finally:
            try:
                client.api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass
    assert list((fresh_berth.home / "builds").iterdir()) == []


def test_cli_deploy_shows_the_queue_position(berth: BerthServer, tmp_path: Path) -> None:
    berth.create_app("cli-slow")
    berth.create_app("cli-next")
    slow = write_app(tmp_path / "slow", "FROM berth/busybox\nRUN echo cli-slow-started; sleep 8\n")
    quick = write_app(
        tmp_path / "quick",
        f"FROM berth/busybox\nRUN echo {uuid.uuid4().hex}\nCOPY index.html /www/\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n',
        {"index.html": "hi\n"},
    )
    with BackgroundBuild(berth.api, "cli-slow", slow, "cli-slow-started") as first:
        assert first.seen.wait(60)
        result = berth.cli("deploy", "cli-next", str(quick), "--no-wait")
    assert result.returncode == 0, result.stderr
    assert "queued: position 1 (1 build of yours running)" in result.stderr


def test_a_server_killed_mid_build_leaves_nothing_after_restart(
    fresh_berth: BerthServer, tmp_path: Path
) -> None:
    import signal

    fresh_berth.create_app("killed")
    context = write_app(tmp_path / "slow", "FROM berth/busybox\nRUN echo kill-me-now; sleep 60\n")
    running = threading.Event()

    def run_build() -> None:
        with contextlib.suppress(httpx.HTTPError):
            with fresh_berth.api.stream(
                "POST",
                "/apps/killed/builds",
                content=pack_directory(context),
                headers={"Content-Type": "application/gzip"},
            ) as resp:
                for line in resp.iter_lines():
                    if line.strip() and json.loads(line).get("line") == "kill-me-now":
                        running.set()  # printed by the step: its container runs

    thread = threading.Thread(target=run_build, daemon=True)
    thread.start()
    assert running.wait(60), fresh_berth.log_tail()
    fresh_berth.stop(signal.SIGKILL)
    thread.join(30)
    label = f"{LABEL_BUILD_STEP}={fresh_berth.installation}"
    with contextlib.closing(docker_client()) as client:
        assert client.api.containers(all=True, filters={"label": [label]}), "no build container"
        assert list((fresh_berth.home / "builds").iterdir())
        fresh_berth.start()
        assert client.api.containers(all=True, filters={"label": [label]}) == []
    assert list((fresh_berth.home / "builds").iterdir()) == []


def test_the_layer_cache_is_never_shared_between_tenants(
    berth: BerthServer, tmp_path: Path
) -> None:
    # The attack: B's RUN makes a secret; A builds the same Dockerfile hoping for B's layer.
    dockerfile = (
        "FROM berth/busybox\n"
        "RUN head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /secret\n"
        "RUN echo secret=$(cat /secret)\n"
    )
    secrets: dict[str, str] = {}
    logs: dict[str, str] = {}
    for who in ("b", "a"):
        api = signup(berth)
        app = f"cache-{who}-{uuid.uuid4().hex[:6]}"
        assert api.post("/apps", json={"name": app}).status_code == 201
        events = build(api, app, write_app(tmp_path / who, dockerfile))
        assert final(events)["type"] == "release", final(events)
        logs[who] = log_of(events)
        secrets[who] = next(
            line.removeprefix("secret=")
            for line in logs[who].splitlines()
            if line.startswith("secret=")
        )
        if who == "b":
            again = log_of(build(api, app, write_app(tmp_path / "b-again", dockerfile)))
            assert "Using cache" in again  # the owner's own cache works
    assert "Using cache" not in logs["a"]
    assert secrets["a"] != secrets["b"] and len(secrets["b"]) == 24
