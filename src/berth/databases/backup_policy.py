"""Pure rules of scheduled backups and their retention, per database plan.

Retention: the newest ``keep_verified`` verified backups stay, and never fewer than one (the
last verified backup is never pruned, however old); the newest ``keep_failed`` failed ones stay
so the tenant can read why; a final backup (taken by a delete) stays until its ``keep_until``;
pending and running ones are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class BackupPolicy:
    every_seconds: float
    keep_verified: int
    keep_failed: int = 3


POLICIES: Final[dict[str, BackupPolicy]] = {
    "shared": BackupPolicy(every_seconds=86400.0, keep_verified=7),
    "dedicated": BackupPolicy(every_seconds=6 * 3600.0, keep_verified=28),
}


def policy_for(plan: str) -> BackupPolicy:
    return POLICIES.get(plan, POLICIES["shared"])


@dataclass(frozen=True)
class BackupFacts:
    id: str
    kind: str  # manual | scheduled | final
    state: str  # pending | running | verified | failed
    created_at: float
    keep_until: float | None = None


def to_prune(backups: list[BackupFacts], policy: BackupPolicy, now: float) -> list[str]:
    """The ids to remove, by the rules above."""
    newest = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    verified = [b for b in newest if b.state == "verified"]
    last_verified = verified[0].id if verified else None
    ordinary = [b for b in verified if not _held(b)]
    kept_verified = {b.id for b in ordinary[: max(policy.keep_verified, 1)]}
    kept_failed = {b.id for b in [b for b in newest if b.state == "failed"][: policy.keep_failed]}
    out = []
    for b in newest:
        if b.id == last_verified or b.state in ("pending", "running"):
            continue
        if b.state == "verified" and _held(b):
            if b.keep_until is not None and b.keep_until <= now:
                out.append(b.id)
            continue
        kept = kept_verified if b.state == "verified" else kept_failed
        if b.id not in kept:
            out.append(b.id)
    return out


def _held(b: BackupFacts) -> bool:
    """A final backup of a deleted database: kept for its own time, not counted with others."""
    return b.kind == "final" and b.keep_until is not None


def is_due(last_attempt_at: float | None, policy: BackupPolicy, now: float) -> bool:
    return last_attempt_at is None or now - last_attempt_at >= policy.every_seconds
