"""``Workloads.nodes()``' ``last_seen``, what billing's watermark waits from, on both backends:
the listing's time while a node is ready; otherwise when it was last known good."""

from __future__ import annotations

from berth.runtime.fake import FakeRuntime
from berth.swarm.fake import FakeSwarmAPI
from berth.workloads.local import LocalWorkloads
from berth.workloads.swarm import SwarmWorkloads


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_local_engine_is_seen_at_each_listing_and_not_when_it_is_down() -> None:
    clock = Clock()
    runtime = FakeRuntime("inst-last-seen", clock=clock)
    workloads = LocalWorkloads(runtime, clock=clock)
    try:
        [node] = workloads.nodes()
        assert (node.state, node.last_seen) == ("ready", clock.now)
        runtime.set_reachable(False)
        [node] = workloads.nodes()
        assert (node.state, node.last_seen) == ("down", None)
    finally:
        workloads.close()


def test_a_swarm_node_out_of_ready_is_last_seen_when_it_last_read_ready() -> None:
    clock = Clock()
    fake = FakeSwarmAPI(clock=clock)
    worker = fake.add_node("w1")
    workloads = SwarmWorkloads(fake, "inst-last-seen", clock=clock)
    [node] = workloads.nodes()
    assert (node.state, node.last_seen) == ("ready", clock.now)
    seen_ready = clock.now
    clock.now += 30
    fake.set_node_state(worker, "unknown")
    clock.now += 30
    [node] = workloads.nodes()
    # Swarm's UpdatedAt says 30 s later, but this server last saw it ready before that.
    assert (node.state, node.last_seen) == ("unknown", seen_ready)
    # A label edit moves UpdatedAt on; the node is not any better known for it.
    clock.now += 30
    [spec] = fake.nodes()
    fake.update_node(worker, spec["Version"]["Index"], {**spec["Spec"], "Labels": {"a": "b"}})
    [node] = workloads.nodes()
    assert node.last_seen == seen_ready


def test_a_new_server_waits_from_swarms_updated_at() -> None:
    clock = Clock()
    fake = FakeSwarmAPI(clock=clock)
    worker = fake.add_node("w1")
    clock.now += 60
    fake.set_node_state(worker, "disconnected")
    changed = clock.now
    clock.now += 600
    [node] = SwarmWorkloads(fake, "inst-last-seen", clock=clock).nodes()
    assert (node.state, node.last_seen) == ("disconnected", changed)
