"""A `logs -f` reader that stops reading while the app prints as fast as it can: the server's
memory stays bounded (lines wait in a bounded buffer, the rest are dropped), and the reader that
resumes is told how many lines it missed. A real server, Docker Engine and a raw socket client."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BerthServer, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

# Lines of ~1 KB in a tight loop (echo is a shell builtin): megabytes a second into the log.
LINE = "x" * 1000
CHATTY = f"""\
FROM berth/busybox:latest
CMD ["sh", "-c", "httpd -f -p 8080 -h / & while true; do echo {LINE}; done"]
"""
MARKER = b"lines dropped (reader too slow)"
STALL_SECONDS = 15
MAX_GROWTH_MB = 60


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def _follow(berth: BerthServer, app: str) -> Iterator[socket.socket]:
    """An HTTP `logs?follow=true` request on a socket with a small receive buffer, so a reader
    that stops reading pushes back on the server at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    try:
        sock.connect(("127.0.0.1", berth.api_port))
        request = (
            f"GET /api/v1/apps/{app}/logs?follow=true&tail=0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {berth.token}\r\n\r\n"
        )
        sock.sendall(request.encode())
        yield sock
    finally:
        sock.close()


def _read_until(sock: socket.socket, needle: bytes, limit: int, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen and len(seen) < limit and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen = seen[-len(needle) :] + chunk if len(seen) > 1 << 20 else seen + chunk
    return seen


def test_a_slow_reader_keeps_the_server_bounded_and_sees_the_marker(
    berth: BerthServer, tmp_path: Path
) -> None:
    berth.create_app("chatty", "--memory", "64M", "--cpus", "0.5", "--health-path", "")
    result = berth.deploy_dir("chatty", write_app(tmp_path / "chatty", CHATTY))
    assert result["deployment"]["status"] == "succeeded", result
    assert berth.proc is not None
    pid = berth.proc.pid

    with _follow(berth, "chatty") as sock:
        head = _read_until(sock, LINE.encode(), 1 << 20, 30)
        assert b"200 OK" in head and LINE.encode() in head  # the stream flows ...
        baseline = _rss_mb(pid)
        peak = baseline
        for _ in range(STALL_SECONDS):  # ... then the reader stops reading
            time.sleep(1)
            peak = max(peak, _rss_mb(pid))
        assert peak - baseline < MAX_GROWTH_MB, (baseline, peak)

        resumed = _read_until(sock, MARKER, 256 << 20, 60)
        assert MARKER in resumed
