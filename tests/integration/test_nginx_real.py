"""The routing layer against a real nginx on a random loopback port.

Every test gets its own conf dir and port; a finalizer stops whatever nginx master that dir's
pid file names, even when the test failed or the manager object is long gone.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

import berth.proxy.nginx as nginx_module
from berth.errors import ProxyConfigError
from berth.proxy.model import ProxyConfig, Route, Upstream
from berth.proxy.nginx import NginxManager
from tests.harness import wait_until

NGINX = "/usr/sbin/nginx"
pytestmark = [pytest.mark.nginx]


@pytest.fixture(autouse=True, scope="module")
def _nginx_is_installed() -> None:
    """These tests need the real nginx (make test installs it): missing is a failure."""
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx is not installed at {NGINX}; run `make test`", pytrace=False)


HOST = "app.example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Backend:
    """A tiny HTTP server on a loopback port that answers 200 with a fixed body."""

    def __init__(self, body: str) -> None:
        encoded = body.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(encoded)))
                self.send_header("X-Seen-Host", self.headers.get("Host", ""))
                self.send_header("X-Seen-Request-Id", self.headers.get("X-Request-Id", ""))
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog of 5 drops connections under a burst from
            # nginx's workers: a dropped SYN is a 2 s connect timeout, not what is tested.
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.running = False


@pytest.fixture
def backends() -> Iterator[Callable[[str], Backend]]:
    started: list[Backend] = []

    def start(body: str) -> Backend:
        backend = Backend(body)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def conf_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "nginx"
    yield directory
    # Whoever started it (a manager, a killed child process), stop it.
    NginxManager(directory, nginx_binary=NGINX, listen_host="127.0.0.1").stop()
    pid_file = directory / "nginx.pid"
    if pid_file.exists():  # not ours by command line, yet named by our pid file
        pytest.fail(f"nginx still running after the test: {pid_file.read_text()}")


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(params=["static", "dynamic"])
def manager(conf_dir: Path, port: int, request: pytest.FixtureRequest) -> NginxManager:
    """Both ways Berth runs nginx: instances in the config text (a reload each), or set at
    run time through the Lua module (berth.proxy.dynamic; required here, not optional)."""
    dynamic = request.param == "dynamic"
    if dynamic:
        from berth.proxy import dynamic as lua

        assert lua.available(), "the distro's Lua module for nginx is not installed"
    return NginxManager(
        conf_dir,
        nginx_binary=NGINX,
        listen_host="127.0.0.1",
        listen_port=port,
        dynamic_upstreams=dynamic,
    )


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0, trust_env=False) as c:
        yield c


def serving(*backends: Backend, hostnames: tuple[str, ...] = (HOST,)) -> Route:
    return Route(
        app_id="a1",
        app_name="hello",
        tenant_id="t1",
        hostnames=hostnames,
        upstreams=tuple(b.upstream() for b in backends),
        state="serving",
    )


def get(client: httpx.Client, port: int, host: str, path: str = "/") -> httpx.Response:
    return client.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host})


def test_routes_a_domain_to_its_instance(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    backend = backends("hello-A")
    assert manager.apply(manager.config((serving(backend),), 1)) is True
    assert manager.wait_for_generation(1, timeout=5)

    response = get(client, port, HOST)
    assert response.status_code == 200
    assert response.text == "hello-A"
    assert response.headers["X-Seen-Host"] == HOST
    assert response.headers["X-Seen-Request-Id"]  # nginx's $request_id reached the app
    assert "server" not in response.headers or response.headers["server"] == "nginx"


def test_unknown_host_gets_the_404_page(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    manager.apply(manager.config((serving(backends("hello-A")),), 1))
    response = get(client, port, "other.example.test")
    assert response.status_code == 404
    assert "No app is configured for this host" in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_no_instances_and_suspended_pages(
    manager: NginxManager, client: httpx.Client, port: int
) -> None:
    routes = (
        Route("a1", "hello", "t1", ("hello.example.test",), (), "no_instances"),
        Route("b2", "shop", "t2", ("shop.example.test",), (Upstream("127.0.0.1", 1),), "suspended"),
    )
    manager.apply(manager.config(routes, 1))

    empty = get(client, port, "hello.example.test")
    assert empty.status_code == 503
    assert "hello has no healthy instances" in empty.text
    assert empty.headers["retry-after"] == "30"

    suspended = get(client, port, "shop.example.test")
    assert suspended.status_code == 503
    assert "This app is suspended" in suspended.text


def test_every_instance_down_gives_a_clear_502_page(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    backend = backends("hello-A")
    manager.apply(manager.config((serving(backend),), 1))
    backend.stop()
    response = get(client, port, HOST)
    assert response.status_code == 502
    assert "hello is not responding" in response.text


def test_reload_goes_live_and_identical_config_does_not_reload(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    a, b = backends("hello-A"), backends("hello-B")
    manager.apply(manager.config((serving(a),), 1))
    pid = manager.pid()

    assert manager.apply(manager.config((serving(b),), 2)) is True
    assert manager.wait_for_generation(2, timeout=5)
    assert get(client, port, HOST).text == "hello-B"
    # Only the instances changed: set at run time when dynamic, else a reload.
    reloads = 0 if manager.dynamic else 1
    assert manager.reload_count == reloads
    assert manager.pid() == pid  # a reload (or none), not a restart

    assert manager.apply(manager.config((serving(b),), 2)) is False
    assert manager.reload_count == reloads


def test_rejected_config_keeps_the_old_one_serving(
    manager: NginxManager,
    backends: Callable[[str], Backend],
    client: httpx.Client,
    port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager.apply(manager.config((serving(backends("hello-A")),), 1))
    live = manager.conf_path.read_text()

    monkeypatch.setattr(
        nginx_module, "render_nginx_conf", lambda cfg, paths: "this is { not nginx;\n"
    )
    with pytest.raises(ProxyConfigError, match="nginx rejected the configuration"):
        manager.apply(manager.config((), 2))

    assert manager.conf_path.read_text() == live
    assert not list(manager.conf_dir.glob(".nginx.conf.*"))  # no temp file left behind
    # Checked while the master loads it (which refuses it too): the old file is put back and
    # loaded again.
    assert manager.reload_count == 2
    assert get(client, port, HOST).text == "hello-A"
    assert manager.wait_for_generation(1, timeout=1)
    # A rejected config before nginx ever started never reaches it at all.
    manager.stop()
    with pytest.raises(ProxyConfigError, match="nginx rejected the configuration"):
        manager.apply(manager.config((), 3))
    assert manager.conf_path.read_text() == live
    assert manager.pid() is None


def test_invalid_route_is_a_proxy_config_error_and_changes_nothing(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    manager.apply(manager.config((serving(backends("hello-A")),), 1))
    evil = serving(backends("evil"), hostnames=("x.example.test; return 200 pwned",))
    with pytest.raises(ProxyConfigError, match="invalid hostname"):
        manager.apply(manager.config((evil,), 2))
    assert get(client, port, HOST).text == "hello-A"


def test_config_for_another_port_is_refused(manager: NginxManager) -> None:
    with pytest.raises(ProxyConfigError, match="listens on"):
        manager.apply(ProxyConfig("127.0.0.1", manager.listen_port + 1, (), 1))


def test_nginx_outlives_the_manager_and_is_adopted(
    conf_dir: Path, port: int, backends: Callable[[str], Backend], client: httpx.Client
) -> None:
    backend = backends("hello-A")
    first = NginxManager(conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    first.apply(first.config((serving(backend),), 1))
    pid = first.pid()
    assert pid is not None
    del first

    assert get(client, port, HOST).text == "hello-A"
    second = NginxManager(conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    assert second.ensure_running() == pid  # adopted, not restarted
    assert second.is_running()
    # Already live: no reload (a dynamic nginx is told its instances again, which is no change).
    assert second.apply(second.config((serving(backend),), 1)) is second.dynamic
    assert second.reload_count == 0
    assert second.pid() == pid


def test_nginx_survives_sigkill_of_the_berth_process(
    conf_dir: Path, port: int, backends: Callable[[str], Backend], client: httpx.Client
) -> None:
    backend = backends("hello-A")
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from berth.proxy.model import Route, Upstream
        from berth.proxy.nginx import NginxManager
        m = NginxManager(Path({str(conf_dir)!r}), nginx_binary={NGINX!r},
                         listen_host="127.0.0.1", listen_port={port})
        route = Route("a1", "hello", "t1", ({HOST!r},), (Upstream("127.0.0.1", {backend.port}),),
                      "serving")
        m.apply(m.config((route,), 1))
        print(m.pid(), flush=True)
        time.sleep(60)
        """
    )
    berth = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert berth.stdout is not None
        pid = int(berth.stdout.readline())
    finally:
        berth.send_signal(signal.SIGKILL)
        berth.wait(timeout=10)

    assert get(client, port, HOST).text == "hello-A"
    adopter = NginxManager(conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port)
    assert adopter.ensure_running() == pid


def test_a_stopped_instance_costs_no_failed_request(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    alive, dying = backends("hello-A"), backends("hello-B")
    manager.apply(manager.config((serving(alive, dying),), 1))
    assert {get(client, port, HOST).text for _ in range(10)} == {"hello-A", "hello-B"}

    dying.stop()
    responses = [get(client, port, HOST) for _ in range(50)]
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.text for r in responses} == {"hello-A"}


def test_ensure_running_on_a_fresh_dir_serves_the_default_server(
    manager: NginxManager, client: httpx.Client, port: int
) -> None:
    pid = manager.ensure_running()
    assert manager.ensure_running() == pid
    assert manager.wait_for_generation(0, timeout=5)
    assert get(client, port, HOST).status_code == 404


def test_apply_restarts_a_stopped_nginx_even_when_the_config_is_unchanged(
    manager: NginxManager, backends: Callable[[str], Backend], client: httpx.Client, port: int
) -> None:
    cfg = manager.config((serving(backends("hello-A")),), 1)
    manager.apply(cfg)
    manager.stop()
    assert not manager.is_running()
    assert manager.apply(cfg) is False
    assert manager.is_running()
    assert get(client, port, HOST).text == "hello-A"


def test_stop_stops_it(manager: NginxManager, port: int) -> None:
    manager.ensure_running()
    manager.stop()
    assert not manager.is_running()
    with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False) as c:
        c.get(f"http://127.0.0.1:{port}/")


def _closed_as_idle(exc: httpx.HTTPError) -> bool:
    """The two faces of one race on a reused keep-alive connection: the old worker closed it
    as idle before it read the request that was on its way. If the request had not reached the
    socket yet, the client reads an orderly close ("without sending a response"); if it had,
    the kernel answers a close with unread data by a reset (RFC 1122 4.2.2.13)."""
    text = str(exc)
    return "without sending a response" in text or "Connection reset by peer" in text


def test_reloads_under_load_retire_the_old_workers_and_lose_no_request(
    manager: NginxManager, backends: Callable[[str], Backend], port: int
) -> None:
    """Berth stops the old workers itself once the new ones are up (not after the master's
    pause): no request is lost, and the master keeps its worker count (nothing it had to
    respawn).

    One race stays, as with any nginx reload: an old worker closes its idle keep-alive
    connections as it stops, and a client that sent its next request on one at that instant
    gets no answer (an orderly close, or a reset if the request was already in the socket:
    nginx never read it). Such a
    request is counted apart and sent again on a new connection, which must succeed; ending
    that race needs route changes without a reload (issue 9). Every other failure counts."""
    a, b = backends("hello-A"), backends("hello-B")
    manager.apply(manager.config((serving(a),), 1))
    master = manager.pid()
    assert master is not None
    # worker_processes auto: one per CPU; all of them, not the first one up.
    expected = len(os.sched_getaffinity(0))
    workers = wait_until(
        lambda: len(w := nginx_module._workers_of(master)) == expected and w,
        10,
        f"nginx's {expected} workers are up",
    )
    stop = threading.Event()
    failures: list[str] = []
    closed_idle: list[str] = []  # the reload race on a reused keep-alive connection
    done = [0]

    def load(keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as c:
            while not stop.is_set():
                try:
                    resp = get(c, port, HOST)
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    if not (keep_alive and _closed_as_idle(exc)):
                        failures.append(repr(exc))
                        continue
                    closed_idle.append(repr(exc))
                    try:
                        with httpx.Client(timeout=5.0, trust_env=False) as fresh:
                            resp = get(fresh, port, HOST)
                    except httpx.HTTPError as again:
                        failures.append(f"sent again on a new connection: {again!r}")
                        continue
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if resp.status_code != 200:
                    failures.append(f"HTTP {resp.status_code}")
                done[0] += 1

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in (True, False)]
    for t in threads:
        t.start()
    try:
        for generation in range(2, 12):
            before = nginx_module._workers_of(master)
            backend = b if generation % 2 else a
            # A new hostname each time: a change of the config text (a reload), also when
            # instances are set at run time.
            route = serving(backend, hostnames=(HOST, f"g{generation}.example.test"))
            assert manager.apply(manager.config((route,), generation)) is True
            assert manager.wait_for_generation(generation, timeout=5)
            # The workers of the config before are asked to stop: none serves any more.
            wait_until(partial(_none_serves, master, before), 10, "the old workers stop serving")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert failures == []
    assert done[0] > 0
    print(f"{done[0]} requests; {len(closed_idle)} met an idle keep-alive close, sent again")
    assert manager.pid() == master
    assert len(nginx_module._workers_of(master)) == len(workers)
    log = manager.paths.error_log.read_text()
    assert "respawn" not in log and "exited on signal" not in log


def _none_serves(master: int, pids: set[int]) -> bool:
    return not nginx_module._workers_of(master) & pids


def test_instance_changes_close_no_connection_when_set_at_run_time(
    conf_dir: Path, port: int, backends: Callable[[str], Backend]
) -> None:
    """20 keep-alive clients while an app's instances change 200 times (added, removed,
    replaced): with the instances set at run time there is no reload, so not one connection
    is closed or reset and not one request fails (issue 9, point 3)."""
    manager = NginxManager(
        conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port,
        dynamic_upstreams=True,
    )  # fmt: skip
    pool = [backends(f"b{i}") for i in range(4)]
    manager.apply(manager.config((serving(pool[0]),), 1))
    stop = threading.Event()
    failures: list[str] = []
    done = [0]
    seen: set[str] = set()

    def client() -> None:
        with httpx.Client(timeout=5.0, trust_env=False) as c:  # one keep-alive connection
            while not stop.is_set():
                try:
                    resp = get(c, port, HOST)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if resp.status_code != 200:
                    failures.append(f"HTTP {resp.status_code}")
                seen.add(resp.text)
                done[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        for generation in range(2, 202):
            k = generation % 4
            chosen = tuple(pool[(k + j) % 4] for j in range(1 + generation % 3))
            assert manager.apply(manager.config((serving(*chosen),), generation)) is True
            assert manager.wait_for_generation(generation, timeout=5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    print(f"{done[0]} requests over 200 instance changes, {manager.reload_count} reloads")
    assert manager.paths.control_socket is not None
    assert stat.S_IMODE(manager.paths.control_socket.stat().st_mode) == 0o600  # Berth's alone
    assert failures == []
    assert manager.reload_count == 0
    assert seen == {"b0", "b1", "b2", "b3"}  # every instance served its share
    assert done[0] > 200


def test_the_dictionary_says_what_is_routed(
    conf_dir: Path, port: int, backends: Callable[[str], Backend]
) -> None:
    manager = NginxManager(
        conf_dir, nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=port,
        dynamic_upstreams=True,
    )  # fmt: skip
    a, b = backends("a"), backends("b")
    manager.apply(manager.config((serving(a, b),), 1))
    assert manager.live_peers() == {
        "a1": tuple(sorted((f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")))
    }
    manager.apply(manager.config((), 2))
    assert manager.live_peers() == {}
