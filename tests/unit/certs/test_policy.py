"""Renewal, backoff, the order budget and the planner: pure, on fixed times."""

from __future__ import annotations

import datetime as dt
import itertools

from hypothesis import given
from hypothesis import strategies as st

from berth.certs.model import (
    CertSource,
    CertState,
    CertStatus,
    OrderBudget,
    RetryPolicy,
    record_failure,
    record_issued,
    renew_at,
    renewal_due,
)
from berth.certs.planner import Action, plan

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = RetryPolicy()


def issued(domain: str, not_before: dt.datetime, days: float) -> CertStatus:
    return record_issued(
        CertStatus(domain=domain),
        not_before=not_before,
        not_after=not_before + days * DAY,
        source=CertSource.ACME,
    )


def test_renewal_time_for_the_usual_lifetimes() -> None:
    assert renew_at(T0, T0 + 90 * DAY) == T0 + 60 * DAY  # Let's Encrypt: 30 days before
    assert renew_at(T0, T0 + 365 * DAY) == T0 + (365 - 365 / 3) * DAY  # a third before
    assert renew_at(T0, T0 + 60 * DAY) == T0 + 30 * DAY  # 30 days is half of it
    assert renew_at(T0, T0 + 6 * DAY) == T0 + 3 * DAY  # short-lived: at half, not at once


@given(st.floats(min_value=0.01, max_value=4000))
def test_renewal_is_inside_the_lifetime_and_at_least_the_rule(days: float) -> None:
    not_after = T0 + days * DAY
    when = renew_at(T0, not_after)
    assert T0 < when < not_after
    remaining = not_after - when
    assert remaining >= min((not_after - T0) / 3, 30 * DAY) - dt.timedelta(microseconds=1)


def test_renewal_due_only_for_issued_certificates() -> None:
    status = issued("a.example.com", T0, 90)
    assert not renewal_due(status, T0 + 59 * DAY)
    assert renewal_due(status, T0 + 60 * DAY)
    assert not renewal_due(CertStatus(domain="a.example.com"), T0 + 600 * DAY)


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [POLICY.delay("a.example.com", n) for n in range(1, 14)]
    assert dt.timedelta(minutes=5) <= delays[0] <= dt.timedelta(minutes=5.5)
    assert dt.timedelta(minutes=10) <= delays[1] <= dt.timedelta(minutes=11)
    assert delays[-1] == POLICY.cap
    assert POLICY.delay("a.example.com", 10**9) == POLICY.cap


@given(st.text(min_size=1, max_size=30), st.integers(min_value=1, max_value=60))
def test_backoff_never_shrinks_and_stays_under_the_cap(domain: str, failures: int) -> None:
    now, later = POLICY.delay(domain, failures), POLICY.delay(domain, failures + 1)
    assert POLICY.base <= now <= later <= POLICY.cap


def test_the_cas_retry_after_is_honoured_but_held_to_the_cap() -> None:
    assert POLICY.next_retry(
        "a.example.com", 1, T0, T0 + dt.timedelta(hours=3)
    ) == T0 + dt.timedelta(hours=3)
    # Sooner than our own backoff: ours wins.
    assert (
        POLICY.next_retry("a.example.com", 1, T0, T0 + dt.timedelta(seconds=1)) >= T0 + POLICY.base
    )
    # A nonsense Retry-After a year away is held to the cap.
    assert POLICY.next_retry("a.example.com", 1, T0, T0 + 365 * DAY) == T0 + POLICY.cap


def test_a_failed_renewal_keeps_the_certificate_being_served() -> None:
    status = issued("a.example.com", T0, 90)
    failed = record_failure(
        status, reason="CA down", problem=None, now=T0 + 61 * DAY, policy=POLICY
    )
    assert failed.state is CertState.ISSUED and failed.failures == 1
    assert failed.reason == "CA down" and failed.next_retry is not None
    expired = record_failure(status, reason="x", problem=None, now=T0 + 91 * DAY, policy=POLICY)
    assert expired.state is CertState.FAILED
    again = record_issued(failed, not_before=T0, not_after=T0 + 90 * DAY, source=CertSource.ACME)
    assert again.failures == 0 and again.reason is None and again.next_retry is None


def test_the_order_budget_slides() -> None:
    budget = OrderBudget(limit=3, window=dt.timedelta(hours=1))
    budget = budget.spend([T0, T0, T0 + dt.timedelta(minutes=10)], T0 + dt.timedelta(minutes=10))
    now = T0 + dt.timedelta(minutes=20)
    assert budget.allowance(now) == 0
    assert budget.next_slot(now) == T0 + dt.timedelta(hours=1)
    assert budget.allowance(T0 + dt.timedelta(hours=1, seconds=1)) == 2
    assert budget.allowance(T0 + dt.timedelta(hours=2)) == 3


def test_the_planner_ranks_new_then_renewals_then_retries_and_cuts_at_the_budget() -> None:
    now = T0 + 70 * DAY
    statuses = {
        "renew-late.example.com": issued("renew-late.example.com", T0, 90),
        "renew-soon.example.com": issued("renew-soon.example.com", T0 - 10 * DAY, 90),
        "fresh.example.com": issued("fresh.example.com", now - DAY, 90),
        "retry.example.com": CertStatus(
            domain="retry.example.com", state=CertState.FAILED, failures=2, next_retry=now
        ),
        "waiting.example.com": CertStatus(
            domain="waiting.example.com", state=CertState.FAILED, failures=1, next_retry=now + DAY
        ),
        "upload.example.com": record_issued(
            CertStatus(domain="upload.example.com"),
            not_before=T0,
            not_after=T0 + 71 * DAY,
            source=CertSource.UPLOAD,
        ),
        "gone.example.com": issued("gone.example.com", T0, 90),
    }
    wanted = [d for d in statuses if d != "gone.example.com"] + ["new.example.com"]
    full = plan(wanted, statuses, OrderBudget(limit=10), now)
    actions = {d.domain: d.action for d in full.decisions}
    assert actions == {
        "new.example.com": Action.ORDER,
        "renew-late.example.com": Action.RENEW,
        "renew-soon.example.com": Action.RENEW,
        "fresh.example.com": Action.FRESH,
        "retry.example.com": Action.RETRY,
        "waiting.example.com": Action.WAIT_RETRY,
        "upload.example.com": Action.UPLOADED,
    }
    assert full.unwanted == ("gone.example.com",)
    assert full.decision("waiting.example.com").until == now + DAY

    tight = plan(wanted, statuses, OrderBudget(limit=2), now)
    assert set(tight.to_order) == {"new.example.com", "renew-soon.example.com"}
    held = tight.decision("retry.example.com")
    assert held.action is Action.WAIT_BUDGET and held.until == now + dt.timedelta(hours=1)


def test_a_renewal_failure_waits_for_its_retry_time() -> None:
    now = T0 + 61 * DAY
    failed = record_failure(
        issued("a.example.com", T0, 90), reason="x", problem=None, now=now, policy=POLICY
    )
    assert plan(["a.example.com"], {"a.example.com": failed}, OrderBudget(), now).to_order == ()
    assert failed.next_retry is not None
    later = plan(["a.example.com"], {"a.example.com": failed}, OrderBudget(), failed.next_retry)
    assert later.decision("a.example.com").action is Action.RENEW


def _outage(
    domains: list[str], budget: OrderBudget, step: dt.timedelta
) -> list[tuple[dt.datetime, str]]:
    """A day in which every order fails, a planner pass every ``step``: the orders placed."""
    statuses: dict[str, CertStatus] = {}
    orders: list[tuple[dt.datetime, str]] = []
    now = T0
    while now < T0 + DAY:
        decided = plan(domains, statuses, budget, now)
        budget = budget.spend([now] * len(decided.to_order), now)
        for d in decided.to_order:
            orders.append((now, d))
            current = statuses.get(d, CertStatus(domain=d))
            statuses[d] = record_failure(
                current, reason="down", problem=None, now=now, policy=POLICY
            )
        now += step
    return orders


def test_a_domain_failing_all_day_is_tried_a_handful_of_times() -> None:
    orders = _outage(["a.example.com"], OrderBudget(), dt.timedelta(minutes=1))
    # 5, 10, 20 ... minutes: about log2(1 day / 5 min) + 1 orders, not 1,440.
    assert 8 <= len(orders) <= 10
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(orders)]
    assert gaps == sorted(gaps)


def test_a_day_of_a_ca_outage_is_no_retry_storm() -> None:
    """200 domains whose every order fails: orders per hour never exceed the account's budget."""
    domains = [f"d{i}.example.com" for i in range(200)]
    orders = _outage(
        domains, OrderBudget(limit=20, window=dt.timedelta(hours=1)), dt.timedelta(minutes=2)
    )
    for hour in range(24):
        start = T0 + hour * dt.timedelta(hours=1)
        in_hour = [t for t, _ in orders if start <= t < start + dt.timedelta(hours=1)]
        assert len(in_hour) <= 20
    assert len(orders) == 24 * 20  # the budget was the bound, and it was used
    assert len({d for _, d in orders}) == 200  # every domain got its turns


def test_an_uploaded_wildcard_covers_platform_hostnames_until_it_expires() -> None:
    wildcard = record_issued(
        CertStatus(domain="*.apps.example.com"),
        not_before=T0,
        not_after=T0 + 90 * DAY,
        source=CertSource.UPLOAD,
    )
    statuses = {"*.apps.example.com": wildcard}
    wanted = ["shop.apps.example.com", "a.b.apps.example.com", "apps.example.com"]
    decided = plan(wanted, statuses, OrderBudget(), T0 + DAY)
    assert decided.decision("shop.apps.example.com").action is Action.COVERED
    assert decided.decision("shop.apps.example.com").until == T0 + 90 * DAY
    # One label only, never the apex: those two are ordered.
    assert set(decided.to_order) == {"a.b.apps.example.com", "apps.example.com"}
    expired = plan(wanted, statuses, OrderBudget(), T0 + 91 * DAY)
    assert "shop.apps.example.com" in expired.to_order
