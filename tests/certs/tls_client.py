"""A TLS client for the tests: SNI as given, ALPN as asked, one HTTP/1.1 request."""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class TlsAnswer:
    alpn: str | None  # the protocol the server chose
    fingerprint: bytes  # SHA-256 of the leaf the server showed
    status: int  # 0 when no request was sent (ALPN probe only)
    headers: dict[str, str]
    body: bytes


def _context(ca_pem: str | None) -> ssl.SSLContext:
    if ca_pem is None:  # see what is served without judging it
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cadata=ca_pem)


def tls_request(
    port: int,
    sni: str,
    *,
    ca_pem: str | None,
    path: str = "/",
    alpn: tuple[str, ...] = ("http/1.1",),
    send: bool = True,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> TlsAnswer:
    context = _context(ca_pem)
    context.set_alpn_protocols(list(alpn))
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
        chosen = tls.selected_alpn_protocol()
        if not send:
            return TlsAnswer(chosen, hashlib.sha256(der).digest(), 0, {}, b"")
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return TlsAnswer(chosen, hashlib.sha256(der).digest(), int(lines[0].split()[1]), headers, body)
