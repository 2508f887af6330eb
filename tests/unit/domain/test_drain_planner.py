"""The start-first drain, pure: surge first, evict only once every group is covered elsewhere,
report a timeout with what is short."""

from __future__ import annotations

from berth.domain.drain import DrainRequest, plan_drains
from berth.workloads.protocol import WorkloadInstance

G = "app1/web/r1:0"


def inst(iid: str, node: str, state: str = "running", group: str = G) -> WorkloadInstance:
    return WorkloadInstance(iid, group, "t1", group.split("/")[0], "r1:0", state, node=node)  # type: ignore[arg-type]


def test_no_drain_changes_nothing() -> None:
    plan = plan_drains([], {G: 2}, [inst("a", "w1")], frozenset({"a"}), now=0)
    assert plan.replicas == {G: 2} and not plan.leaving and not plan.evict


def test_surge_first_while_the_group_is_not_covered_elsewhere() -> None:
    instances = [inst("a", "w1"), inst("b", "w2")]
    plan = plan_drains([DrainRequest("w1", 100)], {G: 2}, instances, frozenset({"a", "b"}), 0)
    assert plan.replicas == {G: 3}  # one extra replica for the one on w1
    assert not plan.leaving and not plan.evict
    assert plan.progress[0].status == "draining" and "1 of 2 ready" in plan.progress[0].message


def test_a_replacement_not_yet_ready_does_not_count() -> None:
    instances = [inst("a", "w1"), inst("b", "w2"), inst("c", "w3", state="starting")]
    plan = plan_drains([DrainRequest("w1", 100)], {G: 2}, instances, frozenset({"a", "b"}), 0)
    assert plan.replicas == {G: 3} and not plan.evict


def test_evict_once_covered_and_back_to_the_count() -> None:
    instances = [inst("a", "w1"), inst("b", "w2"), inst("c", "w3")]
    ready = frozenset({"a", "b", "c"})
    plan = plan_drains([DrainRequest("w1", 100)], {G: 2}, instances, ready, now=1)
    assert plan.replicas == {G: 2}
    assert plan.leaving == {"a"} and plan.evict == ("w1",)
    assert plan.progress[0].status == "evicting"


def test_drained_when_nothing_runs_on_the_node() -> None:
    instances = [inst("a", "w1", state="stopping"), inst("b", "w2"), inst("c", "w3")]
    plan = plan_drains([DrainRequest("w1", 100)], {G: 2}, instances, frozenset({"b", "c"}), 2)
    assert plan.progress[0].status == "drained" and not plan.evict and plan.replicas == {G: 2}


def test_timeout_stops_surging_and_says_what_is_short() -> None:
    instances = [inst("a", "w1"), inst("b", "w2")]
    plan = plan_drains([DrainRequest("w1", 10)], {G: 2}, instances, frozenset({"a", "b"}), 11)
    assert plan.replicas == {G: 2} and not plan.evict
    assert plan.progress[0].status == "timed_out"
    assert "1 of 2 ready" in plan.progress[0].message


def test_two_drained_nodes_cover_only_with_other_nodes() -> None:
    instances = [inst("a", "w1"), inst("b", "w2"), inst("c", "w3")]
    ready = frozenset({"a", "b", "c"})
    drains = [DrainRequest("w1", 100), DrainRequest("w2", 100)]
    plan = plan_drains(drains, {G: 2}, instances, ready, now=0)
    # Only w3's instance counts for either node: both surge.
    assert plan.replicas == {G: 4} and not plan.evict
