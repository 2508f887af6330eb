"""The service spec of a process group: names, hardening, placement (pure)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from berth.errors import InvalidInput
from berth.runtime.protocol import KEPT_CAPABILITIES, WRITABLE_PATHS
from berth.swarm.specs import (
    LABEL_SPEC,
    placement_constraints,
    replicas_of,
    service_name,
    service_spec,
    spec_hash,
)
from berth.workloads.protocol import ProcessGroup

GROUP = ProcessGroup(
    tenant_id="t1",
    app_id="a1",
    app_name="hello",
    revision="r1:3",
    release_id="r1",
    release_version=7,
    image="berth/busybox:latest",
    replicas=2,
    memory_mb=128,
    cpus_milli=500,
    pids_limit=100,
    disk_mb=32,
    network="berth-t-t1",
    env={"A": "1", "PORT": "1"},
    command=("httpd", "-f"),
    health_path="/healthz",
    constraints=("zone==b", "disk!=hdd"),
)
_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def test_names_are_readable_valid_unique_and_short() -> None:
    name = service_name(GROUP, "inst")
    assert name.startswith("hello-web-v7-g3-")
    assert _DOCKER_NAME.match(name) and len(name) <= 63
    long = replace(GROUP, app_name="a" * 30, process="p" * 40, release_version=123456)
    assert len(service_name(long, "inst")) <= 63
    assert _DOCKER_NAME.match(service_name(long, "inst"))
    # The hash keeps groups apart however the readable part was cut.
    other = replace(long, app_id="a2")
    assert service_name(long, "inst") != service_name(other, "inst")
    assert service_name(GROUP, "inst") != service_name(GROUP, "other-installation")
    assert service_name(GROUP, "inst") == service_name(GROUP, "inst")  # stable
    odd = replace(GROUP, process="Web_Worker!")
    assert _DOCKER_NAME.match(service_name(odd, "inst"))


def test_the_task_is_hardened_like_a_local_container() -> None:
    spec = service_spec(GROUP, "inst")
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == list(KEPT_CAPABILITIES)
    assert container["Init"] is True and container["ReadOnly"] is True
    assert [m["Target"] for m in container["Mounts"]] == list(WRITABLE_PATHS)
    assert all(m["Type"] == "tmpfs" for m in container["Mounts"])
    assert {m["TmpfsOptions"]["SizeBytes"] for m in container["Mounts"]} == {32 * 1024 * 1024}
    assert container["Args"] == ["httpd", "-f"] and "Command" not in container
    assert "PORT=8080" in container["Env"] and "A=1" in container["Env"]  # PORT wins
    resources = spec["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {
        "MemoryBytes": 128 * 1024 * 1024,
        "NanoCPUs": 500_000_000,
        "Pids": 100,
    }
    assert resources["Reservations"] == {"MemoryBytes": 128 * 1024 * 1024}
    assert spec["TaskTemplate"]["LogDriver"] == {
        "Name": "json-file",
        "Options": {"max-size": "10m", "max-file": "3"},
    }
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "berth-t-t1"}]


def test_labels_endpoint_and_placement() -> None:
    spec = service_spec(GROUP, "inst")
    labels = spec["Labels"]
    assert labels["berth.managed"] == "true" and labels["berth.installation"] == "inst"
    assert labels["berth.group"] == GROUP.key and labels["berth.process"] == "web"
    assert labels["berth.memory-mb"] == "128" and labels["berth.cpus-milli"] == "500"
    assert labels["berth.health-path"] == "/healthz" and labels["berth.port"] == "8080"
    container_labels = spec["TaskTemplate"]["ContainerSpec"]["Labels"]
    assert {k: v for k, v in labels.items() if k != LABEL_SPEC} == container_labels
    assert spec["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}],
    }
    placement = spec["TaskTemplate"]["Placement"]
    assert placement["Constraints"] == ["node.labels.zone==b", "node.labels.disk!=hdd"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert replicas_of(spec) == 2
    worker = service_spec(replace(GROUP, port=None), "inst")
    assert worker["EndpointSpec"]["Ports"] == []


def test_the_spec_hash_ignores_replicas_only() -> None:
    two = service_spec(GROUP, "inst")
    five = service_spec(replace(GROUP, replicas=5), "inst")
    assert two["Labels"][LABEL_SPEC] == five["Labels"][LABEL_SPEC] == spec_hash(five)
    bigger = service_spec(replace(GROUP, memory_mb=256), "inst")
    assert bigger["Labels"][LABEL_SPEC] != two["Labels"][LABEL_SPEC]


@pytest.mark.parametrize(
    "bad",
    [
        "zone",
        "zone=b",
        "zone==",
        "==b",
        "zone==b c",
        "zone==b;rm",
        "node.role==$(x)",
        "a" * 80 + "==b",
    ],
)
def test_bad_constraints_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        placement_constraints((bad,))
    with pytest.raises(InvalidInput):
        service_spec(replace(GROUP, constraints=(bad,)), "inst")


def test_negative_replicas_are_refused() -> None:
    with pytest.raises(InvalidInput):
        service_spec(replace(GROUP, replicas=-1), "inst")
