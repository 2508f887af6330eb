"""Arrears: what to do about a tenant's balance, decided from numbers alone.

The suspension controller keeps, per tenant, whether it is suspended, whether it was warned, and
since when the balance has been below zero (:func:`track_below_zero_since`). It asks
:func:`arrears_decision` and carries out the action (send the warning webhook, stop or start the
tenant's instances). The rules, in order:

1. Suspended tenants are resumed as soon as their balance is above zero again (a top-up). A
   balance of exactly zero does not resume: the next hourly charge would put it straight back.
2. A balance below zero for at least ``grace_seconds`` suspends the tenant.
3. A balance below the low-balance threshold (which includes any negative balance within the grace
   period) warns the tenant, once: ``warned`` says it has been done. The controller clears
   ``warned`` when the balance is back at or above the threshold.
4. Otherwise nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from berth.errors import InvalidInput

ArrearsAction = Literal["none", "warn", "suspend", "resume"]


@dataclass(frozen=True)
class ArrearsDecision:
    action: ArrearsAction
    reason: str


def track_below_zero_since(balance_minor: int, previous: float | None, now: float) -> float | None:
    """When the current stretch below zero began: kept while negative, reset at zero or above."""
    if balance_minor >= 0:
        return None
    return now if previous is None else previous


def arrears_decision(
    balance_minor: int,
    low_balance_threshold_minor: int,
    below_zero_since: float | None,
    grace_seconds: float,
    now: float,
    currently_suspended: bool,
    warned: bool,
) -> ArrearsDecision:
    """Decide one of none / warn / suspend / resume (see the module docstring for the rules).

    A negative balance with ``below_zero_since=None`` is treated as having just gone negative.
    """
    _check_inputs(balance_minor, low_balance_threshold_minor, grace_seconds, now)
    if currently_suspended:
        if balance_minor > 0:
            return ArrearsDecision("resume", f"balance {balance_minor} is above zero again")
        return ArrearsDecision("none", f"still suspended: balance {balance_minor}")
    if balance_minor < 0:
        since = now if below_zero_since is None else below_zero_since
        overdue = now - since
        if overdue >= grace_seconds:
            return ArrearsDecision(
                "suspend",
                f"balance {balance_minor} below zero for {overdue:.0f}s, "
                f"past the grace period of {grace_seconds:.0f}s",
            )
    if balance_minor < low_balance_threshold_minor and not warned:
        return ArrearsDecision(
            "warn", f"balance {balance_minor} is below the threshold {low_balance_threshold_minor}"
        )
    return ArrearsDecision("none", f"balance {balance_minor}")


def _check_inputs(balance: int, threshold: int, grace_seconds: float, now: float) -> None:
    for name, value in (("balance", balance), ("low-balance threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer of minor units", code="invalid_amount")
    if threshold < 0:
        raise InvalidInput("low-balance threshold must not be negative", code="invalid_amount")
    if not math.isfinite(grace_seconds) or grace_seconds < 0:
        raise InvalidInput("grace period must be a finite number >= 0", code="invalid_duration")
    if not math.isfinite(now):
        raise InvalidInput("now must be finite", code="invalid_time")
