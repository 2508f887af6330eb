"""Request body limits on the real app: refused before the body is read (a declared length),
or as soon as the count passes the limit (chunked); never buffered past it.

The ASGI calls here drive the app directly, with a ``receive`` that records every body message
the app asked for, so a test can say exactly how much of a body was read.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from berth.api.limits import body_limit
from berth.settings import Settings
from tests.api.conftest import API, PASSWORD, Env, assert_error

pytestmark = pytest.mark.store

MiB = 1024 * 1024


@dataclass
class Exchange:
    """One request driven through the ASGI app: what it read, what it answered."""

    chunks: list[bytes]
    read: int = 0
    asked: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent  # one answer, never two
        return int(starts[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> Any:
        raw = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return json.loads(raw)


def drive(
    env: Env,
    path: str,
    chunks: list[bytes],
    *,
    declared: int | None = None,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
) -> Exchange:
    ex = Exchange(list(chunks))
    raw_headers = [(b"content-type", b"application/json"), (b"host", b"testserver")]
    if declared is not None:
        raw_headers.append((b"content-length", str(declared).encode()))
    if chunked:
        raw_headers.append((b"transfer-encoding", b"chunked"))
    for key, value in (headers or {}).items():
        raw_headers.append((key.lower().encode(), value.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": API + path,
        "raw_path": (API + path).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("10.20.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        ex.asked += 1
        if not ex.chunks:
            await asyncio.sleep(3600)  # the client sends nothing more (the app must not wait)
        chunk = ex.chunks.pop(0)
        ex.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(ex.chunks)}

    async def send(message: dict[str, Any]) -> None:
        ex.sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(env.app(scope, receive, send), timeout=30)

    asyncio.run(run())
    return ex


def assert_too_large(ex: Exchange, limit: int) -> None:
    assert ex.status == 413, ex.sent
    assert ex.body["error"]["code"] == "too_large"
    assert f"limit of {limit} bytes" in ex.body["error"]["message"]
    assert ex.headers["connection"] == "close"


def test_the_route_classes_and_their_limits() -> None:
    settings = Settings(
        max_json_body_bytes=4096, max_webhook_body_bytes=2048, max_build_context_bytes=8192
    )
    cases = {
        f"{API}/auth/signup": 4096,
        f"{API}/apps": 4096,
        f"{API}/apps/web/config": 4096,
        f"{API}/apps/web/builds": 8192,
        f"{API}/apps/web/builds/": 8192,
        f"{API}/apps/web/builds/x": 4096,
        f"{API}/billing/payments/webhook": 2048,
        f"{API}/billing/payments/webhook/": 2048,
        "/healthz": 4096,
    }
    assert {path: body_limit(path, settings).max_bytes for path in cases} == cases


@pytest.mark.parametrize(
    ("path", "setting"),
    [
        ("/auth/signup", "max_json_body_bytes"),
        ("/apps", "max_json_body_bytes"),
        ("/billing/payments/webhook", "max_webhook_body_bytes"),
        ("/apps/web/builds", "max_build_context_bytes"),
    ],
)
def test_a_declared_length_over_the_limit_is_refused_before_any_read(
    env: Env, path: str, setting: str
) -> None:
    limit = int(getattr(env.platform.settings, setting))
    ex = drive(env, path, [b"x" * 10], declared=limit + 1)
    assert_too_large(ex, limit)
    assert ex.asked == 0  # not one byte of the body was read
    ex = drive(env, path, [b"x" * 10], declared=1024**3)
    assert_too_large(ex, limit)
    assert ex.asked == 0


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(env: Env) -> None:
    with env.settings_override(max_json_body_bytes=64 * 1024):
        chunks = [b"x" * 16 * 1024] * 200  # 3.2 MiB on offer
        ex = drive(env, "/auth/signup", chunks, chunked=True)
    assert_too_large(ex, 64 * 1024)
    assert ex.read == 64 * 1024 + 16 * 1024  # the chunk that passed the limit, nothing after
    assert len(ex.chunks) == 200 - 5


def test_a_chunked_webhook_body_is_cut_off_too(env: Env) -> None:
    with env.settings_override(payment_webhook_secret="whsec_limits"):
        ex = drive(env, "/billing/payments/webhook", [b"y" * 8192] * 100, chunked=True)
    limit = env.platform.settings.max_webhook_body_bytes
    assert_too_large(ex, limit)
    assert ex.read <= limit + 8192


def test_without_a_secret_the_webhook_reads_nothing(env: Env) -> None:
    assert env.platform.settings.payment_webhook_secret == ""
    for declared, chunked in ((100, False), (None, True)):
        ex = drive(env, "/billing/payments/webhook", [b"{}"], declared=declared, chunked=chunked)
        assert ex.status == 404 and ex.body["error"]["code"] == "not_configured"
        assert ex.asked == 0
        assert ex.headers["connection"] == "close"  # the unread body is not drained


def test_bodies_within_the_limit_are_served_as_before(env: Env) -> None:
    body = json.dumps({"email": "limits-ok@example.com", "password": PASSWORD}).encode()
    half = len(body) // 2
    ex = drive(env, "/auth/signup", [body[:half], body[half:]], chunked=True)
    assert ex.status == 201, ex.body
    assert "connection" not in ex.headers  # the whole body was read: keep-alive stays
    # Just under the JSON limit: read in full, then refused for what it says, not its size.
    with env.settings_override(max_json_body_bytes=4096):
        padded = {"email": "not an address", "password": "p" * 1000}
        assert len(json.dumps(padded)) < 4096
        assert_error(env.call("POST", "/auth/signup", json=padded), 422, "invalid_email")
        big = {"email": "not an address", "password": "p" * 5000}
        assert_error(env.call("POST", "/auth/signup", json=big), 413, "too_large")


def test_the_limits_follow_the_settings(env: Env) -> None:
    user = env.signup("limits")
    body = {"name": "roomy", "memory": "9" * 3000}
    with env.settings_override(max_json_body_bytes=2048):
        err = assert_error(env.call("POST", "/apps", user.session, json=body), 413, "too_large")
        assert "2048 bytes" in err["message"]
    resp = env.call("POST", "/apps", user.session, json=body)
    assert resp.status_code == 422  # under the usual 1 MiB: judged on its contents
    assert env.ok("GET", "/apps", user.session) == []
