"""The rollout planner: from what the store asks and the instances seen, which process groups
should run at how many replicas, and which deployments are finished. Pure.

It works one level above any backend: a *group* is one revision of an app (its ``web``
process today), and the backend (local containers or Swarm services) makes its instances
exist. Rollouts are start-first: the serving revision keeps its replicas until the target has
``scale`` instances that are running, healthy and routed; a target that crash-loops or misses
its deadline fails the deployment, and the serving revision stays.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from berth.domain.model import DesiredApp, ObservedInstance

CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True)
class GroupTarget:
    """Run ``replicas`` instances of ``revision`` of ``app_id``."""

    app_id: str
    revision: str
    replicas: int


@dataclass(frozen=True)
class Retired:
    """The instances of this revision go, for this reason (shown while they stop)."""

    app_id: str
    revision: str
    reason: str


@dataclass(frozen=True)
class FinishDeployment:
    app_id: str
    deployment_id: str
    succeeded: bool
    reason: str


@dataclass(frozen=True)
class RolloutPlan:
    groups: tuple[GroupTarget, ...] = ()
    finished: tuple[FinishDeployment, ...] = ()
    retired: tuple[Retired, ...] = ()

    def retire_reason(self, app_id: str, revision: str) -> str | None:
        for r in self.retired:
            if r.app_id == app_id and r.revision == revision:
                return r.reason
        return None


@dataclass(frozen=True)
class RolloutPace:
    """How fast a rollout starts the new revision: ``parallelism`` new instances at a time (0:
    all at once), and ``delay`` seconds after a batch is ready before the next one starts. The
    serving revision keeps its count until the new one is complete (start-first)."""

    parallelism: int = 0
    delay: float = 0.0


def plan_rollout(
    desired: Iterable[DesiredApp],
    observed: Iterable[ObservedInstance],
    now: float,
    pace: RolloutPace = RolloutPace(),
) -> RolloutPlan:
    by_app: dict[str, list[ObservedInstance]] = defaultdict(list)
    for inst in observed:
        by_app[inst.app_id].append(inst)
    wanted = {app.app_id: app for app in desired}
    groups: list[GroupTarget] = []
    finished: list[FinishDeployment] = []
    retired: list[Retired] = []
    for app_id in sorted(by_app.keys() - wanted.keys()):
        retired += _retire(app_id, by_app[app_id], set(), "app deleted")
    for app_id in sorted(wanted):
        g, f, r = _plan_app(wanted[app_id], by_app.get(app_id, []), now, pace)
        groups += g
        finished += f
        retired += r
    return RolloutPlan(tuple(groups), tuple(finished), tuple(retired))


def _retire(
    app_id: str, instances: Iterable[ObservedInstance], keep: set[str], reason: str
) -> list[Retired]:
    revisions = sorted({i.revision for i in instances} - keep)
    return [Retired(app_id, rev, reason) for rev in revisions]


def _plan_app(
    app: DesiredApp, instances: Sequence[ObservedInstance], now: float, pace: RolloutPace
) -> tuple[list[GroupTarget], list[FinishDeployment], list[Retired]]:
    if app.target is None:
        return [], [], _retire(app.app_id, instances, set(), "no release to run")
    target_key = app.target.key
    serving_key = app.serving.key if app.serving is not None else None
    if not app.rolling_out:
        return (
            [GroupTarget(app.app_id, target_key, app.scale)],
            [],
            _retire(app.app_id, instances, {target_key}, "old revision"),
        )
    assert app.deployment_id is not None
    target = [i for i in instances if i.revision == target_key]
    failure = rollout_failure(app, target, now)
    if failure is not None:
        keep = {serving_key} if serving_key and serving_key != target_key else set()
        finish = FinishDeployment(app.app_id, app.deployment_id, False, failure)
        groups = [GroupTarget(app.app_id, k, app.scale) for k in sorted(keep)]
        retired = _retire(app.app_id, target, set(), "deployment failed")
        retired += _retire(app.app_id, instances, keep | {target_key}, "old revision")
        if serving_key == target_key:  # a failed rollout of what already serves: start over
            groups = [GroupTarget(app.app_id, target_key, app.scale)]
        return groups, [finish], retired
    ready = [i for i in target if i.ready]
    if len(ready) >= app.scale:
        finish = FinishDeployment(
            app.app_id, app.deployment_id, True, f"{app.scale} instances healthy"
        )
        retired = _retire(
            app.app_id,
            [i for i in instances if i.revision == serving_key],
            {target_key},
            "replaced by new revision",
        )
        retired += _retire(
            app.app_id, instances, {target_key, serving_key or target_key}, "old revision"
        )
        return [GroupTarget(app.app_id, target_key, app.scale)], [finish], retired
    keep = {target_key} | ({serving_key} if serving_key else set())
    groups = [GroupTarget(app.app_id, target_key, batch_size(app.scale, target, now, pace))]
    if serving_key and serving_key != target_key:
        groups.append(GroupTarget(app.app_id, serving_key, app.scale))
    return groups, [], _retire(app.app_id, instances, keep, "old revision")


def batch_size(
    scale: int, target: Sequence[ObservedInstance], now: float, pace: RolloutPace
) -> int:
    """How many instances of the new revision to run now: those ready, plus the batch in
    flight (``parallelism``), once the last ready one has been up ``delay`` seconds."""
    if pace.parallelism <= 0 or pace.parallelism >= scale:
        return scale
    ready = [i for i in target if i.ready]
    in_flight = [i for i in target if not i.ready]
    if in_flight:
        return min(scale, len(ready) + max(len(in_flight), pace.parallelism))
    last_up = max((i.started_at or 0.0 for i in ready), default=0.0)
    if ready and now < last_up + pace.delay:
        return len(ready)  # the pause between batches
    return min(scale, len(ready) + pace.parallelism)


def rollout_failure(app: DesiredApp, target: Sequence[ObservedInstance], now: float) -> str | None:
    """Why the rollout to ``app.target`` has failed, or None while it may still succeed."""
    for inst in sorted(target, key=lambda i: i.container_id):
        # Not running after that many exits in a row: exited (restarted in place later), or a
        # backend's replacement still starting (Swarm's next task in the slot).
        if inst.state != "running" and inst.restarts >= CRASH_LOOP_RESTARTS:
            return (
                f"instance crashed {inst.restarts + 1} times in a row "
                f"(last exit code {inst.exit_code})"
            )
    if app.deadline is not None and now >= app.deadline:
        healthy = sum(1 for i in target if i.state == "running" and i.healthy)
        return f"health check: {healthy} of {app.scale} instances healthy before the deadline"
    return None
