"""The registry API client waits out a registry restart (refused connections) for a bounded
time, and then says the registry cannot be reached."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from berth.registry.gc import RegistryApi, RegistryError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Catalog(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"repositories": ["t-ab/app"]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serving_after(port: int, delay: float) -> Iterator[None]:
    servers: list[http.server.HTTPServer] = []

    def start() -> None:
        time.sleep(delay)
        server = http.server.HTTPServer(("127.0.0.1", port), _Catalog)
        servers.append(server)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        yield
    finally:
        deadline = time.monotonic() + 5
        while not servers and time.monotonic() < deadline:
            time.sleep(0.01)
        for server in servers:
            server.shutdown()
            server.server_close()
        thread.join(5)


def test_a_restarting_registry_is_waited_for() -> None:
    port = _free_port()
    with _serving_after(port, 0.4):
        api = RegistryApi(f"http://127.0.0.1:{port}", restart_grace=5.0)
        try:
            assert api.repositories() == ["t-ab/app"]
        finally:
            api.close()


def test_a_registry_that_stays_down_is_reported_unreachable() -> None:
    port = _free_port()
    api = RegistryApi(f"http://127.0.0.1:{port}", restart_grace=0.3)
    try:
        with pytest.raises(RegistryError, match="cannot be reached"):
            api.repositories()
    finally:
        api.close()


class _DropsFirstConnections:
    """Accepts connections; closes the first ``drops`` without an answer (a registry stopping
    mid-request), then answers each request with an empty catalog."""

    def __init__(self, drops: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.drops, self.seen = drops, 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.seen += 1
                if self.seen <= self.drops:
                    continue  # closed without a word
                body = b'{"repositories": []}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self.thread.join(5)


def test_a_read_the_stopping_registry_dropped_is_sent_again() -> None:
    server = _DropsFirstConnections(drops=1)
    api = RegistryApi(f"http://127.0.0.1:{server.port}", restart_grace=5.0)
    try:
        assert api.repositories() == []
        assert server.seen == 2
    finally:
        api.close()
        server.close()


def test_a_delete_the_registry_dropped_is_not_sent_again() -> None:
    server = _DropsFirstConnections(drops=1)
    api = RegistryApi(f"http://127.0.0.1:{server.port}", restart_grace=5.0)
    try:
        with pytest.raises(RegistryError, match="cannot be reached"):
            api.delete_manifest("t-ab/app", "sha256:" + "0" * 64)
        assert server.seen == 1
    finally:
        api.close()
        server.close()
