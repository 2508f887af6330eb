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

# Like Docker's restart policy, a first crash is restarted almost at once (Docker waits 100 ms);
# a second crash in a row is a likely loop: from there the wait doubles from 1 s, as before.
FIRST_RESTART_SECONDS = 0.1
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
CRASH_LOOP_RESTARTS = 3
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
class FinishDeployment:
    app_id: str
    deployment_id: str
    succeeded: bool
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
    by_app: dict[str, list[ObservedInstance]] = defaultdict(list)
    for inst in observed:
        by_app[inst.app_id].append(inst)
    actions: list[Action] = []
    waiting: list[Waiting] = []
    wanted = {app.app_id: app for app in desired}
    for app_id in sorted(by_app.keys() - wanted.keys()):
        actions += _remove_all(by_app[app_id], "app deleted")
    for app_id in sorted(wanted):
        app_actions, app_waiting = _plan_app(wanted[app_id], by_app.get(app_id, []), now)
        actions += app_actions
        waiting += app_waiting
    return Plan(tuple(actions), tuple(waiting))


def _remove_all(instances: Iterable[ObservedInstance], reason: str) -> list[Action]:
    return [
        RemoveInstance(i.app_id, i.container_id, reason)
        for i in sorted(instances, key=lambda i: i.container_id)
    ]


def _plan_app(
    app: DesiredApp, instances: Sequence[ObservedInstance], now: float
) -> tuple[list[Action], list[Waiting]]:
    if app.target is None:
        return _remove_all(instances, "no release to run"), []
    target_key = app.target.key
    serving_key = app.serving.key if app.serving is not None else None
    keep = {target_key} | ({serving_key} if app.rolling_out and serving_key else set())
    actions: list[Action] = _remove_all(
        [i for i in instances if i.revision not in keep], "old revision"
    )
    waiting: list[Waiting] = []
    target = [i for i in instances if i.revision == target_key]
    if not app.rolling_out:
        a, w = _maintain(app.app_id, target, target_key, app.scale, now)
        return actions + a, waiting + w

    old = [i for i in instances if i.revision == serving_key and serving_key != target_key]
    failure = _rollout_failure(app, target, now)
    if failure is not None:
        assert app.deployment_id is not None
        actions.append(FinishDeployment(app.app_id, app.deployment_id, False, failure))
        actions += _remove_all(target, "deployment failed")
        # The serving revision stays at scale; with none serving, nothing starts.
        a, w = _maintain(app.app_id, old, serving_key, app.scale, now)
        return actions + a, waiting + w

    ready = [i for i in target if i.ready]
    if len(ready) >= app.scale:
        assert app.deployment_id is not None
        actions.append(
            FinishDeployment(app.app_id, app.deployment_id, True, f"{app.scale} instances healthy")
        )
        actions += _remove_all(old, "replaced by new revision")
        a, w = _maintain(app.app_id, target, target_key, app.scale, now)
        return actions + a, waiting + w

    a, w = _maintain(app.app_id, target, target_key, app.scale, now)
    actions += a
    waiting += w
    a, w = _maintain(app.app_id, old, None, app.scale, now)
    return actions + a, waiting + w


def _rollout_failure(app: DesiredApp, target: Sequence[ObservedInstance], now: float) -> str | None:
    for inst in sorted(target, key=lambda i: i.container_id):
        if not inst.alive and inst.restarts >= CRASH_LOOP_RESTARTS:
            return (
                f"instance crashed {inst.restarts + 1} times in a row "
                f"(last exit code {inst.exit_code})"
            )
    if app.deadline is not None and now >= app.deadline:
        healthy = sum(1 for i in target if i.state == "running" and i.healthy)
        return f"health check: {healthy} of {app.scale} instances healthy before the deadline"
    return None


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
