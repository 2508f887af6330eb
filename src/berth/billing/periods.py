"""Hours, months and milliseconds: the time arithmetic that billing shares.

Times arrive as unix seconds (``float`` from agents, ``int`` for hour starts). They are quantised
ONCE, at the edge, to integer milliseconds (round half to even of the exact binary value); every
later sum, split and comparison is integer arithmetic, so nothing drifts. Hours and months are UTC.
"""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime
from fractions import Fraction

from berth.errors import InvalidInput

HOUR_SECONDS = 3600
MS_PER_SECOND = 1000
HOUR_MS = HOUR_SECONDS * MS_PER_SECOND


def to_ms(unix_seconds: float) -> int:
    """Quantise a unix time to the nearest millisecond (exact, deterministic, half to even)."""
    if isinstance(unix_seconds, bool) or not math.isfinite(unix_seconds):
        raise InvalidInput(
            f"time must be a finite number, got {unix_seconds!r}", code="invalid_time"
        )
    return round(Fraction(unix_seconds) * MS_PER_SECOND)


def hour_floor(unix_seconds: float) -> int:
    """The start of the UTC hour containing ``unix_seconds``."""
    return (to_ms(unix_seconds) // HOUR_MS) * HOUR_SECONDS


def check_hour_aligned(name: str, unix_seconds: int) -> int:
    """``unix_seconds`` must be an ``int`` on an hour boundary; returns it."""
    if isinstance(unix_seconds, bool) or not isinstance(unix_seconds, int):
        raise InvalidInput(f"{name} must be an integer unix time", code="invalid_time")
    if unix_seconds % HOUR_SECONDS:
        raise InvalidInput(
            f"{name} must be on an hour boundary, got {unix_seconds}", code="invalid_time"
        )
    return unix_seconds


def month_of(unix_seconds: int) -> tuple[int, int]:
    """The UTC (year, month) containing ``unix_seconds``."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.year, moment.month


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """Unix seconds of the first instant of the UTC month and of the next month."""
    if not 1 <= month <= 12:
        raise InvalidInput(f"month must be 1-12, got {month}", code="invalid_time")
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, calendar.timegm((next_year, next_month, 1, 0, 0, 0))
