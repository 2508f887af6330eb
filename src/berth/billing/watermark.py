"""Reported through: the time up to which every node's reports of its instances are in.

Metering closes an hour only once nothing it has not heard yet can change that hour
(berth.billing.metering: ``now`` must be such a time). A reconciler pass reads the nodes first,
then the instances, so what the instances say is at least as recent as the nodes' states it
read; from those states and the pass's start (``observed_at``) this module decides up to when
the instance listing is complete:

- a **ready** node answered a heartbeat at most ``detection_bound`` ago (else the manager would
  have declared it down), so its reports are in through ``observed_at - detection_bound``. A
  node that was cut off or died still reads ready for that long, and may come back within it
  with reports of what stopped meanwhile (Swarm's task times are the node's own);
- a **down** node never reports again: the manager gave up on its tasks, and that give-up time
  is the stop billing will ever know (berth.swarm.tasks). It does not hold anything back;
- any **other** state (``unknown`` after a manager's leadership change, ``disconnected``) may
  report later, so it holds the watermark at when it was last known good (``last_seen`` minus
  the detection bound), but only for ``wait_bound`` seconds: then it is not waited for, and the
  hours close without its late reports. That is reported (``not_waited_for``), not hidden.

The result is never after ``observed_at``; :func:`advance` keeps the stored watermark monotonic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# How Swarm's dispatcher decides that a node is down (moby/swarmkit manager/dispatcher:
# dispatcher.go, nodes.go, period.go, heartbeat/heartbeat.go). Each heartbeat resets a timer
# per node to ``GracePeriodMultiplier x Choose()``, where ``Choose()`` draws a period uniformly
# from ``[HeartbeatPeriod - epsilon, HeartbeatPeriod + epsilon)`` with ``defaultHeartBeatEpsilon``
# = 500 ms and ``defaultGracePeriodMultiplier`` = 3. When the timer fires, ``markNodeNotReady``
# queues the DOWN status into ``nodeUpdates``, which the dispatcher writes to the store in
# batches at least every ``maxBatchInterval`` = 100 ms. So a node that sent its last heartbeat
# reads ready for at most 3 x (period + 0.5 s) + 0.1 s: 7.6 s at Berth's 2 s period. (After a
# leadership change the new leader marks every node ``unknown`` with twice the multiplier; an
# unknown node is not ready, so it holds the watermark at its own last-seen time instead.)
SWARM_GRACE_MULTIPLIER = 3
SWARM_HEARTBEAT_EPSILON_SECONDS = 0.5
SWARM_STATUS_BATCH_SECONDS = 0.1


def swarm_detection_bound(heartbeat_seconds: float) -> float:
    """How long a Swarm node that stopped heartbeating can still read ``ready``."""
    if not math.isfinite(heartbeat_seconds) or heartbeat_seconds <= 0:
        raise ValueError(f"heartbeat period must be positive, got {heartbeat_seconds!r}")
    return (
        SWARM_GRACE_MULTIPLIER * (heartbeat_seconds + SWARM_HEARTBEAT_EPSILON_SECONDS)
        + SWARM_STATUS_BATCH_SECONDS
    )


def detection_bound(backend: str, heartbeat_seconds: float) -> float:
    """The local backend's one engine answers each listing itself: nothing is late, bound 0."""
    return 0.0 if backend == "local" else swarm_detection_bound(heartbeat_seconds)


@dataclass(frozen=True)
class NodeReport:
    """One node as the pass saw it. ``last_seen``: when it was last known good (the listing's
    time while it is ready; otherwise when its status last changed); None: not known."""

    name: str
    state: str  # "ready" | "down" | anything else ("unknown", "disconnected", ...)
    last_seen: float | None = None


@dataclass(frozen=True)
class Holder:
    """A node that is neither ready nor down, and since when it was last known good."""

    node: str
    state: str
    since: float | None


@dataclass(frozen=True)
class Watermark:
    observed_at: float
    # None: some node waited for has no known time, so nothing can move (advance keeps the
    # stored watermark where it is).
    reported_through: float | None
    held_by: tuple[Holder, ...] = ()  # waited for: they hold ``reported_through`` back
    not_waited_for: tuple[Holder, ...] = ()  # past ``wait_bound``: hours close without them


def reported_through(
    observed_at: float,
    nodes: Iterable[NodeReport],
    detection_bound: float,
    wait_bound: float,
) -> Watermark:
    """Up to when the pass observed at ``observed_at`` has every node's reports (see above)."""
    for name, value in (("observed_at", observed_at), ("detection_bound", detection_bound)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if detection_bound < 0 or not wait_bound >= 0:
        raise ValueError("the bounds must not be negative")
    mark: float | None = observed_at - detection_bound
    held: list[Holder] = []
    given_up: list[Holder] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.state in ("ready", "down"):
            continue
        since = node.last_seen
        holder = Holder(node.name, node.state, since)
        if since is not None and observed_at - since > wait_bound:
            given_up.append(holder)
            continue
        held.append(holder)
        if since is None:
            mark = None
        elif mark is not None:
            mark = min(mark, since - detection_bound)
    return Watermark(observed_at, mark, tuple(held), tuple(given_up))


def advance(previous: float | None, candidate: float | None) -> float | None:
    """The stored watermark after a pass: it never moves back (a clock stepped back, a pass
    that saw a node stale that an earlier one did not)."""
    if candidate is None:
        return previous
    if previous is None:
        return candidate
    return max(previous, candidate)
