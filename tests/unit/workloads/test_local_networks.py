"""The local backend keeps a tenant network a while after nothing uses it: deleting a tenant's
only app and creating one again does not make (and egress-filter) a new network; a network
left unused for NETWORK_IDLE_SECONDS is removed, by a pass the backend wakes itself."""

from __future__ import annotations

from dataclasses import replace

from berth.runtime.fake import FakeRuntime
from berth.workloads.local import NETWORK_IDLE_SECONDS, LocalWorkloads
from berth.workloads.protocol import ProcessGroup

GROUP = ProcessGroup(
    tenant_id="t1",
    app_id="app1",
    app_name="app1",
    revision="r1:0",
    release_id="r1",
    release_version=1,
    image="berth/busybox:latest",
    replicas=1,
    memory_mb=64,
    cpus_milli=100,
    pids_limit=64,
    disk_mb=16,
    network="berth-t-t1",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unused_tenant_network_outlives_its_last_app_for_a_while_then_goes() -> None:
    clock = Clock()
    runtime = FakeRuntime("inst-networks", clock=clock)
    runtime.add_image("berth/busybox:latest")
    woken: list[str] = []
    workloads = LocalWorkloads(runtime, clock=clock, on_change=lambda: woken.append("pass"))
    try:
        workloads.apply([GROUP])
        assert runtime.list_networks() == ["berth-t-t1"]
        workloads.apply([])  # the app is deleted: its instance goes, the network stays
        workloads.wait_for_removals()
        clock.now += NETWORK_IDLE_SECONDS / 2
        workloads.apply([])
        assert runtime.list_networks() == ["berth-t-t1"]

        workloads.apply([replace(GROUP, app_id="app2", app_name="app2")])  # a new app uses it
        workloads.apply([])
        workloads.wait_for_removals()
        assert woken  # the removal is done: the backend asked for a pass
        workloads.apply([])  # that pass: unused again from now on
        clock.now += NETWORK_IDLE_SECONDS - 1
        workloads.apply([])
        assert runtime.list_networks() == ["berth-t-t1"]
        assert workloads._timer is not None  # the pass that removes it is due

        clock.now += 2
        workloads.apply([])
        assert runtime.list_networks() == []
    finally:
        workloads.close()


def test_a_network_is_made_and_filtered_once_then_again_only_if_it_went() -> None:
    clock = Clock()
    runtime = FakeRuntime("inst-networks-ready", clock=clock)
    runtime.add_image("berth/busybox:latest")
    filtered: list[str] = []
    workloads = LocalWorkloads(runtime, clock=clock, network_ready=filtered.append)
    try:
        workloads.apply([GROUP])
        workloads.apply([replace(GROUP, app_id="app2", app_name="app2")])  # same tenant
        assert filtered == ["berth-t-t1"]  # the second start asked nothing more first
        workloads.wait_for_removals()
        assert [c.labels["berth.app"] for c in runtime.list()] == ["app2"]

        # Someone removes the network behind Berth's back: the next pass sees it gone, and
        # the start after it makes and filters it again.
        workloads.apply([])
        workloads.wait_for_removals()
        runtime.remove_network("berth-t-t1")
        workloads.apply([])
        workloads.apply([GROUP])
        assert filtered == ["berth-t-t1", "berth-t-t1"]
        assert runtime.list_networks() == ["berth-t-t1"]
        assert [c.state for c in runtime.list()] == ["running"]
    finally:
        workloads.close()
