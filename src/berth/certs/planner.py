"""Which domains need an order now: the manager's whole decision, pure.

Given the wanted domains, what is known of each, the account's order budget and the time, the
plan says for every domain what happens and, when nothing does, until when. Orders are ranked
(a domain with no certificate first, then renewals by expiry, then retries) and cut at the
budget, so a burst of new domains or a CA outage never turns into a burst of orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from berth.certs.model import (
    CertSource,
    CertState,
    CertStatus,
    OrderBudget,
    renew_at,
    renewal_due,
)


class Action(StrEnum):
    ORDER = "order"  # no certificate yet
    RENEW = "renew"  # renewal due (or expired)
    RETRY = "retry"  # the last order failed and its retry time has come
    WAIT_RETRY = "wait_retry"  # failed; not before next_retry
    WAIT_BUDGET = "wait_budget"  # due, but the account's order budget is spent
    FRESH = "fresh"  # issued, renewal not due yet
    UPLOADED = "uploaded"  # the tenant's own certificate: never ordered by Berth
    COVERED = "covered"  # an uploaded wildcard (the operator's, for the base domain) covers it


@dataclass(frozen=True)
class Decision:
    domain: str
    action: Action
    until: datetime | None = None  # when to look again (retry time, budget slot, renewal)


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    unwanted: tuple[str, ...]  # known domains no longer wanted

    @property
    def to_order(self) -> tuple[str, ...]:
        due = (Action.ORDER, Action.RENEW, Action.RETRY)
        return tuple(d.domain for d in self.decisions if d.action in due)

    def decision(self, domain: str) -> Decision:
        for d in self.decisions:
            if d.domain == domain:
                return d
        raise KeyError(domain)

    @property
    def wake_at(self) -> datetime | None:
        """The earliest time anything in the plan changes, for the caller's next pass."""
        times = [d.until for d in self.decisions if d.until is not None]
        return min(times) if times else None


def covering_wildcard(
    domain: str, statuses: Mapping[str, CertStatus], now: datetime
) -> CertStatus | None:
    """A valid uploaded wildcard that covers ``domain`` (``*.apps.example.com`` for
    ``shop.apps.example.com``). An expired one covers nothing: the domains it covered are
    ordered one by one (within the budget) rather than served an expired certificate."""
    _, dot, parent = domain.partition(".")
    wildcard = statuses.get("*." + parent) if dot else None
    if (
        wildcard is not None
        and wildcard.state is CertState.ISSUED
        and wildcard.not_after is not None
        and wildcard.not_after > now
    ):
        return wildcard
    return None


def _decide(
    domain: str, status: CertStatus | None, statuses: Mapping[str, CertStatus], now: datetime
) -> Decision:
    if status is None or status.source is not CertSource.UPLOAD:
        wildcard = covering_wildcard(domain, statuses, now)
        if wildcard is not None:
            return Decision(domain, Action.COVERED, wildcard.not_after)
    if status is None or (status.state is CertState.PENDING and status.failures == 0):
        return Decision(domain, Action.ORDER)
    if status.source is CertSource.UPLOAD:
        return Decision(domain, Action.UPLOADED, status.not_after)
    if status.next_retry is not None and status.failures > 0:
        if now < status.next_retry:
            return Decision(domain, Action.WAIT_RETRY, status.next_retry)
        if status.state is not CertState.ISSUED:
            return Decision(domain, Action.RETRY)
    if status.state is CertState.ISSUED:
        if renewal_due(status, now):
            return Decision(domain, Action.RENEW)
        until = (
            renew_at(status.not_before, status.not_after)
            if status.not_before is not None and status.not_after is not None
            else None
        )
        return Decision(domain, Action.FRESH, until)
    return Decision(domain, Action.RETRY)


def _rank(decision: Decision, status: CertStatus | None) -> tuple[int, float, str]:
    if decision.action is Action.ORDER:
        return (0, 0.0, decision.domain)
    if decision.action is Action.RENEW:
        expiry = status.not_after.timestamp() if status and status.not_after else 0.0
        return (1, expiry, decision.domain)
    return (2, float(status.failures if status else 0), decision.domain)


def plan(
    wanted: Iterable[str],
    statuses: Mapping[str, CertStatus],
    budget: OrderBudget,
    now: datetime,
) -> Plan:
    wanted_set = dict.fromkeys(wanted)
    decisions = {d: _decide(d, statuses.get(d), statuses, now) for d in wanted_set}
    due = sorted(
        (d for d in decisions.values() if d.action in (Action.ORDER, Action.RENEW, Action.RETRY)),
        key=lambda d: _rank(d, statuses.get(d.domain)),
    )
    allowance = budget.allowance(now)
    # The orders placed now spend the budget first; the rest wait for the slot after them.
    slot = budget.spend([now] * allowance, now).next_slot(now) if len(due) > allowance else None
    for decision in due[allowance:]:
        decisions[decision.domain] = Decision(decision.domain, Action.WAIT_BUDGET, slot)
    ordered = sorted(decisions.values(), key=lambda d: d.domain)
    unwanted = tuple(sorted(set(statuses) - set(wanted_set)))
    return Plan(decisions=tuple(ordered), unwanted=unwanted)
