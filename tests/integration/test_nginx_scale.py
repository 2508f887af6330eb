"""The ingress at 10,000 domains, and the upstream settings that make a dying instance cost no
request, against the real nginx on a random loopback port.

The big config's upstreams are 10.x addresses nothing listens on (nginx does not connect to an
upstream until a request needs it, and no test requests their domains: traffic stays on
loopback); the domains a test requests go to tiny loopback HTTP servers of the test. Every
test stops the nginx of its conf dir, even when it failed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from berth.proxy.model import Route, Upstream
from berth.proxy.nginx import NginxManager

NGINX = "/usr/sbin/nginx"
APPS = 5_000  # two hostnames each: 10,000 domains
pytestmark = [pytest.mark.nginx]

# 253 characters, the longest a domain can be: the server name hash must hold it at scale too.
LONGEST = ".".join(["l" * 63] * 3) + "." + "z" * 61


@pytest.fixture(autouse=True, scope="module")
def _nginx_is_installed() -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx is not installed at {NGINX}; run `make test`", pytrace=False)


class Backend:
    """A loopback HTTP/1.1 server (keepalive capable) answering ``status`` with its name. It
    counts the requests it received and the client connections they came on."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name, self.status = name, status
        self.requests = 0
        self.connections: set[tuple[str, int]] = set()
        lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with lock:
                    backend.requests += 1
                    backend.connections.add(self.client_address[:2])
                body = backend.name.encode()
                self.send_response(backend.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(name: str, status: int = 200) -> Backend:
        backend = Backend(name, status)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NginxManager]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf_dir = tmp_path / "nginx"
    manager = NginxManager(conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    yield manager
    NginxManager(conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1").stop()
    if (conf_dir / "nginx.pid").exists():
        pytest.fail("nginx still running after the test")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as c:
        yield c


def get(client: httpx.Client, manager: NginxManager, host: str) -> httpx.Response:
    return client.get(f"http://127.0.0.1:{manager.listen_port}/", headers={"Host": host})


def app_id(i: int) -> str:
    return hashlib.sha256(f"scale-{i}".encode()).hexdigest()[:16]


def many_routes(last: tuple[Upstream, ...]) -> tuple[Route, ...]:
    """``APPS`` serving apps on 10.x upstreams (2 to 6 each); the last one on ``last``."""
    routes = [
        Route(
            app_id=app_id(i),
            app_name=f"app-{i}",
            tenant_id=f"t{i % 700}",
            hostnames=(f"app-{i}.tenant-{i % 700}.example.test", f"www.shop-{i}.example.org"),
            upstreams=tuple(
                Upstream(f"10.{k}.{i // 250}.{i % 250 + 1}", 20000 + k) for k in range(2 + i % 5)
            ),
            state="serving",
        )
        for i in range(APPS - 1)
    ]
    routes.append(
        Route(
            app_id=app_id(APPS - 1),
            app_name="last",
            tenant_id="t-last",
            hostnames=("last.example.test", LONGEST),
            upstreams=last,
            state="serving",
        )
    )
    return tuple(routes)


def test_ten_thousand_domains_load_serve_and_take_a_change(
    manager: NginxManager, backends: Callable[..., Backend], client: httpx.Client
) -> None:
    old, new = backends("old"), backends("new")
    routes = many_routes((old.upstream(), new.upstream()))
    assert sum(len(r.hostnames) for r in routes) == 2 * APPS

    assert manager.apply(manager.config(routes, 1))  # passes nginx -t, or it raises
    assert manager.wait_for_generation(1, timeout=30)
    check = subprocess.run(
        [NGINX, "-t", "-c", str(manager.conf_path), "-p", f"{manager.conf_dir}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    # Not even a warning: a hash nginx could not size would say "could not build optimal".
    assert "[warn]" not in check.stderr
    for host in ("last.example.test", LONGEST):
        served = {get(client, manager, host).text for _ in range(10)}
        assert served == {"old", "new"}
    assert get(client, manager, "nobody.example.test").status_code == 404

    # The "lost node" case: the instance "old" is gone from the snapshot.
    lost = (*routes[:-1], replace(routes[-1], upstreams=(new.upstream(),)))
    assert manager.apply(manager.config(lost, 2))
    assert manager.wait_for_generation(2, timeout=30)
    before = old.requests
    responses = [get(client, manager, "last.example.test") for _ in range(20)]
    assert [(r.status_code, r.text) for r in responses] == [(200, "new")] * 20
    assert old.requests == before


@pytest.mark.parametrize("status", [502, 503, 504])
def test_an_instance_answering_a_gateway_error_costs_no_idempotent_request(
    manager: NginxManager, backends: Callable[..., Backend], client: httpx.Client, status: int
) -> None:
    alive, dying = backends("alive"), backends("dying", status)
    route = Route(
        "a1", "shop", "t1", ("shop.example.test",), (alive.upstream(), dying.upstream()), "serving"
    )
    manager.apply(manager.config((route,), 1))

    responses = [get(client, manager, "shop.example.test") for _ in range(20)]
    assert [(r.status_code, r.text) for r in responses] == [(200, "alive")] * 20
    assert dying.requests > 0  # it was tried, and its answer replaced by the next instance's


def test_a_post_is_never_sent_twice(
    manager: NginxManager, backends: Callable[..., Backend], client: httpx.Client
) -> None:
    alive, dying = backends("alive"), backends("dying", 503)
    route = Route(
        "a1", "shop", "t1", ("shop.example.test",), (alive.upstream(), dying.upstream()), "serving"
    )
    manager.apply(manager.config((route,), 1))

    url = f"http://127.0.0.1:{manager.listen_port}/"
    statuses = [
        client.post(url, headers={"Host": "shop.example.test"}, content=b"order").status_code
        for _ in range(20)
    ]
    # A POST that reached an instance is not retried: the app may have acted on it.
    assert alive.requests + dying.requests == 20
    assert sorted(set(statuses)) == [200, 503]


def test_upstream_connections_are_kept_alive(
    manager: NginxManager, backends: Callable[..., Backend], client: httpx.Client
) -> None:
    app = backends("app")
    route = Route("a1", "shop", "t1", ("shop.example.test",), (app.upstream(),), "serving")
    manager.apply(manager.config((route,), 1))

    for _ in range(30):
        assert get(client, manager, "shop.example.test").text == "app"
    assert app.requests == 30
    # One connection per nginx worker at most would do; far fewer than one per request.
    assert len(app.connections) <= 2 * (os.cpu_count() or 1)
