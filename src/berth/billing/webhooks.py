"""Signed webhooks, both ways: payment notifications in, billing events out.

Signature: ``HMAC-SHA256(secret, f"{timestamp}.".encode() + body)`` in lowercase hex, sent in the
``Berth-Signature`` header as ``t=<unix seconds>,v1=<hex>``. The timestamp is signed with the body,
so a captured request cannot be replayed outside the tolerance window, and its body cannot be
changed. A header may carry several ``v1`` values (while a secret is rotated); one match suffices.
Comparison is constant-time (:func:`hmac.compare_digest`).

Delivery: a failed delivery is retried after :func:`retry_delay` - exponential backoff with a cap,
deterministic unless a random source is injected for jitter. :func:`is_retryable` says which
outcomes are worth retrying.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import re

from berth.errors import InvalidInput, Unauthorized

SIGNATURE_HEADER = "Berth-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
_MAX_HEADER = 1024
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or not secret:
        raise InvalidInput("webhook secret must be non-empty bytes", code="invalid_secret")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Berth-Signature`` header value for ``body`` sent at ``timestamp``."""
    _check_secret(secret)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise InvalidInput("timestamp must be a non-negative integer", code="invalid_time")
    return f"t={timestamp},{SCHEME}={_digest(secret, timestamp, body)}"


def verify(
    secret: bytes,
    header: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a signature header; return its timestamp. Raises ``Unauthorized`` when it fails.

    Fails on a missing or malformed header, a signature that does not match (wrong secret, changed
    body or timestamp), and a timestamp more than ``tolerance_seconds`` from ``now`` (a replay, or
    a sender whose clock is far off).
    """
    _check_secret(secret)
    timestamp, signatures = _parse_header(header)
    expected = _digest(secret, timestamp, body)
    # Compare against every candidate, without stopping early, so timing reveals nothing.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unauthorized("webhook signature does not match", code="bad_signature")
    if abs(now - timestamp) > tolerance_seconds:
        raise Unauthorized("webhook timestamp is outside the tolerance", code="stale_signature")
    return timestamp


def _parse_header(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header", code="bad_signature")
    if not isinstance(header, str) or len(header) > _MAX_HEADER or not header.isascii():
        raise Unauthorized(f"malformed {SIGNATURE_HEADER} header", code="bad_signature")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise Unauthorized(f"malformed {SIGNATURE_HEADER} header", code="bad_signature")
        if name == "t":
            timestamps.append(value)
        elif name == SCHEME and _HEX_SHA256.fullmatch(value):
            signatures.append(value)
        # Other schemes (or future versions) are ignored, as long as one v1 is present.
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]) or not signatures:
        raise Unauthorized(f"malformed {SIGNATURE_HEADER} header", code="bad_signature")
    return int(timestamps[0]), signatures


def retry_delay(
    attempt: int,
    *,
    base_seconds: float = 1.0,
    factor: float = 2.0,
    cap_seconds: float = 3600.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``min(cap, base * factor ** (attempt - 1))``; with ``rng``, "equal jitter": a uniform value
    between half of that and all of it, so that many failed deliveries do not retry in lockstep.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidInput("attempt must be an integer >= 1", code="invalid_attempt")
    if not (0 < base_seconds <= cap_seconds and math.isfinite(cap_seconds) and factor >= 1):
        raise InvalidInput("need 0 < base <= cap (finite) and factor >= 1", code="invalid_backoff")
    if factor == 1:
        delay = base_seconds
    else:
        # Cap the exponent before raising, so that attempt 5000 does not overflow a float.
        exponent_to_cap = math.ceil(math.log(cap_seconds / base_seconds, factor))
        delay = min(cap_seconds, base_seconds * factor ** min(attempt - 1, exponent_to_cap))
    if rng is None:
        return delay
    return rng.uniform(delay / 2, delay)


def is_retryable(status_code: int | None) -> bool:
    """Whether a delivery outcome deserves another attempt.

    ``None`` (connection error or timeout), 408, 425, 429 and 5xx are retried; 2xx is delivered and
    any other status is a permanent refusal by the receiver.
    """
    if status_code is None:
        return True
    return status_code in (408, 425, 429) or 500 <= status_code <= 599
