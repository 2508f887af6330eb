"""A websocket echo and server-sent events app for Berth's tests. Standard library only: the
same file runs in the test process and in a berth/python:3 container (``python3 wsapp.py``).

    GET /healthz          200 "ok"
    GET /                 200 "wsapp <instance> <release>"
    GET /ws               RFC 6455 echo: text and binary messages come back as sent, pings
                          get their pong, a close is answered. ``?ping=S``: the app itself
                          pings every S seconds. The handshake reply names what the app
                          received: X-Seen-Forwarded-For/-Proto/-Host, X-Seen-Real-IP, and
                          its X-Instance and X-Release.
    GET /events?stream=ID one server-sent event every 100 ms (``?interval=S``) until
                          ``GET /events/stop?stream=ID`` (it answers how many it had sent and
                          whether the stream still ran) or 600 events.
                          ``?accel_buffering=no``: with X-Accel-Buffering: no.

A message or frame over WS_MAX_MESSAGE bytes (1 MiB) is refused with close code 1009 before
its payload is read. On SIGTERM the app stops accepting, closes each open websocket with 1001
("going away") and exits: what an instance that Berth replaces does to its sessions. With
WSAPP_ON_SIGTERM=ignore it ignores SIGTERM, as a careless app does, and runs until killed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Protocol, cast
from urllib.parse import parse_qs, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = int(os.environ.get("WS_MAX_MESSAGE", str(1024 * 1024)))
MAX_EVENTS = 600
INSTANCE = os.environ.get("INSTANCE") or socket.gethostname()
RELEASE = os.environ.get("RELEASE", "1")
SEEN_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP")


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame. A client masks (RFC 6455 5.3); a server never does."""
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: a per-byte loop would make a 1 MiB echo take seconds.
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def read_exact(stream: Readable, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ConnectionError("peer closed mid-frame")
    return data


def read_frame(stream: Readable, *, masked: bool, limit: int) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of the next frame; the length is checked before the payload
    is read, so an oversized frame costs nothing."""
    b0, b1 = read_exact(stream, 2)
    fin, opcode, has_mask, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
    if b0 & 0x70:
        raise ProtocolError(1002, "reserved bits set")
    if has_mask != masked:
        raise ProtocolError(1002, "client frames must be masked" if masked else "masked frame")
    if n == 126:
        (n,) = struct.unpack("!H", read_exact(stream, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read_exact(stream, 8))
    if opcode >= 0x8 and (n > 125 or not fin):
        raise ProtocolError(1002, "bad control frame")
    if n > limit:
        raise ProtocolError(1009, f"frame of {n} bytes is over {limit}")
    mask = read_exact(stream, 4) if masked else b""
    payload = read_exact(stream, n)
    return fin, opcode, apply_mask(payload, mask) if masked else payload


class Sessions:
    """The open websockets, so that SIGTERM can say goodbye to each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[WebSocket] = set()
        self.refused: list[int] = []  # the close codes of the sessions it ended for a fault

    def close_all(self, code: int, reason: str) -> None:
        with self.lock:
            sockets = list(self.open)
        for ws in sockets:
            ws.close(code, reason)


class WebSocket:
    """The server side of one session over an upgraded connection."""

    def __init__(self, connection: socket.socket, reader: Readable, sessions: Sessions) -> None:
        self.connection, self.reader, self.sessions = connection, reader, sessions
        self.write_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, opcode: int, payload: bytes) -> None:
        with self.write_lock:
            self.connection.sendall(encode_frame(opcode, payload))

    def close(self, code: int, reason: str = "") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.send(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def pinger(self, interval: float) -> None:
        n = 0
        while not self.closed.wait(interval):
            n += 1
            try:
                self.send(OP_PING, f"app-ping {n}".encode())
            except OSError:
                return

    def serve(self) -> None:
        """Echo until the session ends."""
        message: list[bytes] = []
        opcode_of_message = OP_TEXT
        try:
            while not self.closed.is_set():
                fin, opcode, payload = read_frame(self.reader, masked=True, limit=MAX_MESSAGE)
                if opcode == OP_PING:
                    self.send(OP_PONG, payload)
                elif opcode == OP_PONG:
                    continue
                elif opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                    self.close(code if 1000 <= code < 5000 else 1002)
                    return
                else:
                    if opcode == OP_CONT and not message:
                        raise ProtocolError(1002, "continuation without a message")
                    if opcode != OP_CONT:
                        if message:
                            raise ProtocolError(1002, "new message inside a fragmented one")
                        opcode_of_message = opcode
                    if opcode_of_message not in (OP_TEXT, OP_BINARY):
                        raise ProtocolError(1002, f"unknown opcode {opcode_of_message}")
                    message.append(payload)
                    if sum(map(len, message)) > MAX_MESSAGE:
                        raise ProtocolError(1009, f"message over {MAX_MESSAGE} bytes")
                    if fin:
                        data = b"".join(message)
                        message = []
                        if opcode_of_message == OP_TEXT:
                            try:
                                data.decode("utf-8")
                            except UnicodeDecodeError:
                                raise ProtocolError(1007, "text is not UTF-8") from None
                        self.send(opcode_of_message, data)
        except ProtocolError as exc:
            with self.sessions.lock:
                self.sessions.refused.append(exc.code)
            self.close(exc.code, str(exc))
            self.linger()
        except (ConnectionError, OSError):
            self.closed.set()

    def linger(self) -> None:
        """Discard what the peer still sends, for up to 1 s, before the socket closes: closed
        with unread data, it would reset the connection, and a reset can overtake the close
        frame on its way to the client."""
        deadline = time.monotonic() + 1.0
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    return
        except OSError:
            return


class Streams:
    """Running event streams by id, so a stop request on another connection can end one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stops: dict[str, threading.Event] = {}
        self.sent: dict[str, int] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wsapp/1.0"

    @property
    def app(self) -> Server:
        return cast(Server, self.server)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self.reply(200, "ok\n")
        elif url.path == "/":
            self.reply(200, f"wsapp {self.app.instance} {RELEASE}\n")
        elif url.path == "/ws":
            self.websocket(query)
        elif url.path == "/events":
            self.events(query)
        elif url.path == "/events/stop":
            self.stop_stream(query.get("stream", ""))
        else:
            self.reply(404, "not found\n")

    def reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def websocket(self, query: dict[str, str]) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        upgrade = self.headers.get("Upgrade", "").lower()
        if upgrade != "websocket" or self.headers.get("Sec-WebSocket-Version") != "13" or not key:
            self.reply(400, "a websocket handshake (version 13) is expected\n")
            return
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        for name in SEEN_HEADERS:
            # Every value the app got, one header each: a forged one would show up here.
            values = self.headers.get_all(name) or []
            self.send_header("X-Seen-" + name.removeprefix("X-"), " | ".join(values))
        self.send_header("X-Instance", self.app.instance)
        self.send_header("X-Release", RELEASE)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sessions = self.app.sessions
        ws = WebSocket(self.connection, self.rfile, sessions)
        with sessions.lock:
            sessions.open.add(ws)
        try:
            if "ping" in query:
                threading.Thread(
                    target=ws.pinger, args=(float(query["ping"]),), daemon=True
                ).start()
            ws.serve()
        finally:
            ws.closed.set()
            with sessions.lock:
                sessions.open.discard(ws)

    def events(self, query: dict[str, str]) -> None:
        stream = query.get("stream") or f"s{time.monotonic_ns()}"
        interval = float(query.get("interval", "0.1"))
        stop = threading.Event()
        streams = self.app.streams
        with streams.lock:
            streams.stops[stream], streams.sent[stream] = stop, 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            if query.get("accel_buffering") == "no":  # nginx's per-response opt-out
                self.send_header("X-Accel-Buffering", "no")
            # No length: the stream ends when the app closes it.
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for n in range(1, MAX_EVENTS + 1):
                self.wfile.write(
                    f"id: {n}\nevent: tick\ndata: {n} {self.app.instance}\n\n".encode()
                )
                self.wfile.flush()
                with streams.lock:
                    streams.sent[stream] = n
                if stop.wait(interval):
                    break
            self.wfile.write(b"event: end\ndata: end\n\n")
            self.wfile.flush()
        except OSError:
            pass
        finally:
            with streams.lock:
                streams.stops.pop(stream, None)

    def stop_stream(self, stream: str) -> None:
        streams = self.app.streams
        with streams.lock:
            stop, sent = streams.stops.get(stream), streams.sent.get(stream, 0)
            if stop is not None:
                stop.set()
        self.reply(200, f"{'running' if stop else 'ended'} {sent}\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many test clients connect at once (and some never finish): a deep backlog.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], instance: str = INSTANCE) -> None:
        super().__init__(address, Handler)
        self.instance = instance
        self.sessions = Sessions()
        self.streams = Streams()

    def stop(self, code: int = 1001, reason: str = "going away") -> None:
        """Stop accepting, then close every open websocket with ``code``."""
        self.shutdown()
        self.server_close()
        self.sessions.close_all(code, reason)


def serve(port: int = 0, host: str = "127.0.0.1", instance: str = INSTANCE) -> Server:
    """Start the app on a thread (for tests in this process); ``stop()`` stops it."""
    server = Server((host, port), instance)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    server = Server(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    ignore = os.environ.get("WSAPP_ON_SIGTERM") == "ignore"
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"wsapp {INSTANCE} release {RELEASE} on :{server.server_address[1]}", flush=True)
    stopping.wait()
    print("stopping: closing websockets with 1001", flush=True)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
