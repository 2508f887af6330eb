"""The registry API client waits out a registry restart (refused connections) for a bounded
time, and then says the registry cannot be reached."""

from __future__ import annotations

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
