"""Signed webhooks: HMAC-SHA256 over timestamp and body, replay window, retry backoff."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.billing.webhooks import (
    DEFAULT_TOLERANCE_SECONDS,
    SIGNATURE_HEADER,
    is_retryable,
    retry_delay,
    sign,
    verify,
)
from berth.errors import InvalidInput, Unauthorized

SECRET = b"whsec_test_secret"
BODY = b'{"event":"payment.succeeded","amount":"12.50","currency":"EUR"}'
TS = 1_700_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, TS, BODY) == f"t={TS},v1={expected}"
    assert SIGNATURE_HEADER == "Berth-Signature"


def test_a_fresh_signature_verifies_and_returns_its_timestamp() -> None:
    assert verify(SECRET, sign(SECRET, TS, BODY), BODY, now=TS + 10) == TS
    assert verify(SECRET, sign(SECRET, TS, b""), b"", now=TS) == TS


@given(st.binary(max_size=2000), st.binary(min_size=1, max_size=64), st.integers(0, 10**11))
def test_sign_then_verify_round_trips(body: bytes, secret: bytes, timestamp: int) -> None:
    assert verify(secret, sign(secret, timestamp, body), body, now=timestamp) == timestamp


def expect_unauthorized(
    header: str | None, body: bytes = BODY, now: float = TS, code: str = "bad_signature"
) -> None:
    with pytest.raises(Unauthorized) as caught:
        verify(SECRET, header, body, now=now)
    assert caught.value.status == 401
    assert caught.value.code == code


def test_a_tampered_body_fails() -> None:
    expect_unauthorized(sign(SECRET, TS, BODY), body=BODY.replace(b"12.50", b"99.50"))


@given(st.binary(min_size=1, max_size=200), st.integers(0, 199), st.integers(1, 255))
def test_any_changed_byte_fails(body: bytes, position: int, flip: int) -> None:
    header = sign(SECRET, TS, body)
    index = position % len(body)
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(Unauthorized):
        verify(SECRET, header, tampered, now=TS)


def test_a_wrong_secret_fails() -> None:
    expect_unauthorized(sign(b"another secret", TS, BODY))


def test_a_changed_timestamp_fails() -> None:
    signature = sign(SECRET, TS, BODY).split(",")[1]
    expect_unauthorized(f"t={TS + 1},{signature}", now=TS + 1)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS + 1, 3600, 86_400 * 30])
def test_an_old_signature_is_a_replay(offset: int) -> None:
    expect_unauthorized(sign(SECRET, TS, BODY), now=TS + offset, code="stale_signature")


def test_a_signature_from_the_future_is_refused_too() -> None:
    expect_unauthorized(sign(SECRET, TS + 600, BODY), now=TS, code="stale_signature")


def test_the_tolerance_is_inclusive_and_configurable() -> None:
    header = sign(SECRET, TS, BODY)
    assert verify(SECRET, header, BODY, now=TS + DEFAULT_TOLERANCE_SECONDS) == TS
    assert verify(SECRET, header, BODY, now=TS - DEFAULT_TOLERANCE_SECONDS) == TS
    assert verify(SECRET, header, BODY, now=TS + 3000, tolerance_seconds=3600) == TS
    with pytest.raises(Unauthorized):
        verify(SECRET, header, BODY, now=TS + 11, tolerance_seconds=10)


def test_one_matching_signature_among_several_is_enough() -> None:
    """During secret rotation the sender signs with the old and the new secret."""
    new = sign(SECRET, TS, BODY).split(",")[1]
    old = sign(b"old secret", TS, BODY).split(",")[1]
    assert verify(SECRET, f"t={TS},{old},{new}", BODY, now=TS) == TS
    assert verify(SECRET, f"t={TS}, {new}, v0=legacy", BODY, now=TS) == TS


GOOD_HEX = sign(SECRET, TS, BODY).split("v1=")[1]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={GOOD_HEX}",  # no timestamp
        f"t={TS}",  # no signature
        f"t={TS},v1=",
        f"t={TS},v1={GOOD_HEX[:-1]}",  # too short
        f"t={TS},v1={GOOD_HEX.upper()}",  # not lowercase hex
        f"t={TS},v1={GOOD_HEX[:-1]}g",
        f"t=abc,v1={GOOD_HEX}",
        f"t=-{TS},v1={GOOD_HEX}",
        f"t={TS}.5,v1={GOOD_HEX}",
        f"t={TS},t={TS},v1={GOOD_HEX}",  # two timestamps
        f"t={TS};v1={GOOD_HEX}",
        f"t={TS},v1={GOOD_HEX}," + "x" * 2000,  # oversized
        f"t={TS},v1={GOOD_HEX},ü=1",  # not ASCII
        f"t=99999999999999999999,v1={GOOD_HEX}",
    ],
)
def test_malformed_headers_fail(header: str | None) -> None:
    expect_unauthorized(header)


@given(st.text(max_size=300))
def test_verify_never_crashes_on_arbitrary_headers(header: str) -> None:
    with pytest.raises(Unauthorized):
        verify(SECRET, header, BODY, now=TS)


@pytest.mark.parametrize("secret", [b"", "text-secret"])
def test_a_secret_must_be_non_empty_bytes(secret: object) -> None:
    with pytest.raises(InvalidInput):
        sign(secret, TS, BODY)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        verify(secret, sign(SECRET, TS, BODY), BODY, now=TS)  # type: ignore[arg-type]


@pytest.mark.parametrize("timestamp", [-1, 1.5, True])
def test_sign_needs_an_integer_timestamp(timestamp: object) -> None:
    with pytest.raises(InvalidInput):
        sign(SECRET, timestamp, BODY)  # type: ignore[arg-type]


# --- retries ------------------------------------------------------------------------------------


def test_retry_delay_doubles_up_to_the_cap() -> None:
    delays = [retry_delay(n) for n in range(1, 16)]
    assert delays[:6] == [1, 2, 4, 8, 16, 32]
    assert delays[-1] == 3600
    assert delays == sorted(delays)
    assert retry_delay(5000) == 3600  # no overflow
    assert retry_delay(3, base_seconds=5, factor=3, cap_seconds=30) == 30
    assert retry_delay(2, base_seconds=5, factor=3, cap_seconds=30) == 15
    assert retry_delay(9, base_seconds=2, factor=1) == 2


def test_retry_delay_is_deterministic_without_jitter() -> None:
    assert [retry_delay(n) for n in range(1, 10)] == [retry_delay(n) for n in range(1, 10)]


def test_injected_jitter_stays_between_half_and_the_full_delay() -> None:
    rng = random.Random(42)
    for attempt in range(1, 20):
        full = retry_delay(attempt)
        jittered = retry_delay(attempt, rng=rng)
        assert full / 2 <= jittered <= full
    # The same seed gives the same schedule: reproducible in tests.
    a = [retry_delay(n, rng=random.Random(7)) for n in range(1, 8)]
    b = [retry_delay(n, rng=random.Random(7)) for n in range(1, 8)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": 0},
        {"attempt": -1},
        {"attempt": True},
        {"attempt": 1, "base_seconds": 0},
        {"attempt": 1, "base_seconds": 10, "cap_seconds": 5},
        {"attempt": 1, "factor": 0.5},
        {"attempt": 1, "cap_seconds": float("inf")},
    ],
)
def test_retry_delay_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        retry_delay(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (None, True),
        (408, True),
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (200, False),
        (204, False),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (422, False),
    ],
)
def test_which_outcomes_are_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(status) is retry
