"""Concurrent app deletes against a real server: each answers at once (202), another tenant's
API keeps answering meanwhile, and the instances are then removed and the names freed.

The apps ignore SIGTERM, so each container holds its stop for the whole stop timeout: a delete
that waited for its containers would hold an API worker that long.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.harness import BerthServer, wait_until, write_app

APPS = 10
BERTH_SERVER_OPTIONS = {
    "extra_env": {"BERTH_MAX_CONCURRENT_DELETES_PER_TENANT": str(APPS)},
}
# busybox httpd keeps the ignored SIGTERM across the exec: only the engine's SIGKILL stops it.
DOCKERFILE = """\
FROM berth/busybox:latest
COPY index.html healthz /www/
CMD ["sh", "-c", "trap '' TERM; exec httpd -f -p 8080 -h /www"]
"""


def client(berth: BerthServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{berth.api_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
        trust_env=False,
    )


def signup(berth: BerthServer, email: str) -> str:
    resp = httpx.post(
        f"{berth.api_url}/api/v1/auth/signup",
        json={"email": email, "password": "a long enough password"},
        trust_env=False,
    )
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


class Watcher:
    """Another tenant listing its apps over and over, recording each answer and its time."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=150)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            status = self.api.get("/apps").status_code
            self.answers.append((status, time.monotonic() - started))
            time.sleep(0.05)


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    if not ordered:
        return "n=0"
    return f"n={len(ordered)} median={ordered[len(ordered) // 2]:.3f} max={ordered[-1]:.3f}"


@pytest.fixture(scope="module")
def image(berth: BerthServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The slow-stopping app, built once through Berth (an app of its own, deleted after)."""
    context = write_app(
        tmp_path_factory.mktemp("slowstop"), DOCKERFILE, {"index.html": "hi\n", "healthz": "ok\n"}
    )
    berth.create_app("slowstop-build", "--memory", "32M", "--health-path", "/healthz")
    berth.deploy_dir("slowstop-build", context)
    ref: str = berth.api_json("GET", "/apps/slowstop-build/releases")[0]["image"]
    berth.cli_ok("apps", "delete", "slowstop-build", "--yes")
    return ref


def running_app(berth: BerthServer, name: str, image: str) -> None:
    berth.create_app(name, "--memory", "32M", "--health-path", "/healthz")
    berth.cli_json("deploy", name, "--image", image, "--no-wait")


def test_cli_delete_without_waiting_then_waiting(berth: BerthServer, image: str) -> None:
    app = "cli-del"
    running_app(berth, app, image)
    berth.wait_converged(app, 1, timeout=120)
    first = berth.cli_json("apps", "delete", app, "--yes", "--no-wait")
    assert first == {"deleted": app, "state": "deleting", "instances_stopping": 1}
    assert berth.cli_json("apps", "info", app)["state"] == "deleting"
    refused = berth.cli("scale", app, "2")
    assert refused.returncode != 0 and "being deleted" in refused.stderr
    # Asking again is fine; this time the CLI waits until the app is gone.
    again = berth.cli_json("apps", "delete", app, "--yes")
    assert again == {"deleted": app, "state": "deleted", "instances_stopping": 0}
    assert berth.containers(app) == []
    assert "not found" in berth.cli("apps", "info", app).stderr


def test_concurrent_deletes_answer_at_once_and_free_the_names(
    berth: BerthServer, image: str
) -> None:
    names = [f"del{i}" for i in range(APPS)]
    owner = client(berth, berth.token or "")
    for name in names:
        running_app(berth, name, image)
    for name in names:
        berth.wait_converged(name, 1, timeout=120)

    neighbour = client(berth, signup(berth, "neighbour@example.com"))
    assert neighbour.post("/apps", json={"name": "neighbour-app"}).status_code == 201

    def delete(name: str) -> tuple[int, dict[str, object], float]:
        with client(berth, berth.token or "") as api:
            started = time.monotonic()
            resp = api.delete(f"/apps/{name}")
            return resp.status_code, resp.json(), time.monotonic() - started

    with Watcher(neighbour) as watcher:
        with ThreadPoolExecutor(max_workers=APPS) as pool:
            deletes = list(pool.map(delete, names))
        wait_until(lambda: berth.containers() == [], 90, "every instance is removed")
        wait_until(
            lambda: all(owner.get(f"/apps/{n}").status_code == 404 for n in names),
            30,
            "every deleted app is gone",
        )

    # Recorded for whoever reads the run (pytest -s); only statuses are asserted, never times.
    print("DELETE /apps/{name} (s):", summary([t for _, _, t in deletes]))
    print("neighbour's GET /apps meanwhile (s):", summary([t for _, t in watcher.answers]))
    for status, body, _ in deletes:
        assert status == 202, body
        assert body["state"] == "deleting" and body["instances_stopping"] == 1, body
    assert watcher.answers and all(status == 200 for status, _ in watcher.answers)
    # The names are free again (for another tenant too), and nothing of the old apps is left.
    for name in names[:3]:
        assert neighbour.post("/apps", json={"name": name}).status_code == 201
    listed = {a["name"] for a in owner.get("/apps").json()}
    assert not listed & set(names)
    owner.close()
    neighbour.close()
