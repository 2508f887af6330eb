"""The churn plan and effect recognition of the edge benchmark (bench/edge/plan.py)."""

from __future__ import annotations

from bench.edge.configs import backend_tag
from bench.edge.plan import Change, EffectWatch, change_plan, domain_name, initial_routes

BASE = [domain_name(i) for i in range(3)]


def test_initial_routes_spread_domains_over_backends() -> None:
    routes = initial_routes(5, [1001, 1002])
    assert routes == {
        "d0.edge.test": [1001],
        "d1.edge.test": [1002],
        "d2.edge.test": [1001],
        "d3.edge.test": [1002],
        "d4.edge.test": [1001],
    }


def test_plan_undoes_every_change_it_makes() -> None:
    plan = change_plan(1000, BASE, 9999, [1001, 1002])
    assert len(plan) == 1000
    assert [c.kind for c in plan[:4]] == [
        "add_upstream",
        "remove_upstream",
        "add_domain",
        "remove_domain",
    ]
    for add, remove in zip(plan[0::2], plan[1::2], strict=True):
        assert (add.domain, add.ports) == (remove.domain, remove.ports)
    upstream_changes = [c for c in plan if c.kind.endswith("upstream")]
    assert {c.domain for c in upstream_changes} == set(BASE)
    assert {c.ports for c in upstream_changes} == {(9999,)}
    new_domains = {c.domain for c in plan if c.kind == "add_domain"}
    assert len(new_domains) == 250
    assert not new_domains & set(BASE)


def test_a_partial_cycle_is_cut_where_the_count_ends() -> None:
    plan = change_plan(6, BASE, 9999, [1001])
    assert [c.kind for c in plan] == [
        "add_upstream",
        "remove_upstream",
        "add_domain",
        "remove_domain",
        "add_upstream",
        "remove_upstream",
    ]
    assert plan[4].domain == BASE[1]


def test_an_added_upstream_counts_once_it_answers() -> None:
    watch = EffectWatch(Change("add_upstream", BASE[0], (9999,)))
    assert not watch.seen(200, b"b1001\n")
    assert not watch.seen(None, b"")
    assert watch.seen(200, backend_tag(9999).encode() + b"\n")


def test_a_removed_upstream_counts_after_a_streak_of_other_answers() -> None:
    watch = EffectWatch(Change("remove_upstream", BASE[0], (9999,)), settle=3)
    assert not watch.seen(200, b"b1001\n")
    assert not watch.seen(200, b"b1001\n")
    assert not watch.seen(200, b"b9999\n")  # still answering: the streak starts again
    assert not watch.seen(200, b"b1001\n")
    assert not watch.seen(502, b"")  # an error is no evidence either
    assert not watch.seen(200, b"b1001\n")
    assert not watch.seen(200, b"b1001\n")
    assert watch.seen(200, b"b1001\n")


def test_domains_count_when_they_answer_or_are_gone() -> None:
    added = EffectWatch(Change("add_domain", "new0.churn.test", (1001,)))
    assert not added.seen(404, b"")
    assert added.seen(200, b"b1001\n")
    removed = EffectWatch(Change("remove_domain", "new0.churn.test", (1001,)))
    assert not removed.seen(200, b"b1001\n")
    assert removed.seen(404, b"")
