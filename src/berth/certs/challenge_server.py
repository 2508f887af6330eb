"""A tiny HTTP-01 responder: ``GET /.well-known/acme-challenge/TOKEN`` from a ChallengeStore.

For the tests and for an operator without an ingress yet. It serves nothing else (404), takes
no request body, answers only well-formed tokens, and logs nothing of what clients send.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from berth.certs.challenges import ChallengeStore, valid_token

PREFIX = "/.well-known/acme-challenge/"


def _handler(store: ChallengeStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "berth-acme-responder"
        sys_version = ""

        def _answer(self, body_wanted: bool) -> None:
            path = self.path.split("?", 1)[0]
            answer = None
            if path.startswith(PREFIX):
                token = path[len(PREFIX) :]
                answer = store.get(token) if valid_token(token) else None
            if answer is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", body_wanted)
            else:
                self._send(HTTPStatus.OK, answer.encode("ascii"), body_wanted)

        def _send(self, status: HTTPStatus, body: bytes, body_wanted: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body_wanted:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: Any) -> None:
            return  # tokens and client text stay out of the logs

    return Handler


class ChallengeServer:
    """Serves ``store`` on ``host:port`` (port 0: a free one) in a background thread."""

    def __init__(self, store: ChallengeStore, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(store))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ChallengeServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="acme-responder", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ChallengeServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
