"""Password verifiers computed by Berth, so a plaintext password never reaches a server's
statement log: PostgreSQL's SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL stores it), the SHA-256
hex Redis's ACL accepts with ``#``, and MariaDB's mysql_native_password hash (``IDENTIFIED BY
PASSWORD``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def postgres_scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    # Berth's passwords are ASCII letters and digits, which SASLprep leaves as they are.
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def redis_password_hash(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def mysql_native_password_hash(password: str) -> str:
    # The format MariaDB stores: "*" + upper-case hex of SHA1(SHA1(password)).
    inner = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 (the protocol's own)
    return "*" + hashlib.sha1(inner).hexdigest().upper()  # noqa: S324
