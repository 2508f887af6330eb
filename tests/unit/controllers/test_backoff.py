"""The one retry policy: exponential per key, capped, forgotten on success."""

from __future__ import annotations

from berth.controllers.backoff import Backoff, exponential_delay


def test_delays_double_from_the_base_up_to_the_cap() -> None:
    assert [exponential_delay(n, base=1, cap=60) for n in range(9)] == [
        0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0
    ]  # fmt: skip
    assert exponential_delay(10**6, base=1, cap=60) == 60.0  # no overflow after days of failing


def test_a_failed_key_waits_and_others_do_not() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert backoff.ready("a", 100.0)

    assert backoff.failed("a", 100.0, "boom") == 101.0

    assert not backoff.ready("a", 100.5)
    assert backoff.ready("a", 101.0)
    assert backoff.ready("b", 100.5)
    assert backoff.waiting(100.5) == {"a": "boom"}
    assert backoff.waiting(101.0) == {}


def test_each_failure_in_a_row_doubles_the_wait_until_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    now, waits = 0.0, []
    for _ in range(6):
        due = backoff.failed("a", now)
        waits.append(due - now)
        now = due
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failures("a") == 6


def test_forget_after_a_success_starts_over() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    for n in range(5):
        backoff.failed("a", float(n * 100))
    backoff.forget("a")

    assert backoff.failures("a") == 0
    assert backoff.ready("a", 0.0)
    assert backoff.failed("a", 1000.0) == 1001.0
    backoff.forget("never-failed")  # forgetting an unknown key is fine
