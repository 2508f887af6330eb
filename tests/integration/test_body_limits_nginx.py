"""Request bodies limited per plan, through the real nginx: a body up to an app's limit reaches
the app, one byte more is a 413 from nginx that the app never sees; another app (another plan)
keeps its own limit; the limit holds over HTTPS as over plain HTTP; a change of limit is live
with the next config; and a client streaming a chunked body without end is cut at the limit
(413, connection closed).

Every test has its own conf dir and loopback port; the finalizer stops that nginx even when the
test failed.
"""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from berth.proxy.model import Route, ServedCertificate, TlsConfig, Upstream
from berth.proxy.nginx import NginxManager
from tests.certs import selfsigned
from tests.integration.test_nginx_real import NGINX, free_port

pytestmark = [pytest.mark.nginx]

MIB = 1024 * 1024
SMALL = "small.example.test"  # an app whose plan allows 1 MiB
LARGE = "large.example.test"  # another tenant's app, whose plan allows 3 MiB


class Backend:
    """Answers each POST with the length of the body it read, and remembers (path, length)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = 0
                while got < length:
                    chunk = self.rfile.read(min(65536, length - got))
                    if not chunk:
                        break
                    got += len(chunk)
                seen.append((self.path, got))
                body = f"got {got}".encode()
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

    def paths(self) -> set[str]:
        return {path for path, _ in self.seen}

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
    parent = Path(tempfile.mkdtemp(prefix="berth-body-"))
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
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as made:
        yield made


def routes(backend: Backend, small_mb: int | None = 1, large_mb: int = 3) -> tuple[Route, ...]:
    up = (backend.upstream(),)
    return (
        Route("a1", "small", "t1", (SMALL,), up, "serving", max_body_mb=small_mb),
        Route("b2", "large", "t2", (LARGE,), up, "serving", max_body_mb=large_mb),
    )


def serve(manager: NginxManager, routes: tuple[Route, ...], generation: int = 1) -> None:
    manager.apply(manager.config(routes, generation))
    assert manager.wait_for_generation(generation, timeout=5)


def post(client: httpx.Client, port: int, host: str, path: str, size: int) -> httpx.Response:
    return client.post(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host}, content=b"x" * size
    )


def test_a_body_up_to_the_limit_passes_and_one_byte_more_is_413_from_nginx(
    manager: NginxManager, backend: Backend, client: httpx.Client, port: int
) -> None:
    serve(manager, routes(backend))
    under = post(client, port, SMALL, "/under", MIB - 1024)
    assert under.status_code == 200 and under.text == f"got {MIB - 1024}"
    exact = post(client, port, SMALL, "/exact", MIB)
    assert exact.status_code == 200 and exact.text == f"got {MIB}"

    over = post(client, port, SMALL, "/over", MIB + 1)
    assert over.status_code == 413
    assert "413 Request Entity Too Large" in over.text  # nginx's own page, not the app's
    assert backend.seen == [("/under", MIB - 1024), ("/exact", MIB)]  # the app never saw it


def test_another_app_on_another_plan_keeps_its_own_limit(
    manager: NginxManager, backend: Backend, client: httpx.Client, port: int
) -> None:
    serve(manager, routes(backend))
    assert post(client, port, SMALL, "/two-small", 2 * MIB).status_code == 413
    large = post(client, port, LARGE, "/two-large", 2 * MIB)
    assert large.status_code == 200 and large.text == f"got {2 * MIB}"
    assert post(client, port, LARGE, "/four-large", 4 * MIB).status_code == 413
    assert backend.paths() == {"/two-large"}


def test_a_change_of_limit_is_live_with_the_next_config(
    manager: NginxManager, backend: Backend, client: httpx.Client, port: int
) -> None:
    serve(manager, routes(backend, small_mb=1))
    assert post(client, port, SMALL, "/before", 2 * MIB).status_code == 413
    serve(manager, routes(backend, small_mb=3), generation=2)  # the tenant's plan changed
    assert post(client, port, SMALL, "/after", 2 * MIB).status_code == 200
    serve(manager, routes(backend, small_mb=None), generation=3)  # the http level: 64 MiB
    assert post(client, port, SMALL, "/default", 5 * MIB).status_code == 200
    assert backend.paths() == {"/after", "/default"}


def tls_post(port: int, sni: str, ca_pem: str, size: int) -> int:
    """The status of a POST of ``size`` bytes over HTTPS to ``sni`` (SNI and Host)."""
    context = ssl.create_default_context(cadata=ca_pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(
            f"POST /tls HTTP/1.1\r\nHost: {sni}\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        try:
            tls.sendall(b"z" * size)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # nginx answered and closed before the whole body was out
        data = b""
        try:
            while chunk := tls.recv(65536):
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
    return int(data.split(b" ", 2)[1])


def test_the_limit_holds_over_https_too(
    manager: NginxManager, backend: Backend, client: httpx.Client, port: int, tmp_path: Path
) -> None:
    made = selfsigned.issue((SMALL, LARGE))
    (tmp_path / "chain.pem").write_text(made.chain_pem)
    (tmp_path / "key.pem").write_text(made.key_pem)
    (tmp_path / "key.pem").chmod(0o600)
    served = ServedCertificate((SMALL, LARGE), tmp_path / "chain.pem", tmp_path / "key.pem")
    tls_port = free_port()
    manager.apply(replace(manager.config(routes(backend), 1), tls=TlsConfig(tls_port, (served,))))
    assert manager.wait_for_generation(1, timeout=5)
    assert tls_post(tls_port, SMALL, made.ca_pem, MIB) == 200
    assert tls_post(tls_port, SMALL, made.ca_pem, 2 * MIB) == 413
    assert tls_post(tls_port, LARGE, made.ca_pem, 2 * MIB) == 200
    assert post(client, port, SMALL, "/plain", 2 * MIB).status_code == 413  # and plain HTTP
    assert sorted(backend.seen) == [("/tls", MIB), ("/tls", 2 * MIB)]


@pytest.mark.parametrize("extra_mib", [1, 31])
def test_an_endless_chunked_body_is_cut_at_the_limit(
    manager: NginxManager, backend: Backend, port: int, extra_mib: int
) -> None:
    """The client would stream forever; the test stops at limit + ``extra_mib``. nginx
    answers 413 once the chunks pass the limit and closes the connection; the app sees
    nothing. 31 MiB is more than loopback's socket buffers hold: nginx must answer before
    the client is done, as it would an endless stream."""
    serve(manager, routes(backend))
    chunk = b"y" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    bound = (1 + extra_mib) * MIB
    sent = 0
    answered_early = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /endless HTTP/1.1\r\nHost: {SMALL}\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        try:
            while sent < bound:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    answered_early = True  # nginx spoke before the client finished
                    break
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            answered_early = True
        answer = b""
        while True:  # until nginx closes the connection (or the socket's timeout fails it)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent > MIB  # the limit cut it, nothing before (sent counts what nginx read, and more)
    if extra_mib == 31:
        assert answered_early and sent < bound, sent
    print(f"chunked: {sent} of {bound} bytes sent, answered before the end: {answered_early}")
    assert backend.seen == []
