"""Rollouts at a pace: the new revision starts ``parallelism`` instances at a time, waits
``delay`` after each ready batch, and the serving revision keeps its full count until the new
one is complete (start-first throughout)."""

from __future__ import annotations

from berth.domain.model import DesiredApp, ObservedInstance, Revision
from berth.domain.rollout import GroupTarget, RolloutPace, batch_size, plan_rollout

OLD, NEW = Revision("r1"), Revision("r2")
APP = DesiredApp("a", 6, target=NEW, serving=OLD, deployment_id="d1", deadline=1000)
PACE = RolloutPace(parallelism=2, delay=5.0)


def inst(cid: str, rev: Revision, ready: bool = True, started: float = 0.0) -> ObservedInstance:
    return ObservedInstance(
        cid, "a", rev.key, "running", healthy=ready, routed=ready, started_at=started
    )


def old() -> list[ObservedInstance]:
    return [inst(f"o{n}", OLD) for n in range(6)]


def targets(observed: list[ObservedInstance], now: float) -> dict[str, int]:
    plan = plan_rollout([APP], observed, now, PACE)
    return {g.revision: g.replicas for g in plan.groups}


def test_the_first_batch_is_parallelism_and_the_old_keeps_its_count() -> None:
    assert targets(old(), now=0) == {NEW.key: 2, OLD.key: 6}


def test_a_batch_in_flight_is_not_grown() -> None:
    observed = [*old(), inst("n1", NEW, ready=False), inst("n2", NEW, ready=True)]
    assert targets(observed, now=1) == {NEW.key: 3, OLD.key: 6}


def test_the_next_batch_waits_for_the_delay() -> None:
    observed = [*old(), inst("n1", NEW, started=10), inst("n2", NEW, started=11)]
    assert targets(observed, now=12) == {NEW.key: 2, OLD.key: 6}
    assert targets(observed, now=16.5) == {NEW.key: 4, OLD.key: 6}


def test_complete_finishes_and_retires_the_old() -> None:
    observed = old() + [inst(f"n{n}", NEW) for n in range(6)]
    plan = plan_rollout([APP], observed, 100, PACE)
    assert plan.groups == (GroupTarget("a", NEW.key, 6),)
    assert plan.finished and plan.finished[0].succeeded


def test_no_pace_is_all_at_once() -> None:
    assert batch_size(6, [], 0, RolloutPace()) == 6
    assert batch_size(6, [], 0, RolloutPace(parallelism=10)) == 6
    assert targets(old(), 0) != {NEW.key: 6}  # (PACE is in use above)
    assert {g.replicas for g in plan_rollout([APP], old(), 0).groups} == {6}
