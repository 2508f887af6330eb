"""Arrears decisions: warn when low, suspend after the grace period, resume after a top-up."""

from __future__ import annotations

import pytest

from berth.billing.arrears import ArrearsDecision, arrears_decision, track_below_zero_since
from berth.errors import InvalidInput

NOW = 1_700_000_000.0
DAY = 86_400.0
GRACE = 3 * DAY
THRESHOLD = 500  # 5.00 in minor units


@pytest.mark.parametrize(
    ("case", "balance", "since", "suspended", "warned", "action"),
    [
        ("healthy balance", 10_000, None, False, False, "none"),
        ("exactly at the threshold", THRESHOLD, None, False, False, "none"),
        ("just below the threshold", THRESHOLD - 1, None, False, False, "warn"),
        ("low but already warned", 100, None, False, True, "none"),
        ("zero balance is low", 0, None, False, False, "warn"),
        ("negative within grace", -100, NOW - DAY, False, False, "warn"),
        ("negative within grace, warned", -100, NOW - DAY, False, True, "none"),
        ("negative, since unknown: just now", -100, None, False, False, "warn"),
        ("negative one second before grace ends", -100, NOW - GRACE + 1, False, True, "none"),
        ("negative exactly at the end of grace", -100, NOW - GRACE, False, True, "suspend"),
        ("negative past grace", -1, NOW - 10 * DAY, False, True, "suspend"),
        ("negative past grace, never warned", -1, NOW - 10 * DAY, False, False, "suspend"),
        ("suspended and still negative", -1, NOW - 10 * DAY, True, True, "none"),
        ("suspended at exactly zero", 0, None, True, True, "none"),
        ("suspended, topped up to positive", 1, None, True, True, "resume"),
        ("suspended, topped up plenty", 50_000, None, True, False, "resume"),
    ],
)
def test_arrears_decision_table(
    case: str, balance: int, since: float | None, suspended: bool, warned: bool, action: str
) -> None:
    decision = arrears_decision(
        balance_minor=balance,
        low_balance_threshold_minor=THRESHOLD,
        below_zero_since=since,
        grace_seconds=GRACE,
        now=NOW,
        currently_suspended=suspended,
        warned=warned,
    )
    assert decision.action == action, case
    assert decision.reason


def test_a_zero_grace_period_suspends_at_once() -> None:
    decision = arrears_decision(-1, 0, NOW, 0, NOW, currently_suspended=False, warned=False)
    assert decision.action == "suspend"
    assert "grace period of 0s" in decision.reason


def test_the_reason_explains_the_suspension() -> None:
    decision = arrears_decision(-250, THRESHOLD, NOW - 4 * DAY, GRACE, NOW, False, True)
    assert decision == ArrearsDecision(
        "suspend", "balance -250 below zero for 345600s, past the grace period of 259200s"
    )


@pytest.mark.parametrize(
    ("balance", "previous", "expected"),
    [
        (100, None, None),
        (0, NOW - DAY, None),  # back at zero: the stretch below zero is over
        (-1, None, NOW),  # just went negative
        (-1, NOW - DAY, NOW - DAY),  # still negative: the start is kept
    ],
)
def test_track_below_zero_since(
    balance: int, previous: float | None, expected: float | None
) -> None:
    assert track_below_zero_since(balance, previous, NOW) == expected


def test_a_tenant_goes_through_the_whole_cycle() -> None:
    """Low -> warned -> negative -> suspended after grace -> top-up -> resumed."""
    since: float | None = None
    suspended = warned = False
    actions = []
    timeline = [
        (0.0, 2_000),
        (DAY, 400),
        (2 * DAY, -100),
        (4 * DAY, -300),
        (5 * DAY, -600),
        (5.5 * DAY, -600),
        (6 * DAY, 10_000),
        (7 * DAY, 9_000),
    ]
    for offset, balance in timeline:
        now = NOW + offset
        since = track_below_zero_since(balance, since, now)
        decision = arrears_decision(balance, THRESHOLD, since, GRACE, now, suspended, warned)
        actions.append(decision.action)
        if decision.action == "warn":
            warned = True
        elif decision.action == "suspend":
            suspended = True
        elif decision.action == "resume":
            suspended = False
        if balance >= THRESHOLD:
            warned = False  # the controller clears the warning once the balance has recovered
    assert actions == ["none", "warn", "none", "none", "suspend", "none", "resume", "none"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"balance_minor": 1.5},
        {"balance_minor": True},
        {"low_balance_threshold_minor": -1},
        {"grace_seconds": -1},
        {"grace_seconds": float("inf")},
        {"now": float("nan")},
    ],
)
def test_invalid_inputs_are_refused(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "balance_minor": 0,
        "low_balance_threshold_minor": THRESHOLD,
        "below_zero_since": None,
        "grace_seconds": GRACE,
        "now": NOW,
        "currently_suspended": False,
        "warned": False,
    }
    arguments.update(kwargs)
    with pytest.raises(InvalidInput):
        arrears_decision(**arguments)  # type: ignore[arg-type]
