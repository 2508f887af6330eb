"""A websocket and server-sent events client for tests: a raw socket doing the RFC 6455
handshake and framing, so a test can also misbehave (forge headers, stop mid-handshake, send
a 10 MB frame) and read exactly what came back.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field

from tests.support.wsapp import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    encode_frame,
    read_frame,
)

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "OP_TEXT", "Closed", "WsClient"]


class Closed(Exception):
    """The session ended: ``code`` is the close frame's code, None when the connection just
    ended (EOF or a reset) without one."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed with {code} {reason}".strip())
        self.code, self.reason = code, reason


@dataclass
class Handshake:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head up to the blank line, and whatever came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise Closed(None, f"connection closed during the handshake after {data!r}")
        data += chunk
        if len(data) > 65536:
            raise ValueError("response head over 64 KiB")
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _parse_head(head: bytes) -> Handshake:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Handshake(int(status_line.split()[1]), headers)


class _Reader:
    """A file-like read(n) over a socket with bytes already received in front."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock, self.pending = sock, pending

    def read(self, n: int) -> bytes:
        while len(self.pending) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.pending)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                data, self.pending = self.pending, b""
                return data
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data


class WsClient:
    """One websocket session. ``connect`` does the handshake (``Handshake`` of the reply);
    a reply other than 101 raises ``Closed``, with the status in the reason."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/ws",
        *,
        host_header: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = (host, port)
        self.path = path
        self.host_header = host_header or f"{host}:{port}"
        self.extra_headers = dict(headers or {})
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.handshake: Handshake | None = None
        self._reader: _Reader | None = None

    def __enter__(self) -> WsClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def request_head(self, key: str) -> bytes:
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.extra_headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def connect(self) -> Handshake:
        key = base64.b64encode(os.urandom(16)).decode()
        sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock = sock
        try:
            sock.sendall(self.request_head(key))
            head, rest = _read_head(sock)
            handshake = _parse_head(head)
            if handshake.status != 101:
                raise Closed(None, f"handshake answered {handshake.status}: {head[:200]!r}")
            if handshake.headers.get("sec-websocket-accept") != accept_key(key):
                raise Closed(None, "wrong Sec-WebSocket-Accept")
        except BaseException:
            self.abort()
            raise
        self.handshake = handshake
        self._reader = _Reader(sock, rest)
        return handshake

    # -- sending ---------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(encode_frame(opcode, payload, mask=os.urandom(4)))

    def send_text(self, text: str) -> None:
        self.send(OP_TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self.send(OP_BINARY, data)

    def ping(self, payload: bytes = b"") -> None:
        self.send(OP_PING, payload)

    def close(self, code: int = 1000) -> int | None:
        """Send a close and read until the peer's close; its code."""
        self.send(OP_CLOSE, struct.pack("!H", code))
        try:
            while True:
                self.recv()
        except Closed as closed:
            return closed.code
        finally:
            self.abort()

    def abort(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- receiving -------------------------------------------------------------------------

    def recv(self, *, answer_pings: bool = True) -> tuple[int, bytes]:
        """The next data or control frame (opcode, payload); a ping is answered first
        (and returned, so a test sees the app's pings). A close raises ``Closed``."""
        assert self._reader is not None
        try:
            _fin, opcode, payload = read_frame(self._reader, masked=False, limit=1 << 30)
        except ConnectionError:
            raise Closed(None, "connection ended without a close frame") from None
        except OSError as exc:  # a timeout included: the caller decides what it means
            raise Closed(None, f"{type(exc).__name__}: {exc}") from exc
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            raise Closed(code, payload[2:].decode(errors="replace"))
        if opcode == OP_PING and answer_pings:
            self.send(OP_PONG, payload)
        return opcode, payload

    def recv_data(self) -> tuple[int, bytes]:
        """The next text or binary message, skipping pings and pongs."""
        while True:
            opcode, payload = self.recv()
            if opcode in (OP_TEXT, OP_BINARY):
                return opcode, payload

    def echo(self, text: str) -> str:
        """Send ``text``, return what came back."""
        self.send_text(text)
        opcode, payload = self.recv_data()
        assert opcode == OP_TEXT, opcode
        return payload.decode()


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None


def sse_events(
    host: str, port: int, path: str, *, host_header: str, timeout: float = 10.0
) -> Generator[Event, None, None]:
    """The events of one text/event-stream response, as they arrive (a read waits at most
    ``timeout``). The response head must be 200 with that content type."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        head, rest = _read_head(sock)
        response = _parse_head(head)
        assert response.status == 200, head
        assert response.headers["content-type"].startswith("text/event-stream"), head
        chunked = response.headers.get("transfer-encoding", "").lower() == "chunked"
        body = _ChunkedBody(sock, rest) if chunked else _PlainBody(sock, rest)
        buffer = ""
        for text in body:
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                fields: dict[str, str] = {}
                for line in block.split("\n"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                yield Event(
                    fields.get("event", "message"), fields.get("data", ""), fields.get("id")
                )
    finally:
        sock.close()


class _PlainBody:
    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock, self.rest = sock, rest

    def __iter__(self) -> Iterator[str]:
        if self.rest:
            yield self.rest.decode()
        while chunk := self.sock.recv(65536):
            yield chunk.decode()


class _ChunkedBody:
    """Chunked transfer coding (nginx re-chunks a close-delimited upstream body)."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.reader = _Reader(sock, rest)

    def _line(self) -> bytes:
        line = b""
        while not line.endswith(b"\r\n"):
            byte = self.reader.read(1)
            if not byte:
                raise Closed(None, "stream ended inside a chunk header")
            line += byte
        return line[:-2]

    def __iter__(self) -> Iterator[str]:
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                return
            data = self.reader.read(size + 2)
            if len(data) != size + 2:
                raise Closed(None, "stream ended inside a chunk")
            yield data[:-2].decode()
