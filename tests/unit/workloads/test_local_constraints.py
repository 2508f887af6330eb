"""The local backend refuses to start a group whose constraints its node does not satisfy: the
group shows one pending instance with Swarm's reason, and starts once the labels allow it."""

from __future__ import annotations

from berth.runtime.fake import FakeRuntime
from berth.workloads.local import LocalWorkloads
from berth.workloads.protocol import ProcessGroup


def _group(*constraints: str, app_id: str = "app1") -> ProcessGroup:
    return ProcessGroup(
        tenant_id="t1",
        app_id=app_id,
        app_name=app_id,
        revision="r1:0",
        release_id="r1",
        release_version=1,
        image="berth/busybox:latest",
        replicas=2,
        memory_mb=64,
        cpus_milli=100,
        pids_limit=64,
        disk_mb=16,
        network="berth-t-t1",
        constraints=constraints,
    )


def _workloads(labels: dict[str, str]) -> LocalWorkloads:
    runtime = FakeRuntime("inst-placement", clock=lambda: 1000.0)
    runtime.add_image("berth/busybox:latest")
    return LocalWorkloads(runtime, node_labels=labels)


def test_unsatisfied_constraints_leave_the_group_pending_with_swarms_reason() -> None:
    workloads = _workloads({"zone": "a"})
    try:
        workloads.apply([_group("zone==b")])
        instances = workloads.instances()
        assert [i.state for i in instances] == ["pending"]
        assert instances[0].reason == (
            "no suitable node (scheduling constraints not satisfied on 1 node)"
        )
        assert workloads.runtime.list() == []  # nothing was started in breach
    finally:
        workloads.close()


def test_satisfied_constraints_start_and_the_node_shows_its_labels() -> None:
    workloads = _workloads({"zone": "b", "disk": "ssd"})
    try:
        workloads.apply([_group("zone==b", "disk!=hdd"), _group(app_id="free")])
        states = sorted((i.app_id, i.state) for i in workloads.instances())
        assert states == [("app1", "running")] * 2 + [("free", "running")] * 2
        assert workloads.nodes()[0].labels == {"zone": "b", "disk": "ssd"}
    finally:
        workloads.close()


def test_no_labels_satisfy_only_exclusions() -> None:
    workloads = _workloads({})
    try:
        workloads.apply([_group("zone!=a"), _group("zone==a", app_id="app2")])
        by_app = {(i.app_id, i.state) for i in workloads.instances()}
        assert by_app == {("app1", "running"), ("app2", "pending")}
    finally:
        workloads.close()
