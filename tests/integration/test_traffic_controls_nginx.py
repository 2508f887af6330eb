"""Per-app traffic controls through the real nginx: each control does what it says (redirects
with their code and Location, basic auth, the maintenance page, allow/deny by client address,
a rate limit per client address), and controls the renderer refuses leave the live config
serving.

Every test has its own conf dir and loopback port; the finalizer stops that nginx even when
the test failed. Client addresses 127.0.0.1 and 127.0.0.2 are both loopback.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from berth.domain import traffic as t
from berth.errors import ProxyConfigError
from berth.proxy.model import Route, Upstream
from berth.proxy.nginx import NginxManager
from berth.proxy.render import AUTH_DIR
from tests.integration.test_nginx_real import NGINX, free_port

pytestmark = [pytest.mark.nginx]

APEX = "shop.example.test"
WWW = "www.shop.example.test"


class Backend:
    """Answers 200 "from-app" with the path it was asked for."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = f"from-app {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    started = Backend()
    yield started
    started.stop()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def manager(port: int) -> Iterator[NginxManager]:
    # nginx's workers (nobody, when the tests run as root) open the users file on every
    # request, so every directory above it must be traversable, as /var/lib/berth is; pytest's
    # tmp_path is not (0700).
    parent = Path(tempfile.mkdtemp(prefix="berth-traffic-"))
    parent.chmod(0o711)
    directory = parent / "nginx"
    made = NginxManager(directory, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    try:
        yield made
    finally:
        NginxManager(directory, nginx_binary=NGINX, listen_host="127.0.0.1").stop()
        running = (directory / "nginx.pid").exists()
        shutil.rmtree(parent, ignore_errors=True)
        if running:
            pytest.fail("nginx still running after the test")


@pytest.fixture
def clients() -> Iterator[Callable[[str], httpx.Client]]:
    """A client per source address (127.0.0.1, 127.0.0.2, ...)."""
    made: dict[str, httpx.Client] = {}

    def client(source: str = "127.0.0.1") -> httpx.Client:
        if source not in made:
            transport = httpx.HTTPTransport(local_address=source)
            made[source] = httpx.Client(transport=transport, timeout=5.0, trust_env=False)
        return made[source]

    yield client
    for c in made.values():
        c.close()


def route(backend: Backend, controls: t.TrafficControls | None) -> Route:
    validated = None if controls is None else t.validate(controls, (APEX, WWW))
    return Route("a1", "shop", "t1", (APEX, WWW), (backend.upstream(),), "serving", validated)


def serve(manager: NginxManager, *routes: Route, generation: int = 1) -> None:
    manager.apply(manager.config(routes, generation))
    assert manager.wait_for_generation(generation, timeout=5)


def get(
    client: httpx.Client, port: int, host: str, path: str = "/", **kwargs: object
) -> httpx.Response:
    return client.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, **kwargs)  # type: ignore[arg-type]


def test_redirects_answer_their_code_with_the_location_on_the_target(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    controls = t.TrafficControls(redirects=(t.Redirect(WWW, APEX, 301),))
    serve(manager, route(backend, controls))
    moved = get(clients("127.0.0.1"), port, WWW, "/cart?item=3")
    assert moved.status_code == 301
    assert moved.headers["location"] == f"http://{APEX}/cart?item=3"
    apex = get(clients("127.0.0.1"), port, APEX, "/cart")
    assert apex.status_code == 200 and apex.text == "from-app /cart"

    serve(
        manager,
        route(backend, t.TrafficControls(redirects=(t.Redirect(APEX, WWW, 308),))),
        generation=2,
    )
    permanent = get(clients("127.0.0.1"), port, APEX, "/x")
    assert permanent.status_code == 308
    assert permanent.headers["location"] == f"http://{WWW}/x"
    assert get(clients("127.0.0.1"), port, WWW, "/x").text == "from-app /x"


def test_basic_auth_refuses_without_and_lets_in_with_the_password(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    users = (t.user_with_password("alice", "correct horse"), t.user_with_password("bob", "b:2"))
    serve(manager, route(backend, t.TrafficControls(basic_auth=users)))
    client = clients("127.0.0.1")

    anonymous = get(client, port, APEX)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="Restricted"'
    assert get(client, port, APEX, auth=("alice", "wrong")).status_code == 401
    assert get(client, port, APEX, auth=("carol", "correct horse")).status_code == 401
    ok = get(client, port, APEX, auth=("alice", "correct horse"))
    assert ok.status_code == 200 and ok.text == "from-app /"
    assert get(client, port, APEX, auth=("bob", "b:2")).status_code == 200  # ':' in a password

    # The users file is readable by nginx's workers only, and named by its content.
    files = list((manager.conf_dir / AUTH_DIR).iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o640
    assert "correct horse" not in files[0].read_text()

    # New users: a new file, the old one removed once the new config is live.
    serve(manager, route(backend, t.TrafficControls(basic_auth=users[1:])), generation=2)
    assert get(client, port, APEX, auth=("alice", "correct horse")).status_code == 401
    assert get(client, port, APEX, auth=("bob", "b:2")).status_code == 200
    (left,) = (manager.conf_dir / AUTH_DIR).iterdir()
    assert left.name != files[0].name

    serve(manager, route(backend, None), generation=3)
    assert get(client, port, APEX).status_code == 200
    assert list((manager.conf_dir / AUTH_DIR).iterdir()) == []


def test_maintenance_answers_503_with_the_escaped_message(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    message = 'Back at 5pm <script>alert(1)</script> "$host" \\ café'
    controls = t.TrafficControls(maintenance=True, maintenance_message=message)
    serve(manager, route(backend, controls))
    page = get(clients("127.0.0.1"), port, APEX, "/any")
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "shop is down for maintenance" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    # Neither expanded by nginx nor able to end its string.
    assert "&quot;&#36;host&quot; &#92; caf&#233;" in page.text
    assert "from-app" not in page.text

    serve(manager, route(backend, replace(controls, maintenance=False)), generation=2)
    assert get(clients("127.0.0.1"), port, APEX).text == "from-app /"


def test_a_denied_address_gets_403_and_an_allowed_one_the_app(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    serve(manager, route(backend, t.TrafficControls(allow=("127.0.0.1/32",))))
    assert get(clients("127.0.0.1"), port, APEX).status_code == 200
    assert get(clients("127.0.0.2"), port, APEX).status_code == 403

    # deny is checked before allow: a denied address inside an allowed network stays out.
    both = t.TrafficControls(allow=("127.0.0.0/8",), deny=("127.0.0.2/32",))
    serve(manager, route(backend, both), generation=2)
    assert get(clients("127.0.0.1"), port, APEX).status_code == 200
    assert get(clients("127.0.0.2"), port, APEX).status_code == 403
    assert get(clients("127.0.0.3"), port, APEX).status_code == 200

    serve(manager, route(backend, t.TrafficControls(deny=("127.0.0.1",))), generation=3)
    assert get(clients("127.0.0.1"), port, APEX).status_code == 403
    assert get(clients("127.0.0.2"), port, APEX).status_code == 200


def test_the_rate_limit_lets_rate_and_burst_through_then_answers_429(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    rate, burst = 1, 4
    serve(manager, route(backend, t.TrafficControls(rate_limit=t.RateLimit(rate, burst))))
    client = clients("127.0.0.1")
    statuses: list[int] = []
    started = time.monotonic()
    while len(statuses) < 50 and 429 not in statuses:
        statuses.append(get(client, port, APEX).status_code)
    elapsed = time.monotonic() - started
    passed = statuses[:-1]
    assert statuses[-1] == 429
    assert set(passed) == {200}
    # 1 + burst at once; the bucket drains `rate` a second, so a slow run passes a few more.
    assert burst + 1 <= len(passed) <= burst + 1 + math.ceil(elapsed * rate)

    # Per client address: another address has its own bucket.
    assert get(clients("127.0.0.2"), port, APEX).status_code == 200


def test_controls_the_renderer_refuses_leave_the_live_config_serving(
    manager: NginxManager, backend: Backend, clients: Callable[[str], httpx.Client], port: int
) -> None:
    good = t.TrafficControls(basic_auth=(t.user_with_password("alice", "pw"),))
    serve(manager, route(backend, good))
    live = manager.conf_path.read_text()
    # Values that never passed validation (as if a row were edited by hand).
    bad = [
        replace(good, allow=("10.0.0.0/33",)),
        replace(good, allow=("10.0.0.0/8; return 200 x",)),
        replace(
            good, basic_auth=(t.BasicAuthUser("eve\nmallory", good.basic_auth[0].password_hash),)
        ),
        replace(good, basic_auth=(t.BasicAuthUser("eve", "plain"),)),
        replace(good, rate_limit=t.RateLimit(0, 1)),
        replace(good, rate_limit=t.RateLimit(10**9, 0)),
        replace(good, redirects=(t.Redirect(APEX, WWW), t.Redirect(WWW, APEX))),
        replace(good, redirects=(t.Redirect(APEX, "elsewhere.example.test"),)),
        replace(good, maintenance=True, maintenance_message="a\nb"),
    ]
    for controls in bad:
        wrong = Route("a1", "shop", "t1", (APEX, WWW), (backend.upstream(),), "serving", controls)
        with pytest.raises(ProxyConfigError):
            manager.apply(manager.config((wrong,), 2))
        assert manager.conf_path.read_text() == live
    client = clients("127.0.0.1")
    assert get(client, port, APEX).status_code == 401
    assert get(client, port, APEX, auth=("alice", "pw")).status_code == 200
    assert os.listdir(manager.conf_dir / AUTH_DIR)  # the live users file is still there
