"""The node guard's service, pure: its facts from Docker's node objects and the settings, its
spec, and when it is created, updated or kept.

Real nodes: tests/cluster/test_node_guard_service.py."""

from __future__ import annotations

from typing import Any

import pytest

from berth.cluster.views import guard_state, node_row
from berth.netpolicy.plan import NetPolicyError
from berth.swarm.guard_service import (
    LABEL_GUARD,
    LABEL_GUARD_FACTS,
    SERVICE_NAME,
    GuardFacts,
    check_facts,
    guard_args,
    guard_facts,
    guard_spec,
    local_container_options,
    local_guard_wanted,
    plan_service,
    protected_addresses,
    spec_hash,
)

IMAGE = "10.0.0.254:5000/berth/node-guard@sha256:" + "a" * 64


def node(
    addr: str,
    *,
    labels: dict[str, str] | None = None,
    role: str = "worker",
    availability: str = "active",
    node_id: str | None = None,
    manager_addr: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": node_id or f"id-{addr}",
        "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
        "Status": {"State": "ready", "Addr": addr},
    }
    if manager_addr:
        out["ManagerStatus"] = {"Addr": manager_addr}
    return out


def facts() -> GuardFacts:
    return guard_facts(
        [
            node("10.0.0.12", labels={"ingress": "true"}),
            node("10.0.0.11", labels={"ingress": "false", "zone": "a"}),
            node("0.0.0.0", role="manager", manager_addr="10.0.0.2:2377"),
            node(""),  # joining: no address yet
        ],
        server_addresses=["10.0.0.254"],
        protected=["10.0.0.254", "10.240.0.0/16"],
        join_from=["10.0.0.0/25"],
    )


def test_facts_nodes_ingress_labels_and_servers() -> None:
    got = facts()
    assert got.nodes == ("10.0.0.2", "10.0.0.11", "10.0.0.12")  # by address, the Raft one
    assert got.ingress == ("10.0.0.12", "10.0.0.254")  # labelled true, plus the server
    assert got.protected == ("10.0.0.254", "10.240.0.0/16")
    assert got.join_from == ("10.0.0.0/25",)
    check_facts(got)


def test_facts_the_guard_would_refuse_are_refused_here() -> None:
    bad = GuardFacts(nodes=("10.0.0.11",), ingress=(), protected=())
    with pytest.raises(NetPolicyError, match="ingress"):
        check_facts(bad)
    with pytest.raises(NetPolicyError, match="not an IPv4"):
        check_facts(GuardFacts(nodes=("10.0.0.11",), ingress=("x y",), protected=()))


def test_args_name_every_fact() -> None:
    args = guard_args(facts())
    assert args[0] == "run"
    assert args[args.index("--ingress") + 1] == "10.0.0.12"
    assert args.count("--nodes") == 3 and args.count("--join-from") == 1


def test_spec_is_a_minimal_global_host_network_service() -> None:
    spec = guard_spec(IMAGE, facts(), "inst1")
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert spec["Name"] == SERVICE_NAME and spec["Mode"] == {"Global": {}}
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "host"}]
    assert container["Image"] == IMAGE and container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"] and container["CapabilityAdd"] == [
        "CAP_NET_ADMIN"
    ]
    assert container["Labels"][LABEL_GUARD] == "true"
    # No owner labels: the swarm backend removes every owned service that is no app's.
    assert "berth.managed" not in spec["Labels"] and "berth.installation" not in spec["Labels"]
    assert spec["UpdateConfig"]["Order"] == "stop-first"
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"


def test_create_keep_update() -> None:
    spec = guard_spec(IMAGE, facts(), "inst1")
    assert plan_service([], spec).kind == "create"
    current = {"ID": "s1", "Version": {"Index": 7}, "Spec": spec}
    assert plan_service([current], spec).kind == "keep"
    joined = guard_facts([node("10.0.0.11"), node("10.0.0.13")], ["10.0.0.254"], ["10.240.0.0/16"])
    newer = guard_spec(IMAGE, joined, "inst1")
    action = plan_service([current], newer)
    assert (action.kind, action.service_id, action.version) == ("update", "s1", 7)
    assert newer["Labels"][LABEL_GUARD_FACTS] != spec["Labels"][LABEL_GUARD_FACTS]
    other = guard_spec(IMAGE, facts(), "inst2")  # another installation's guard: taken over
    assert plan_service([current], other).kind == "update"
    stranger = {"ID": "s2", "Version": {"Index": 1}, "Spec": {**spec, "Name": "something"}}
    assert plan_service([stranger], spec).kind == "create"


def test_an_ingress_label_changes_the_facts() -> None:
    plain = guard_facts([node("10.0.0.11")], ["10.0.0.254"], [])
    labelled = guard_facts([node("10.0.0.11", labels={"ingress": "true"})], ["10.0.0.254"], [])
    assert plain.ingress == ("10.0.0.254",)
    assert labelled.ingress == ("10.0.0.11", "10.0.0.254")


def test_the_local_guard_for_a_drained_manager() -> None:
    spec = guard_spec(IMAGE, facts(), "inst1")
    options = local_container_options(spec)
    assert options["network_mode"] == "host" and options["read_only"] is True
    assert options["restart_policy"] == {"Name": "always"}
    assert options["command"] == spec["TaskTemplate"]["ContainerSpec"]["Args"]
    assert options["labels"][LABEL_GUARD_FACTS] == spec["Labels"][LABEL_GUARD_FACTS]
    nodes = [
        node("10.0.0.2", role="manager", availability="drain", node_id="m1"),
        node("10.0.0.11", node_id="w1"),
    ]
    assert local_guard_wanted(nodes, "m1")
    assert not local_guard_wanted(nodes, "w1")  # it runs the service's task
    assert not local_guard_wanted(nodes, "")  # not in the swarm


def test_protected_addresses_skip_loopback_and_wildcards() -> None:
    assert protected_addresses(
        "10.0.0.254:5000", "127.0.0.1", "10.240.0.0/16", ["192.0.2.0/24"]
    ) == [
        "10.0.0.254",
        "10.240.0.0/16",
        "192.0.2.0/24",
    ]
    assert protected_addresses("127.0.0.1:5000", "0.0.0.0", "", []) == []
    assert protected_addresses("registry.example:5000", "10.0.0.9", "", []) == ["10.0.0.9"]


def _task(state: str, desired: str, index: int, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "ID": f"t{index}",
        "NodeID": "n1",
        "Version": {"Index": index},
        "DesiredState": desired,
        "Status": {"State": state},
        "Spec": {"ContainerSpec": {"Labels": labels}},
    }


def test_nodes_show_the_newest_guard_task_meant_to_run() -> None:
    guard = {LABEL_GUARD: "true"}
    tasks = [
        _task("shutdown", "shutdown", 5, guard),
        _task("starting", "running", 9, guard),
        _task("running", "running", 3, {"berth.installation": "x"}),  # an app's
    ]
    assert guard_state(tasks) == "starting"
    assert guard_state(tasks[2:]) == ""
    row = node_row(node("10.0.0.11", node_id="n1"), tasks, "x", now=0.0)
    assert row.guard == "starting" and row.to_json()["guard"] == "starting"


def test_the_hash_covers_the_whole_spec_not_only_the_facts() -> None:
    spec = guard_spec(IMAGE, facts(), "inst1")
    assert guard_spec(IMAGE, facts(), "inst1") == spec  # stable
    assert spec_hash(spec) == spec["Labels"][LABEL_GUARD_FACTS]
    wider = dict(spec, TaskTemplate=dict(spec["TaskTemplate"], Resources={}))
    assert spec_hash(wider) != spec_hash(spec)
