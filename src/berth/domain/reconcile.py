"""The reconcile planner: a pure function from (desired, observed, now) to a plan.

Level-triggered: the same snapshots always give the same plan, and a converged system plans
nothing. Rollouts are start-first: instances of the old revision go only once the new revision
has ``scale`` instances that are running, healthy and routed.

Words:
- *revision*: a release plus a restart generation (see ``Revision``); instances carry its key.
- *target*: the revision an app should run; *serving*: the one whose rollout last succeeded.
- *crash loop*: an instance that exited ``CRASH_LOOP_RESTARTS`` times in a row; in a rollout it
  fails the deployment at once, in steady state it keeps restarting with exponential backoff.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from berth.controllers.backoff import exponential_delay  # pure: the one retry policy
from berth.domain.model import DesiredApp, ObservedInstance
from berth.domain.rollout import (
    CRASH_LOOP_RESTARTS as CRASH_LOOP_RESTARTS,
)
from berth.domain.rollout import FinishDeployment as FinishDeployment
from berth.domain.rollout import GroupTarget, RolloutPlan, plan_rollout

# Like Docker's restart policy, a first crash is restarted almost at once (Docker waits 100 ms);
# a second crash in a row is a likely loop: from there the wait doubles from 1 s, as before.
FIRST_RESTART_SECONDS = 0.1
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
# A crash after running this long is treated as a fresh failure, not part of a loop.
RESTART_RESET_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class StartInstance:
    app_id: str
    revision: str


@dataclass(frozen=True)
class RestartInstance:
    app_id: str
    container_id: str


@dataclass(frozen=True)
class RemoveInstance:
    app_id: str
    container_id: str
    reason: str


@dataclass(frozen=True)
class Waiting:
    """Not an action: why something that should run does not run yet (shown by ``berth ps``)."""

    app_id: str
    container_id: str
    reason: str
    until: float


Action = StartInstance | RestartInstance | RemoveInstance | FinishDeployment


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    waiting: tuple[Waiting, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.actions


def restart_backoff(restarts: int) -> float:
    """Delay before restarting an instance that has already restarted ``restarts`` times."""
    if restarts <= 0:
        return FIRST_RESTART_SECONDS
    return exponential_delay(restarts, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)


def next_restart_count(previous: int, ran_seconds: float | None) -> int:
    """Restarts in a row: reset when the instance had been up long enough to count as healthy."""
    if ran_seconds is not None and ran_seconds >= RESTART_RESET_AFTER_SECONDS:
        return 0
    return previous


def plan_reconcile(
    desired: Iterable[DesiredApp], observed: Iterable[ObservedInstance], now: float
) -> Plan:
    """The whole local plan: the rollout (which groups, berth.domain.rollout) and then the
    containers that make those groups exist on this machine."""
    observed = list(observed)
    rollout = plan_rollout(desired, observed, now)
    containers = plan_containers(rollout.groups, observed, now, rollout)
    return Plan(rollout.finished + containers.actions, containers.waiting)


def plan_containers(
    groups: Iterable[GroupTarget],
    observed: Iterable[ObservedInstance],
    now: float,
    rollout: RolloutPlan | None = None,
) -> Plan:
    """Containers for process groups on one engine: start the missing, restart the crashed
    (with backoff), remove extras and every container of a revision no group wants."""
    by_group: dict[tuple[str, str], list[ObservedInstance]] = defaultdict(list)
    for inst in observed:
        by_group[(inst.app_id, inst.revision)].append(inst)
    wanted = {(g.app_id, g.revision): g for g in groups}
    actions: list[Action] = []
    waiting: list[Waiting] = []
    for key in sorted(by_group.keys() - wanted.keys()):
        app_id, revision = key
        reason = (rollout.retire_reason(app_id, revision) if rollout else None) or "old revision"
        actions += _remove_all(by_group[key], reason)
    for key in sorted(wanted):
        group = wanted[key]
        a, w = _maintain(group.app_id, by_group.get(key, []), group.revision, group.replicas, now)
        actions += a
        waiting += w
    return Plan(tuple(actions), tuple(waiting))


def _remove_all(instances: Iterable[ObservedInstance], reason: str) -> list[Action]:
    return [
        RemoveInstance(i.app_id, i.container_id, reason)
        for i in sorted(instances, key=lambda i: i.container_id)
    ]


def _maintain(
    app_id: str,
    instances: Sequence[ObservedInstance],
    start_revision: str | None,
    scale: int,
    now: float,
) -> tuple[list[Action], list[Waiting]]:
    """Keep ``scale`` instances of one revision: restart crashed ones, trim extras, and start
    missing ones of ``start_revision`` (None: start nothing)."""
    actions: list[Action] = []
    waiting: list[Waiting] = []
    ordered = sorted(instances, key=_keep_preference)
    keep, extra = ordered[:scale], ordered[scale:]
    actions += _remove_all(extra, "scaled down")
    for inst in keep:
        if inst.alive:
            continue
        delay = restart_backoff(inst.restarts)
        due = (inst.finished_at or 0.0) + delay
        if now >= due:
            actions.append(RestartInstance(inst.app_id, inst.container_id))
        else:
            waiting.append(
                Waiting(
                    inst.app_id,
                    inst.container_id,
                    f"crashed (exit code {inst.exit_code}); restarting in {_seconds(due - now)}",
                    due,
                )
            )
    if start_revision is not None:
        actions += [StartInstance(app_id, start_revision) for _ in range(scale - len(keep))]
    return actions, waiting


def _seconds(delay: float) -> str:
    # Sub-second waits are common now (the first restart): "0s" would read as "stuck".
    return f"{delay:.1f}s" if delay < 10 else f"{delay:.0f}s"


def _keep_preference(inst: ObservedInstance) -> tuple[int, int, int, str]:
    """Sort key: instances to keep first (alive, healthy, oldest)."""
    return (0 if inst.alive else 1, 0 if inst.healthy else 1, inst.created_seq, inst.container_id)
