"""Build admission: ordering, positions and caps (threads only where waiting is the point)."""

from __future__ import annotations

import threading

import pytest

from berth.builds.queue import BuildQueue, QueueState
from berth.errors import TooManyRequests


def test_runs_at_once_when_there_is_room() -> None:
    queue = BuildQueue(max_total=2)
    a = queue.enter("a", 1, 5)
    b = queue.enter("b", 1, 5)
    assert queue.state(a).running and queue.state(b).running
    assert queue.running == 2 and queue.waiting == 0


def test_per_tenant_limit_queues_the_second_build() -> None:
    queue = BuildQueue(max_total=4)
    first = queue.enter("a", 1, 5)
    second = queue.enter("a", 1, 5)
    assert queue.state(second) == QueueState(False, 1, 1)
    assert queue.state(second).message() == "queued: position 1 (1 build of yours running)"
    queue.leave(first)
    assert queue.state(second).running


def test_platform_limit_and_fifo_positions() -> None:
    queue = BuildQueue(max_total=1)
    running = queue.enter("a", 2, 5)
    b1 = queue.enter("b", 2, 5)
    c1 = queue.enter("c", 2, 5)
    b2 = queue.enter("b", 2, 5)
    assert [queue.state(t).position for t in (b1, c1, b2)] == [1, 2, 3]
    assert queue.state(c1).message() == "queued: position 2 (0 builds of yours running)"
    queue.leave(running)
    assert queue.state(b1).running
    assert [queue.state(t).position for t in (c1, b2)] == [1, 2]
    queue.leave(b1)
    assert queue.state(c1).running and queue.state(b2).position == 1


def test_a_tenant_at_its_limit_does_not_hold_up_others() -> None:
    queue = BuildQueue(max_total=3)
    queue.enter("a", 1, 5)
    a2 = queue.enter("a", 1, 5)  # waits: a is at its limit
    b = queue.enter("b", 1, 5)  # behind a2 in line, but may run
    assert not queue.state(a2).running
    assert queue.state(b).running


def test_waiting_cap_per_tenant() -> None:
    queue = BuildQueue(max_total=1)
    queue.enter("a", 1, 2)
    queue.enter("a", 1, 2)
    queue.enter("a", 1, 2)
    with pytest.raises(TooManyRequests, match="2 of yours are queued"):
        queue.enter("a", 1, 2)
    queue.enter("b", 1, 2)  # another tenant still may wait
    zero = BuildQueue(max_total=1)
    zero.enter("a", 1, 0)
    with pytest.raises(TooManyRequests):
        zero.enter("a", 1, 0)


def test_leaving_while_waiting_moves_the_others_up() -> None:
    queue = BuildQueue(max_total=1)
    queue.enter("a", 1, 5)
    w1 = queue.enter("b", 1, 5)
    w2 = queue.enter("c", 1, 5)
    queue.leave(w1)
    assert queue.state(w2).position == 1
    queue.leave(w1)  # twice is fine
    with pytest.raises(ValueError):
        queue.state(w1)


def test_wait_returns_when_the_ticket_starts() -> None:
    queue = BuildQueue(max_total=1)
    first = queue.enter("a", 1, 5)
    second = queue.enter("b", 1, 5)
    seen: list[QueueState] = []
    waiter = threading.Thread(target=lambda: seen.append(queue.wait(second, 30)))
    waiter.start()
    queue.leave(first)
    waiter.join(30)
    assert seen == [QueueState(True, 0, 1)]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        BuildQueue(max_total=0)
