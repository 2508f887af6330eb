"""A tiny web app for Berth, using only the standard library.

GET /         -> a greeting with the container's hostname (env GREETING, default below)
GET /healthz  -> 200 "ok"
Listens on $PORT (default 8080); stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

DEFAULT_GREETING = "hello from berth"


class Handler(BaseHTTPRequestHandler):
    server_version = "berth-example/1.0"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, "ok\n")
        elif self.path == "/" or self.path.startswith("/?"):
            greeting = os.environ.get("GREETING", DEFAULT_GREETING)
            self.reply(200, f"{greeting} (host {socket.gethostname()})\n")
        else:
            self.reply(404, "not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def reply(self, status: int, body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stdout, where `docker logs` and Berth collect it.
        print(f"{self.address_string()} - {format % args}", flush=True)


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        print(f"got signal {signum}, shutting down", flush=True)
        # shutdown() waits for serve_forever() to return, so call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on port {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
