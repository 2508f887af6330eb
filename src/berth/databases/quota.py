"""The size quota's decision (pure): whether a database may grow, from what was measured.

Writes stop once the measured size is over the limit and come back only when it is below
``resume_ratio`` of it, so a database hovering at its limit does not flip on every measurement.
"""

from __future__ import annotations


def write_allowed(
    bytes_used: int, limit_bytes: int, *, currently_allowed: bool, resume_ratio: float = 0.95
) -> bool:
    if limit_bytes <= 0:
        return True  # no quota on this plan
    if bytes_used > limit_bytes:
        return False
    if currently_allowed:
        return True
    return bytes_used <= int(limit_bytes * resume_ratio)
