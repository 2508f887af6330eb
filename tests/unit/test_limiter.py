"""The login and sign-up limiters, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from berth.services.accounts import LoginLimiter, SignupLimiter
from berth.services.ratelimit import RateLimited, Rule, SlidingWindow, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_allows_the_limit_then_says_how_long_to_wait() -> None:
    clock = Clock()
    window = SlidingWindow(clock=clock)
    rule = Rule(limit=3, window=60.0)
    for step in range(3):
        assert window.wait("k", rule) == 0
        window.add("k", rule)
        clock.now += 10 * (step + 1)  # events at 1000, 1010, 1030
    clock.now = 1040.0
    assert window.wait("k", rule) == 20  # the first event leaves the window at 1060
    clock.now = 1060.0
    assert window.wait("k", rule) == 0
    assert window.wait("other", rule) == 0


def test_a_window_keeps_at_most_max_keys_dropping_the_oldest() -> None:
    clock = Clock()
    window = SlidingWindow(max_keys=100, clock=clock)
    rule = Rule(limit=1, window=600.0)
    for n in range(1000):
        window.add(f"key-{n}", rule)
    assert len(window) == 100
    assert window.wait("key-999", rule) > 0  # recent keys are kept
    assert window.wait("key-0", rule) == 0  # the oldest were forgotten


def test_times_per_key_are_bounded_by_the_limit() -> None:
    window = SlidingWindow(clock=Clock())
    rule = Rule(limit=4, window=600.0)
    for _ in range(10_000):
        window.add("k", rule)
    assert len(window._events["k"]) == 4


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "v4:192.0.2.7"),
        ("::ffff:192.0.2.7", "v4:192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "v6:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "v6:2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "v6:2001:db8:1:3::/64"),
        ("testclient", "other:testclient"),
        ("", "other:"),
    ],
)
def test_addresses_count_per_ipv4_address_and_per_ipv6_64(ip: str, key: str) -> None:
    assert address_key(ip) == key


def test_a_guesser_at_one_address_does_not_hold_back_the_owner_at_another() -> None:
    limiter = LoginLimiter(clock=Clock())
    for _ in range(5):
        assert limiter.refusal("owner@example.com", "203.0.113.9") is None
        limiter.failed("owner@example.com", "203.0.113.9")
    refused = limiter.refusal("owner@example.com", "203.0.113.9")
    assert refused is not None and refused.rule == "account_address" and refused.wait > 0
    assert limiter.refusal("owner@example.com", "198.51.100.1") is None


def test_one_address_spraying_many_emails_is_held_back() -> None:
    limiter = LoginLimiter(clock=Clock())
    for n in range(20):
        limiter.failed(f"user-{n}@example.com", "203.0.113.9")
    refused = limiter.refusal("someone-else@example.com", "203.0.113.9")
    assert refused is not None and refused.rule == "address"
    assert limiter.refusal("someone-else@example.com", "203.0.113.10") is None


def test_the_per_email_ceiling_is_high_and_short() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock=clock)
    for n in range(99):
        limiter.failed("owner@example.com", f"10.0.{n // 250}.{n % 250}")
    assert limiter.refusal("owner@example.com", "198.51.100.1") is None
    limiter.failed("owner@example.com", "10.9.9.9")
    refused = limiter.refusal("owner@example.com", "198.51.100.1")
    assert refused is not None and refused.rule == "email" and refused.wait <= 60
    clock.now += 61
    assert limiter.refusal("owner@example.com", "198.51.100.1") is None


def test_a_success_clears_only_that_address_for_that_email() -> None:
    limiter = LoginLimiter(clock=Clock())
    for _ in range(4):
        limiter.failed("a@example.com", "203.0.113.9")
    limiter.succeeded("a@example.com", "203.0.113.9")
    for _ in range(4):
        limiter.failed("a@example.com", "203.0.113.9")
    assert limiter.refusal("a@example.com", "203.0.113.9") is None


def test_signups_per_address_with_retry_after() -> None:
    clock = Clock()
    limiter = SignupLimiter(clock=clock)
    rule = Rule(limit=2, window=3600.0)
    limiter.hit("2001:db8::1", rule)
    limiter.hit("2001:db8::2", rule)  # the same /64
    with pytest.raises(RateLimited) as refused:
        limiter.hit("2001:db8::3", rule)
    assert refused.value.status == 429 and refused.value.code == "too_many_signups"
    assert refused.value.retry_after == 3600
    assert "try again in 3600s" in refused.value.message
    limiter.hit("2001:db8:0:1::1", rule)  # another /64
    clock.now += 3600
    limiter.hit("2001:db8::3", rule)
