"""Oversized requests against a real `berth server`: refused with 413 before (or as soon as) the
limit is passed, while the server's memory stays put and other tenants keep being served.

The attacks go over raw sockets to the server's loopback API port, so that the test controls
exactly what is declared and what is sent: a 1 GiB declared length (nothing of it sent), and a
chunked body of up to 200 MiB sent as fast as the server takes it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import BerthServer

BERTH_SERVER_OPTIONS = {"extra_env": {"BERTH_PAYMENT_WEBHOOK_SECRET": "whsec_e2e_limits"}}

GiB = 1024**3
MiB = 1024**2
SIGNUP = "/api/v1/auth/signup"
WEBHOOK = "/api/v1/billing/payments/webhook"
PASSWORD = "correct horse battery staple"


@dataclass
class Answer:
    status: int
    body: bytes
    sent: int  # body bytes the client got to send before the server answered or closed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def server_rss(berth: BerthServer) -> int:
    assert berth.proc is not None and berth.proc.poll() is None
    return rss_kib(berth.proc.pid)


def attack(
    berth: BerthServer, path: str, *, declared: int | None = None, chunked_total: int = 0
) -> Answer:
    """One request with a declared length (nothing of the body sent) or a chunked body sent
    until the server answers, closes, or ``chunked_total`` bytes are out."""
    sock = socket.create_connection(("127.0.0.1", berth.api_port), timeout=60)
    received = bytearray()
    done = threading.Event()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                received.extend(chunk)
                if b"\r\n\r\n" in received:
                    done.set()
        except OSError:
            pass
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {declared}\r\n" if declared is not None else ""
        head += "Transfer-Encoding: chunked\r\n" if declared is None else ""
        sock.sendall((head + "\r\n").encode())
        reader.start()
        sent, size = 0, 256 * 1024
        piece = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
        while declared is None and sent < chunked_total and not done.is_set():
            try:
                sock.sendall(piece)
            except OSError:
                break  # the server closed the connection on us: that is the point
            sent += size
        reader.join(60)
    finally:
        sock.close()
    assert received, f"no answer to {path} after {sent} bytes"
    status_line = bytes(received).split(b"\r\n", 1)[0]
    return Answer(int(status_line.split()[1]), bytes(received), sent)


@pytest.fixture(scope="module")
def tenant(berth: BerthServer) -> Iterator[str]:
    """Another tenant's session, whose reads must keep working throughout."""
    resp = httpx.post(
        berth.api_url + SIGNUP,
        json={"email": "bystander@example.com", "password": PASSWORD},
        timeout=30,
        trust_env=False,
    )
    assert resp.status_code == 201, resp.text
    yield resp.json()["token"]


def apps_of(berth: BerthServer, token: str) -> int:
    resp = httpx.get(
        berth.api_url + "/api/v1/apps",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )
    return resp.status_code


@pytest.mark.parametrize("path", [SIGNUP, WEBHOOK])
def test_a_declared_gibibyte_is_refused_at_once(berth: BerthServer, tenant: str, path: str) -> None:
    before = server_rss(berth)
    for _ in range(5):
        answer = attack(berth, path, declared=GiB)
        assert answer.status == 413, answer.body[:500]
        assert b'"too_large"' in answer.body and b"limit of" in answer.body
        assert b"connection: close" in answer.body.lower()
    assert server_rss(berth) - before < 50 * 1024
    assert apps_of(berth, tenant) == 200


@pytest.mark.parametrize("path", [SIGNUP, WEBHOOK])
def test_a_chunked_flood_is_cut_off_at_the_limit(
    berth: BerthServer, tenant: str, path: str
) -> None:
    before = server_rss(berth)
    statuses: list[int] = []
    stop = threading.Event()

    def bystander() -> None:
        while not stop.is_set():
            statuses.append(apps_of(berth, tenant))

    reading = threading.Thread(target=bystander, daemon=True)
    reading.start()
    try:
        answers = [attack(berth, path, chunked_total=200 * MiB) for _ in range(3)]
    finally:
        stop.set()
        reading.join(60)
    for answer in answers:
        assert answer.status == 413, answer.body[:500]
        assert b'"too_large"' in answer.body
        # The server stopped taking the body near its limit (1 MiB or 64 KiB), not at 200 MiB:
        # what the client got out besides is what the kernel's socket buffers hold.
        assert answer.sent < 40 * MiB, answer.sent
    assert server_rss(berth) - before < 50 * 1024
    assert statuses and set(statuses) == {200}
    assert apps_of(berth, tenant) == 200


def test_oversized_headers_are_refused(berth: BerthServer, tenant: str) -> None:
    before = server_rss(berth)
    with socket.create_connection(("127.0.0.1", berth.api_port), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for _ in range(64):  # 4 MiB of one header, in pieces
                sock.sendall(b"X-Pad: " + b"a" * 65536 + b"\r\n")
        except OSError:
            pass  # the server gave up on the request and closed: fine
        try:
            answer = sock.recv(65536)
        except OSError:
            answer = b""
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"413", b"431"), answer[:200]
    assert server_rss(berth) - before < 50 * 1024
    assert apps_of(berth, tenant) == 200


# -- login and sign-up limits through the real server ---------------------------------------------
# The test talks to the server from 127.0.0.1, the one proxy address the server trusts to name
# the client (X-Forwarded-For), so it can play an attacker and the owner at different addresses.


def from_address(berth: BerthServer, ip: str, path: str, body: dict[str, str]) -> httpx.Response:
    return httpx.post(
        berth.api_url + path,
        json=body,
        headers={"X-Forwarded-For": ip},
        timeout=30,
        trust_env=False,
    )


def test_a_guesser_elsewhere_never_locks_the_owner_out(berth: BerthServer) -> None:
    owner = {"email": "owner@example.com", "password": PASSWORD}
    assert from_address(berth, "198.51.100.7", SIGNUP, owner).status_code == 201
    wrong = {**owner, "password": "not the password at all"}
    statuses = [from_address(berth, "203.0.113.5", "/api/v1/auth/login", wrong) for _ in range(20)]
    assert [r.status_code for r in statuses] == [401] * 5 + [429] * 15
    assert all(1 <= int(r.headers["retry-after"]) <= 300 for r in statuses[5:])
    assert from_address(berth, "203.0.113.5", "/api/v1/auth/login", owner).status_code == 429
    # The owner, at another address, logs in at once.
    assert from_address(berth, "198.51.100.8", "/api/v1/auth/login", owner).status_code == 200


def test_signups_per_address_are_limited(berth: BerthServer) -> None:
    ip = "192.0.2.77"
    answers = [
        from_address(berth, ip, SIGNUP, {"email": f"many-{n}@example.com", "password": PASSWORD})
        for n in range(7)
    ]
    assert [r.status_code for r in answers] == [201] * 5 + [429] * 2
    assert b"too_many_signups" in answers[-1].content
    assert int(answers[-1].headers["retry-after"]) > 0
    other = {"email": "elsewhere@example.com", "password": PASSWORD}
    assert from_address(berth, "192.0.2.78", SIGNUP, other).status_code == 201
