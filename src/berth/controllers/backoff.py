"""The one retry policy of the controllers: per-key exponential backoff, capped.

Modelled on the rate-limited work queue of Kubernetes controllers (client-go's
ItemExponentialFailureRateLimiter): ``failed`` (AddRateLimited) pushes a key's next attempt out
by base * 2^(failures-1), at most ``cap``; ``forget`` (Forget) after a success starts it over.
Pure bookkeeping: the caller passes the time, so tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE_SECONDS = 1.0
CAP_SECONDS = 60.0


def exponential_delay(failures: int, base: float = BASE_SECONDS, cap: float = CAP_SECONDS) -> float:
    """The wait after ``failures`` failures in a row (0 failures: no wait). Capped, and the
    exponent is bounded so a key that fails for days never overflows."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * (2 ** min(failures - 1, 32))))


@dataclass
class _Entry:
    failures: int
    due: float
    message: str


@dataclass
class Backoff:
    """When each key (an app, a container) may be tried again."""

    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def ready(self, key: str, now: float) -> bool:
        """True when ``key`` has no failure pending or its wait is over."""
        entry = self._entries.get(key)
        return entry is None or now >= entry.due

    def failed(self, key: str, now: float, message: str = "") -> float:
        """Record one more failure of ``key``; returns the time of its next attempt."""
        entry = self._entries.get(key)
        failures = entry.failures + 1 if entry is not None else 1
        due = now + exponential_delay(failures, self.base, self.cap)
        self._entries[key] = _Entry(failures, due, message)
        return due

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure waits the base delay again."""
        self._entries.pop(key, None)

    def failures(self, key: str) -> int:
        entry = self._entries.get(key)
        return entry.failures if entry is not None else 0

    def waiting(self, now: float) -> dict[str, str]:
        """The keys still waiting at ``now``, with the message of their last failure."""
        return {key: e.message for key, e in self._entries.items() if now < e.due}

    def next_due(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return entry.due if entry is not None else None
