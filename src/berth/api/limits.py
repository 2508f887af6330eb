"""Request body limits, enforced before and while a body is read, never after buffering it.

A pure ASGI middleware, outside everything else: a declared ``Content-Length`` over the limit
of the route's class is answered 413 at once, without reading a byte of the body; a chunked or
undeclared body is counted as it arrives, and answered 413 the moment it passes the limit (the
app then sees the client as gone and stops). Any answer given while the client is still sending
closes the connection, so that the server never reads (even to discard) the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.errors import error_body
from berth.settings import Settings

API_PREFIX = "/api/v1"
WEBHOOK_PATH = f"{API_PREFIX}/billing/payments/webhook"
_BUILD_PATH = re.compile(rf"^{re.escape(API_PREFIX)}/apps/[^/]+/builds/?$")


@dataclass(frozen=True)
class BodyLimit:
    what: str  # for the message: "request body", "build context", "payment webhook body"
    max_bytes: int


def body_limit(path: str, settings: Settings) -> BodyLimit:
    """The limit of the route class ``path`` belongs to: the build upload and the payment
    webhook have their own; every other route takes JSON (or nothing)."""
    if path.rstrip("/") == WEBHOOK_PATH:
        return BodyLimit("payment webhook body", settings.max_webhook_body_bytes)
    if _BUILD_PATH.match(path):
        return BodyLimit("build context", settings.max_build_context_bytes)
    return BodyLimit("request body", settings.max_json_body_bytes)


def too_large_message(limit: BodyLimit) -> str:
    return f"the {limit.what} is larger than the limit of {limit.max_bytes} bytes"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None or not raw.strip().isdigit():
        return None  # the server's parser refuses a malformed one before we are called
    return int(raw)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], BodyLimit]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await _send_too_large(send, limit)
            return
        chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
        guard = _Guard(limit, receive, send, expects_body=chunked or bool(declared))
        await self.app(scope, guard.receive, guard.send)


class _Guard:
    """One request's count of body bytes, and who has answered it."""

    def __init__(self, limit: BodyLimit, receive: Receive, send: Send, expects_body: bool):
        self.limit = limit
        self._receive, self._send = receive, send
        self.received = 0
        self.body_done = not expects_body
        self.refused = False  # we answered 413: the app's own answer is dropped
        self.started = False

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False):
            self.body_done = True
        if self.received > self.limit.max_bytes:
            self.refused = True
            if not self.started:
                self.started = True
                await _send_too_large(self._send, self.limit)
            # The app stops reading as if the client had left; nothing of the body is kept.
            return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            if not self.body_done:
                # Answered before the whole body came: close rather than read the rest.
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)


async def _send_too_large(send: Send, limit: BodyLimit) -> None:
    body = json.dumps(error_body("too_large", too_large_message(limit))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
