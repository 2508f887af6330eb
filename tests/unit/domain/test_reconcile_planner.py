"""The pure reconcile planner: unit cases and hypothesis properties (convergence, idempotence)."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from berth.domain.model import DesiredApp, ObservedInstance, Revision
from berth.domain.reconcile import (
    CRASH_LOOP_RESTARTS,
    FinishDeployment,
    Plan,
    RemoveInstance,
    RestartInstance,
    StartInstance,
    plan_reconcile,
    restart_backoff,
)

R1 = Revision("r1", 0)
R2 = Revision("r2", 0)


def inst(cid: str, rev: Revision = R1, app: str = "a", **kw: object) -> ObservedInstance:
    base: dict[str, object] = {"state": "running", "healthy": True, "routed": True}
    base.update(kw)
    return ObservedInstance(cid, app, rev.key, **base)  # type: ignore[arg-type]


def test_starts_missing_instances() -> None:
    plan = plan_reconcile([DesiredApp("a", 2, R1, R1)], [], now=0)
    assert plan.actions == (StartInstance("a", R1.key), StartInstance("a", R1.key))


def test_converged_app_plans_nothing() -> None:
    plan = plan_reconcile([DesiredApp("a", 2, R1, R1)], [inst("c1"), inst("c2")], now=0)
    assert plan.empty


def test_scale_down_removes_unhealthy_then_newest() -> None:
    observed = [
        inst("c1", created_seq=1),
        inst("c2", created_seq=2),
        inst("c3", created_seq=3, healthy=False),
    ]
    plan = plan_reconcile([DesiredApp("a", 1, R1, R1)], observed, now=0)
    removed = {a.container_id for a in plan.actions if isinstance(a, RemoveInstance)}
    assert removed == {"c2", "c3"}


def test_rollout_is_start_first() -> None:
    app = DesiredApp("a", 2, target=R2, serving=R1, deployment_id="d1", deadline=100)
    old = [inst("o1"), inst("o2")]
    plan = plan_reconcile([app], old, now=0)
    assert plan.actions == (StartInstance("a", R2.key), StartInstance("a", R2.key))
    # New instances healthy but not routed yet: the old ones must stay.
    new = [inst("n1", R2, routed=False), inst("n2", R2, routed=False)]
    assert plan_reconcile([app], old + new, now=1).empty
    # Routed: the deployment succeeds and the old instances go.
    new = [inst("n1", R2), inst("n2", R2)]
    plan = plan_reconcile([app], old + new, now=2)
    assert FinishDeployment("a", "d1", True, "2 instances healthy") in plan.actions
    removed = {a.container_id for a in plan.actions if isinstance(a, RemoveInstance)}
    assert removed == {"o1", "o2"}


def test_rollout_fails_at_deadline_and_keeps_old() -> None:
    app = DesiredApp("a", 1, target=R2, serving=R1, deployment_id="d1", deadline=30)
    observed = [inst("o1"), inst("n1", R2, healthy=False, routed=False)]
    plan = plan_reconcile([app], observed, now=31)
    finish = [a for a in plan.actions if isinstance(a, FinishDeployment)]
    assert len(finish) == 1 and not finish[0].succeeded
    removed = {a.container_id for a in plan.actions if isinstance(a, RemoveInstance)}
    assert removed == {"n1"}


def test_crash_loop_fails_rollout_early() -> None:
    app = DesiredApp("a", 1, target=R2, serving=R1, deployment_id="d1", deadline=1000)
    crashed = inst("n1", R2, state="exited", restarts=CRASH_LOOP_RESTARTS, exit_code=1)
    plan = plan_reconcile([app], [inst("o1"), crashed], now=5)
    finish = [a for a in plan.actions if isinstance(a, FinishDeployment)]
    assert finish and not finish[0].succeeded and "exit code 1" in finish[0].reason


def test_crashed_instance_restarts_after_backoff() -> None:
    app = DesiredApp("a", 1, R1, R1)
    crashed = inst("c1", state="exited", restarts=2, finished_at=100.0, exit_code=137)
    early = plan_reconcile([app], [crashed], now=100.0 + restart_backoff(2) - 0.5)
    assert early.empty and early.waiting and "exit code 137" in early.waiting[0].reason
    late = plan_reconcile([app], [crashed], now=100.0 + restart_backoff(2))
    assert late.actions == (RestartInstance("a", "c1"),)


def test_backoff_is_quick_first_then_doubles_and_caps() -> None:
    delays = [restart_backoff(n) for n in range(10)]
    assert delays[:5] == [0.1, 1.0, 2.0, 4.0, 8.0]  # the first like Docker's restart policy
    assert max(delays) == 60.0


def test_deleted_app_instances_are_removed() -> None:
    plan = plan_reconcile([], [inst("c1", app="gone")], now=0)
    assert plan.actions == (RemoveInstance("gone", "c1", "app deleted"),)


# --- properties -------------------------------------------------------------------------------

REVS = [Revision("r1", 0), Revision("r2", 0), Revision("r2", 1)]
STATES = ["running", "exited", "created", "restarting"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[DesiredApp], list[ObservedInstance]]:
    apps: list[DesiredApp] = []
    for idx in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from([None, *REVS]))
        serving = draw(st.sampled_from([None, *REVS]))
        rolling = target is not None and draw(st.booleans())
        apps.append(
            DesiredApp(
                f"app{idx}",
                draw(st.integers(0, 4)),
                target=target,
                serving=serving if rolling else target,
                deployment_id=f"d{idx}" if rolling else None,
                deadline=draw(st.sampled_from([50.0, 5000.0])) if rolling else None,
            )
        )
    observed: list[ObservedInstance] = []
    counter = itertools.count()
    for _ in range(draw(st.integers(0, 12))):
        n = next(counter)
        observed.append(
            ObservedInstance(
                container_id=f"c{n}",
                app_id=draw(st.sampled_from([f"app{i}" for i in range(4)])),
                revision=draw(st.sampled_from(REVS)).key,
                state=draw(st.sampled_from(STATES)),
                healthy=draw(st.booleans()),
                routed=draw(st.booleans()),
                restarts=draw(st.integers(0, 5)),
                exit_code=draw(st.sampled_from([None, 0, 1, 137])),
                finished_at=draw(st.sampled_from([None, 0.0, 10.0])),
                created_seq=n,
            )
        )
    return apps, observed


def apply_plan(
    desired: list[DesiredApp], observed: list[ObservedInstance], plan: Plan, ids: itertools.count
) -> tuple[list[DesiredApp], list[ObservedInstance]]:
    """A simulated engine and store: every started instance comes up healthy."""
    by_id = {i.container_id: i for i in observed}
    apps = {a.app_id: a for a in desired}
    for action in plan.actions:
        if isinstance(action, StartInstance):
            n = next(ids)
            cid = f"new{n}"
            by_id[cid] = ObservedInstance(
                cid, action.app_id, action.revision, "running", healthy=True, created_seq=1000 + n
            )
        elif isinstance(action, RestartInstance):
            old = by_id[action.container_id]
            by_id[action.container_id] = dataclasses.replace(
                old, state="running", healthy=True, restarts=old.restarts + 1
            )
        elif isinstance(action, RemoveInstance):
            del by_id[action.container_id]
        elif isinstance(action, FinishDeployment):
            app = apps[action.app_id]
            new_serving = app.target if action.succeeded else app.serving
            apps[action.app_id] = dataclasses.replace(
                app, target=new_serving, serving=new_serving, deployment_id=None, deadline=None
            )
    # The controller routes every running, healthy instance after each round.
    routed = [
        dataclasses.replace(i, routed=i.state == "running" and i.healthy) for i in by_id.values()
    ]
    return list(apps.values()), routed


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plan_is_deterministic(world: tuple[list[DesiredApp], list[ObservedInstance]]) -> None:
    desired, observed = world
    assert plan_reconcile(desired, observed, 20.0) == plan_reconcile(desired, observed, 20.0)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_applying_plans_converges_to_desired(
    world: tuple[list[DesiredApp], list[ObservedInstance]],
) -> None:
    desired, observed = world
    now = 20.0
    ids = itertools.count()
    for _ in range(8):
        plan = plan_reconcile(desired, observed, now)
        desired, observed = apply_plan(desired, observed, plan, ids)
        now += 1000.0  # past every backoff, and soon past every deadline
    final = plan_reconcile(desired, observed, now)
    assert final.empty, final
    assert plan_reconcile(desired, observed, now).empty  # planning again: still nothing
    wanted = {a.app_id: a for a in desired}
    for app in desired:
        mine = [i for i in observed if i.app_id == app.app_id]
        if app.target is None:
            assert mine == []
        else:
            assert app.deployment_id is None
            assert len(mine) == app.scale
            assert all(i.revision == app.target.key and i.alive for i in mine)
    assert all(i.app_id in wanted for i in observed)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_old_revision_only_goes_after_new_is_ready(
    world: tuple[list[DesiredApp], list[ObservedInstance]],
) -> None:
    desired, observed = world
    plan = plan_reconcile(desired, observed, 20.0)
    for app in desired:
        if not app.rolling_out or app.serving is None or app.target is None:
            continue
        if app.serving == app.target:
            continue
        failed = any(
            isinstance(a, FinishDeployment) and a.app_id == app.app_id and not a.succeeded
            for a in plan.actions
        )
        replaced = [
            a
            for a in plan.actions
            if isinstance(a, RemoveInstance)
            and a.app_id == app.app_id
            and a.reason == "replaced by new revision"
        ]
        if replaced and not failed:
            ready = [
                i
                for i in observed
                if i.app_id == app.app_id and i.revision == app.target.key and i.ready
            ]
            assert len(ready) >= app.scale


def test_failed_first_deploy_starts_nothing_more() -> None:
    app = DesiredApp("a", 2, target=R2, serving=None, deployment_id="d1", deadline=10)
    failing = [inst("n1", R2, healthy=False, routed=False)]
    plan = plan_reconcile([app], failing, now=11)
    assert not [a for a in plan.actions if isinstance(a, StartInstance)]
    assert RemoveInstance("a", "n1", "deployment failed") in plan.actions


def test_failed_rollout_tops_up_the_serving_revision_only() -> None:
    app = DesiredApp("a", 2, target=R2, serving=R1, deployment_id="d1", deadline=10)
    observed = [inst("o1"), inst("n1", R2, healthy=False, routed=False)]
    plan = plan_reconcile([app], observed, now=11)
    starts = [a for a in plan.actions if isinstance(a, StartInstance)]
    assert starts == [StartInstance("a", R1.key)]
