"""SwarmWorkloads over the fake swarm: idempotent apply, scaling, removal, reasons, loss."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from berth.errors import EngineUnavailable, RuntimeFailure
from berth.swarm.fake import FakeSwarmAPI
from berth.workloads.protocol import ProcessGroup, Workloads
from berth.workloads.swarm import SwarmWorkloads

GROUP = ProcessGroup(
    tenant_id="t1",
    app_id="a1",
    app_name="hello",
    revision="r1:1",
    release_id="r1",
    release_version=1,
    image="berth/busybox:latest",
    replicas=6,
    memory_mb=256,
    cpus_milli=250,
    pids_limit=100,
    disk_mb=16,
    network="berth-t-t1",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> FakeSwarmAPI:
    swarm = FakeSwarmAPI()
    swarm.add_node("m1", role="manager", availability="drain")
    for short, zone in (("w1", "a"), ("w2", "b"), ("w3", "c")):
        swarm.add_node(short, labels={"zone": zone}, memory_bytes=2 * 1024**3)
    return swarm


@pytest.fixture
def backend(fake: FakeSwarmAPI) -> SwarmWorkloads:
    return SwarmWorkloads(fake, "inst1")


def alive(backend: SwarmWorkloads, group: ProcessGroup = GROUP) -> list:
    return [i for i in backend.instances() if i.group == group.key and i.alive]


def test_it_is_a_workloads_backend(backend: SwarmWorkloads) -> None:
    assert isinstance(backend, Workloads) and backend.kind == "swarm"


def test_apply_is_idempotent_and_writes_only_what_changed(
    fake: FakeSwarmAPI, backend: SwarmWorkloads
) -> None:
    backend.apply([GROUP])
    assert fake.writes == 2  # the overlay and the service
    backend.apply([GROUP])
    assert fake.writes == 2  # nothing changed: nothing written
    backend.apply([replace(GROUP, replicas=3)])
    assert fake.writes == 3  # one update: the count
    service = fake.services()[0]
    tasks_before = {t["ID"] for t in fake.tasks() if t["DesiredState"] == "running"}
    backend.apply([replace(GROUP, replicas=3)])
    assert fake.writes == 3
    assert {t["ID"] for t in fake.tasks() if t["DesiredState"] == "running"} == tasks_before
    assert fake.services()[0]["Version"]["Index"] == service["Version"]["Index"]


def test_six_replicas_spread_over_the_zones(backend: SwarmWorkloads) -> None:
    backend.apply([GROUP])
    running = alive(backend)
    assert Counter(i.node for i in running) == {"w1": 2, "w2": 2, "w3": 2}
    assert all(i.state == "running" and i.port and i.address for i in running)
    assert len({(i.node, i.port) for i in running}) == 6


def test_a_constrained_group_runs_only_where_it_may(backend: SwarmWorkloads) -> None:
    group = replace(GROUP, replicas=3, constraints=("zone==b",))
    backend.apply([group])
    assert {i.node for i in alive(backend, group)} == {"w2"}


def test_unsatisfiable_groups_are_pending_with_swarms_reason(backend: SwarmWorkloads) -> None:
    nowhere = replace(GROUP, app_id="a2", replicas=2, constraints=("zone==nowhere",))
    huge = replace(GROUP, app_id="a3", replicas=1, memory_mb=4096)
    backend.apply([nowhere, huge])
    pending = [i for i in backend.instances() if i.group == nowhere.key]
    assert [i.state for i in pending] == ["pending", "pending"]
    assert all("scheduling constraints not satisfied on 3 nodes" in i.reason for i in pending)
    (big,) = [i for i in backend.instances() if i.group == huge.key]
    assert big.state == "pending" and "insufficient resources on 3 nodes" in big.reason


def test_a_group_swarm_cannot_take_is_pending_with_why_and_others_still_apply(
    fake: FakeSwarmAPI, backend: SwarmWorkloads
) -> None:
    bad = replace(GROUP, app_id="bad", replicas=2, constraints=("zone=b",))
    backend.apply([bad, GROUP])
    refused = [i for i in backend.instances() if i.group == bad.key]
    assert [i.state for i in refused] == ["pending", "pending"]
    assert all("LABEL==VALUE" in i.reason for i in refused)
    assert len(alive(backend)) == 6
    assert len(fake.services()) == 1


def test_scaling_down_keeps_the_lowest_slots(backend: SwarmWorkloads) -> None:
    backend.apply([GROUP])
    first = {i.slot: i.id for i in alive(backend)}
    backend.apply([replace(GROUP, replicas=2)])
    kept = alive(backend)
    assert sorted(i.slot.rsplit(".", 1)[1] for i in kept) == ["1", "2"]
    assert {i.id for i in kept} <= set(first.values())


def test_an_empty_apply_removes_services_and_overlays_and_reports_removed_once(
    fake: FakeSwarmAPI,
) -> None:
    clock = Clock()
    backend = SwarmWorkloads(fake, "inst1", clock=clock)
    backend.apply([GROUP])
    running = {i.id for i in alive(backend)}
    clock.now += 30
    backend.apply([])
    assert fake.services() == [] and fake.networks() == []
    removed = backend.instances()
    assert {i.id for i in removed} == running
    assert all(i.state == "removed" and i.finished_at == clock.now for i in removed)
    assert backend.instances() == []


def test_another_installation_is_left_alone(fake: FakeSwarmAPI, backend: SwarmWorkloads) -> None:
    theirs = SwarmWorkloads(fake, "inst2")
    theirs.apply([replace(GROUP, network="berth-t-t9")])
    backend.apply([GROUP])
    backend.apply([])
    assert len(fake.services()) == 1 and len(theirs.instances()) == 6
    assert backend.instances() and all(i.state == "removed" for i in backend.instances())


def test_a_lost_node_is_replaced_and_its_instances_are_over(
    fake: FakeSwarmAPI, backend: SwarmWorkloads
) -> None:
    backend.apply([GROUP])
    lost = {i.id for i in alive(backend) if i.node == "w1"}
    fake.set_node_state(fake.node_id("w1"), "down")
    now = backend.instances()
    assert len([i for i in now if i.alive]) == 6
    assert {i.node for i in now if i.alive} == {"w2", "w3"}
    for instance in (i for i in now if i.id in lost):
        assert instance.state == "removed" and instance.reason == "node w1 is down"
    fake.set_node_state(fake.node_id("w1"), "ready")
    assert all(i.state == "removed" for i in backend.instances() if i.id in lost)


def test_a_crash_loop_says_so(fake: FakeSwarmAPI, backend: SwarmWorkloads) -> None:
    backend.apply([replace(GROUP, replicas=1)])
    (task_id,) = [i.id for i in alive(backend)]
    for _ in range(3):
        task_id = fake.crash_task(task_id, exit_code=7) or ""
    (current,) = alive(backend)
    assert current.restarts == 3
    assert current.reason == "crash loop: exited 3 times in a row (last exit code 7)"
    # The failed tasks are history (Swarm never restarts a task): over, with their exit codes.
    ended = [i for i in backend.instances() if i.state == "removed"]
    assert len(ended) == 3 and {i.exit_code for i in ended} == {7}


def test_nodes_are_summarised(backend: SwarmWorkloads) -> None:
    nodes = {n.name: n for n in backend.nodes()}
    assert set(nodes) == {"m1", "w1", "w2", "w3"}
    assert nodes["m1"].role == "manager" and nodes["m1"].availability == "drain"
    assert nodes["w2"].labels == {"zone": "b"} and nodes["w2"].state == "ready"
    assert nodes["w2"].memory_bytes == 2 * 1024**3 and nodes["w2"].address


def test_logs_of_own_tasks_only(fake: FakeSwarmAPI, backend: SwarmWorkloads) -> None:
    backend.apply([replace(GROUP, replicas=1)])
    (instance,) = alive(backend)
    fake.set_task_logs(instance.id, "one\ntwo\nthree\n")
    assert backend.logs(instance.id, tail=2) == "two\nthree\n"
    assert list(backend.follow_logs(instance.id, tail=1)) == ["three"]
    theirs = SwarmWorkloads(fake, "inst2")
    theirs.apply([replace(GROUP, app_id="other", replicas=1, network="berth-t-t9")])
    (foreign,) = [i.id for i in theirs.instances()]
    with pytest.raises(RuntimeFailure):
        backend.logs(foreign)


def test_an_unreachable_swarm_raises_engine_unavailable(fake: FakeSwarmAPI) -> None:
    class Down(FakeSwarmAPI):
        def services(self, labels=None):  # type: ignore[no-untyped-def]
            raise EngineUnavailable("the swarm manager cannot be reached")

    with pytest.raises(EngineUnavailable):
        SwarmWorkloads(Down(), "inst1").apply([GROUP])


def test_a_foreign_network_of_the_same_name_refuses_only_its_groups(
    fake: FakeSwarmAPI, backend: SwarmWorkloads
) -> None:
    fake.ensure_overlay("berth-o-t2", {"someone": "else"})  # the overlay of berth-t-t2
    mine = replace(GROUP, app_id="a2", tenant_id="t2", network="berth-t-t2", replicas=1)
    backend.apply([GROUP, mine])
    (refused,) = [i for i in backend.instances() if i.group == mine.key]
    assert refused.state == "pending" and "not this installation's overlay" in refused.reason
    assert len(alive(backend)) == 6


def test_tasks_that_outlive_their_service_stop_then_are_removed_once() -> None:
    fake = FakeSwarmAPI(linger=True)
    fake.add_node("w1")
    clock = Clock()
    backend = SwarmWorkloads(fake, "inst1", clock=clock)
    group = replace(GROUP, replicas=2)
    backend.apply([group])
    ids = {i.id for i in alive(backend, group)}
    backend.apply([])
    assert fake.services() == []
    assert {(i.id, i.state) for i in backend.instances()} == {(i, "stopping") for i in ids}
    assert fake.networks() != []  # still in use by the stopping tasks
    fake.finish_removals()
    stopped = backend.instances()
    assert {i.state for i in stopped} == {"removed"} and all(i.finished_at for i in stopped)
    assert {i.id for i in stopped} == ids  # over, with their end: billing closes them
    fake.finish_removals()
    assert backend.instances() == []  # and then gone
    backend.apply([])
    assert fake.networks() == []


class RefusingSwarm(FakeSwarmAPI):
    """A swarm that refuses to create services (a manager's validation error), counting tries."""

    def __init__(self) -> None:
        super().__init__()
        self.creates = 0
        self.refusing = True

    def create_service(self, spec):  # type: ignore[no-untyped-def]
        self.creates += 1
        if self.refusing:
            raise RuntimeFailure("rpc error: code = InvalidArgument desc = no, not today")
        return super().create_service(spec)


def test_a_refused_write_backs_off_exponentially_and_a_changed_group_goes_at_once() -> None:
    swarm = RefusingSwarm()
    swarm.add_node("w1", memory_bytes=2 * 1024**3)
    clock = Clock()
    backend = SwarmWorkloads(swarm, "inst1", clock=clock)
    group = replace(GROUP, replicas=1)

    backend.apply([group])
    assert swarm.creates == 1
    (pending,) = [i for i in backend.instances() if i.group == group.key]
    assert pending.state == "pending" and "not today" in pending.reason
    assert "next try in 1 s" in pending.reason

    # Passes within the wait do not write again; each failure doubles the wait (1, 2, 4 s).
    tries = []
    for _ in range(16):
        clock.now += 0.5
        backend.apply([group])
        tries.append(swarm.creates)
    assert tries[-1] == 4, tries  # tried at +1 s, +3 s, +7 s: not 16 times
    (pending,) = [i for i in backend.instances() if i.group == group.key]
    assert "next try in" in pending.reason

    # A new release (another group value) is tried at once, whatever the backoff says.
    swarm.refusing = False
    newer = replace(group, replicas=2)
    backend.apply([newer])
    assert swarm.creates == 5
    assert not [i for i in backend.instances() if "not today" in (i.reason or "")]
    (service,) = swarm.services()
    assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
