"""What a certificate's status is, when it is renewed, and when a failed order is tried again.

Everything here is pure and takes the time as an argument: the manager passes its clock, the
tests a fake one. The retry rules exist because a CA's rate limits are shared by every tenant
of an install: a client that retries a failing domain in a tight loop (dokku-letsencrypt#256)
exhausts the account's limits and then no domain gets a certificate at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class CertState(StrEnum):
    PENDING = "pending"
    ISSUED = "issued"
    FAILED = "failed"


class CertSource(StrEnum):
    ACME = "acme"
    UPLOAD = "upload"


@dataclass(frozen=True)
class CertStatus:
    """One domain's certificate as the API and ``berth domains list`` will show it.

    ``failures`` counts consecutive failed orders (reset by an issuance); ``reason`` and
    ``problem`` are the CA's own words and problem type of the last failure."""

    domain: str
    state: CertState = CertState.PENDING
    source: CertSource = CertSource.ACME
    not_before: datetime | None = None
    not_after: datetime | None = None
    reason: str | None = None
    problem: str | None = None
    failures: int = 0
    next_retry: datetime | None = None

    def to_json(self) -> dict[str, object]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "domain": self.domain,
            "state": self.state.value,
            "source": self.source.value,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "reason": self.reason,
            "problem": self.problem,
            "failures": self.failures,
            "next_retry": iso(self.next_retry),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CertStatus:
        def when(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        reason, problem, failures = data.get("reason"), data.get("problem"), data.get("failures")
        return cls(
            domain=str(data["domain"]),
            state=CertState(str(data.get("state", "pending"))),
            source=CertSource(str(data.get("source", "acme"))),
            not_before=when("not_before"),
            not_after=when("not_after"),
            reason=reason if isinstance(reason, str) else None,
            problem=problem if isinstance(problem, str) else None,
            failures=failures if isinstance(failures, int) else 0,
            next_retry=when("next_retry"),
        )


# --- renewal -----------------------------------------------------------------------------

RENEW_REMAINING = timedelta(days=30)


def renew_at(not_before: datetime, not_after: datetime) -> datetime:
    """When to renew: once less than a third of the lifetime or 30 days remain, whichever
    comes first. A certificate shorter-lived than 60 days (short-lived profiles, 6-day
    certificates) is renewed at half its lifetime instead of the moment it is issued."""
    lifetime = not_after - not_before
    remaining = max(lifetime / 3, RENEW_REMAINING)
    remaining = min(remaining, lifetime / 2)
    return not_after - remaining


def renewal_due(status: CertStatus, now: datetime) -> bool:
    if status.state is not CertState.ISSUED or status.not_after is None:
        return False
    if status.not_before is None:
        return now >= status.not_after - RENEW_REMAINING
    return now >= renew_at(status.not_before, status.not_after)


# --- retries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of one domain after a failed order: ``base * 2**(failures-1)``, at most ``cap``,
    never sooner than the CA's ``Retry-After``; a deterministic spread of up to ``jitter`` of
    the delay (from the domain's name) so that domains that failed together (the CA was down)
    do not all come back in the same second.

    Let's Encrypt allows 5 failed validations per hostname per hour; the first retries
    (5, 10, 20 min) stay under that, and a domain that keeps failing is tried once a day."""

    base: timedelta = timedelta(minutes=5)
    cap: timedelta = timedelta(hours=24)
    jitter: float = 0.1

    def delay(self, domain: str, failures: int) -> timedelta:
        if failures <= 0:
            return timedelta(0)
        # In seconds as a float: base * 2**n overflows timedelta long before n reaches any
        # count of failures a domain can pile up.
        exponent = min(failures - 1, 64)
        raw_seconds = min(self.base.total_seconds() * 2.0**exponent, self.cap.total_seconds())
        raw = timedelta(seconds=raw_seconds)
        digest = hashlib.sha256(f"{domain}/{failures}".encode()).digest()
        spread = int.from_bytes(digest[:4], "big") / 2**32 * self.jitter
        spread_delay: timedelta = raw * (1 + spread)
        return min(spread_delay, self.cap)

    def next_retry(
        self, domain: str, failures: int, now: datetime, retry_after: datetime | None
    ) -> datetime:
        when = now + self.delay(domain, failures)
        if retry_after is not None and retry_after > when:
            # The CA's word wins, but a nonsense Retry-After (a year away) is held to the cap.
            when = min(retry_after, now + max(self.cap, self.delay(domain, failures)))
        return when


def record_failure(
    status: CertStatus,
    *,
    reason: str,
    problem: str | None,
    now: datetime,
    policy: RetryPolicy,
    retry_after: datetime | None = None,
) -> CertStatus:
    """The status after a failed order. A domain that already has a valid certificate keeps
    serving it: it stays ``issued`` (with the failure and next retry recorded beside it)."""
    failures = status.failures + 1
    keeps_serving = (
        status.state is CertState.ISSUED and status.not_after is not None and status.not_after > now
    )
    return replace(
        status,
        state=CertState.ISSUED if keeps_serving else CertState.FAILED,
        reason=reason,
        problem=problem,
        failures=failures,
        next_retry=policy.next_retry(status.domain, failures, now, retry_after),
    )


def record_issued(
    status: CertStatus, *, not_before: datetime, not_after: datetime, source: CertSource
) -> CertStatus:
    return CertStatus(
        domain=status.domain,
        state=CertState.ISSUED,
        source=source,
        not_before=not_before,
        not_after=not_after,
    )


# --- orders per hour per account ---------------------------------------------------------


@dataclass(frozen=True)
class OrderBudget:
    """At most ``limit`` new orders in any ``window`` for one ACME account (Let's Encrypt
    allows 300 per 3 hours; the default stays well under it). ``placed`` are the times of
    the orders in the current window."""

    limit: int = 50
    window: timedelta = timedelta(hours=1)
    placed: tuple[datetime, ...] = field(default_factory=tuple)

    def _recent(self, now: datetime) -> tuple[datetime, ...]:
        return tuple(t for t in self.placed if now - self.window < t <= now)

    def allowance(self, now: datetime) -> int:
        return max(0, self.limit - len(self._recent(now)))

    def next_slot(self, now: datetime) -> datetime:
        """When the next order may be placed (``now`` if one may be placed now)."""
        recent = sorted(self._recent(now))
        if len(recent) < self.limit:
            return now
        return recent[len(recent) - self.limit] + self.window

    def spend(self, times: Iterable[datetime], now: datetime) -> OrderBudget:
        return replace(self, placed=(*self._recent(now), *times))
