"""Reported through: up to when every node's reports are in (berth.billing.watermark)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.billing.watermark import (
    Holder,
    NodeReport,
    advance,
    detection_bound,
    reported_through,
    swarm_detection_bound,
)

T = 1_800_000_000.0
HOUR = 3600.0
BOUND = swarm_detection_bound(2.0)


def test_swarm_bound_is_three_jittered_heartbeats_and_a_status_batch() -> None:
    # 3 x (2 s + 0.5 s epsilon) + 0.1 s batch: the longest a silent node reads ready.
    assert swarm_detection_bound(2.0) == pytest.approx(7.6)
    assert swarm_detection_bound(5.0) == pytest.approx(16.6)  # Swarm's own default period
    assert detection_bound("local", 2.0) == 0.0
    assert detection_bound("swarm", 2.0) == pytest.approx(7.6)
    with pytest.raises(ValueError):
        swarm_detection_bound(0.0)


def test_local_engine_answers_for_itself_so_the_mark_is_the_pass_time() -> None:
    mark = reported_through(T, [NodeReport("local", "ready", T)], 0.0, HOUR)
    assert (mark.reported_through, mark.held_by, mark.not_waited_for) == (T, (), ())


def test_ready_nodes_are_complete_up_to_the_detection_bound_before_the_pass() -> None:
    nodes = [NodeReport("w1", "ready", T), NodeReport("w2", "ready", T)]
    assert reported_through(T, nodes, BOUND, HOUR).reported_through == T - BOUND
    # No nodes listed at all: still no later than what a node could be late by.
    assert reported_through(T, [], BOUND, HOUR).reported_through == T - BOUND


def test_a_down_node_holds_nothing() -> None:
    nodes = [NodeReport("w1", "ready", T), NodeReport("w2", "down", T - 5 * HOUR)]
    mark = reported_through(T, nodes, BOUND, HOUR)
    assert mark.reported_through == T - BOUND and mark.held_by == ()


def test_an_unknown_node_holds_the_mark_at_when_it_was_last_known_good() -> None:
    nodes = [
        NodeReport("w1", "ready", T),
        NodeReport("w2", "unknown", T - 600),
        NodeReport("w3", "disconnected", T - 60),
    ]
    mark = reported_through(T, nodes, BOUND, HOUR)
    assert mark.reported_through == T - 600 - BOUND
    assert mark.held_by == (
        Holder("w2", "unknown", T - 600),
        Holder("w3", "disconnected", T - 60),
    )
    assert mark.not_waited_for == ()


def test_a_node_silent_past_the_wait_bound_is_not_waited_for_and_is_named() -> None:
    nodes = [NodeReport("w1", "ready", T), NodeReport("w2", "unknown", T - HOUR - 1)]
    mark = reported_through(T, nodes, BOUND, HOUR)
    assert mark.reported_through == T - BOUND
    assert mark.held_by == ()
    assert mark.not_waited_for == (Holder("w2", "unknown", T - HOUR - 1),)
    # Exactly at the bound it is still waited for.
    at_bound = reported_through(T, [NodeReport("w2", "unknown", T - HOUR)], BOUND, HOUR)
    assert at_bound.reported_through == T - HOUR - BOUND


def test_a_waited_for_node_without_any_time_keeps_the_mark_where_it_is() -> None:
    mark = reported_through(T, [NodeReport("w2", "unknown", None)], BOUND, HOUR)
    assert mark.reported_through is None
    assert advance(T - 50, mark.reported_through) == T - 50


def test_advance_never_moves_back() -> None:
    assert advance(None, T) == T
    assert advance(T, T - 10) == T
    assert advance(T, T + 10) == T + 10
    assert advance(None, None) is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        reported_through(T, [], -1.0, HOUR)
    with pytest.raises(ValueError):
        reported_through(float("nan"), [], BOUND, HOUR)


STATES = st.sampled_from(["ready", "down", "unknown", "disconnected"])
NODE = st.builds(
    NodeReport,
    name=st.sampled_from(["w1", "w2", "w3", "w4", "m1"]),
    state=STATES,
    last_seen=st.one_of(st.none(), st.floats(T - 3 * HOUR, T + 60)),
)
NODES = st.lists(NODE, max_size=8)
BOUNDS = st.floats(0, 60)
WAITS = st.floats(0, 2 * HOUR)


@settings(max_examples=300)
@given(st.floats(T - HOUR, T + HOUR), NODES, BOUNDS, WAITS)
def test_the_mark_never_exceeds_the_observation_time(
    observed: float, nodes: list[NodeReport], bound: float, wait: float
) -> None:
    mark = reported_through(observed, nodes, bound, wait).reported_through
    assert mark is None or mark <= observed - bound


@settings(max_examples=300)
@given(NODES, BOUNDS, WAITS, st.floats(T - HOUR, T), st.lists(st.floats(0, 600), max_size=6))
def test_the_stored_mark_never_moves_back_over_passes(
    nodes: list[NodeReport], bound: float, wait: float, start: float, steps: list[float]
) -> None:
    stored: float | None = None
    observed = start
    for step in [0.0, *steps]:
        observed += step
        candidate = reported_through(observed, nodes, bound, wait).reported_through
        new = advance(stored, candidate)
        assert stored is None or (new is not None and new >= stored)
        stored = new


@settings(max_examples=300)
@given(st.floats(T - HOUR, T + HOUR), NODES, BOUNDS, WAITS, st.floats(T - 5 * HOUR, T + HOUR))
def test_adding_a_down_node_changes_nothing(
    observed: float, nodes: list[NodeReport], bound: float, wait: float, since: float
) -> None:
    without = reported_through(observed, nodes, bound, wait)
    down = NodeReport("gone", "down", since)
    assert reported_through(observed, [*nodes, down], bound, wait) == without


@settings(max_examples=300)
@given(st.floats(T - HOUR, T + HOUR), NODES, BOUNDS, WAITS)
def test_a_node_that_comes_back_ready_never_lowers_the_mark(
    observed: float, nodes: list[NodeReport], bound: float, wait: float
) -> None:
    before = reported_through(observed, nodes, bound, wait).reported_through
    back = [NodeReport(n.name, "ready", observed) for n in nodes]
    after = reported_through(observed, back, bound, wait).reported_through
    assert after == observed - bound
    assert before is None or before <= after
