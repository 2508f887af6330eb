"""HTTP-01 answers waiting to be served: token -> key authorisation, shared across threads.

The ACME client puts an answer before telling the CA to validate and removes it afterwards;
whatever serves ``/.well-known/acme-challenge/TOKEN`` (the ingress, or challenge_server) reads.
"""

from __future__ import annotations

import re
import threading
from typing import Protocol

# RFC 8555 tokens are base64url; 128 characters is far above any CA's (Let's Encrypt: 43).
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A key authorisation is TOKEN "." base64url(SHA-256 thumbprint).
_KEY_AUTHZ_RE = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,128}")


def valid_token(token: str) -> bool:
    return bool(TOKEN_RE.fullmatch(token))


def valid_key_authorization(text: str) -> bool:
    return bool(_KEY_AUTHZ_RE.fullmatch(text))


class Challenges(Protocol):
    """Where the ACME client leaves its answers: this in-memory store (one process) or the
    store's table (``berth.certs.store_challenges``: every Berth server answers)."""

    def put(self, token: str, key_authorization: str) -> None: ...

    def get(self, token: str) -> str | None: ...

    def remove(self, token: str) -> None: ...


class ChallengeStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}

    def put(self, token: str, key_authorization: str) -> None:
        if not valid_token(token) or not _KEY_AUTHZ_RE.fullmatch(key_authorization):
            raise ValueError("malformed ACME token or key authorisation")
        with self._lock:
            self._answers[token] = key_authorization

    def get(self, token: str) -> str | None:
        if not valid_token(token):
            return None
        with self._lock:
            return self._answers.get(token)

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)
