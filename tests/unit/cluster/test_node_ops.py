"""Node operations over the fake manager: name resolution, labels, cordon, removal rules,
the join command. The real manager runs the same operations in tests/cluster/test_nodes_ops.py."""

from __future__ import annotations

import pytest

from berth.cluster.nodes import ManagerClient, manager_address, removal_refusal
from berth.cluster.views import local_row
from berth.errors import Conflict, EngineUnavailable, InvalidInput, NotFound
from berth.workloads.protocol import LABEL_INSTALLATION
from tests.unit.cluster.fake_swarm import FakeSwarm

INST = "inst1"


@pytest.fixture
def swarm() -> FakeSwarm:
    return FakeSwarm().manager()


@pytest.fixture
def nodes(swarm: FakeSwarm) -> ManagerClient:
    return ManagerClient(swarm, INST)


def test_list_and_info_by_name_id_and_prefix(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    w1 = swarm.add_node("w1", labels={"zone": "a"})
    swarm.add_task(w1, {LABEL_INSTALLATION: INST}, memory_bytes=64 << 20)
    rows = nodes.list()
    assert [(r.name, r.role) for r in rows] == [("fake-m1", "manager"), ("w1", "worker")]
    assert nodes.info("w1").instances == 1
    assert nodes.info(w1).name == "w1"
    assert nodes.info(w1[:8]).name == "w1"
    assert nodes.info("w1").reserved_memory_bytes == 64 << 20


def test_unknown_and_ambiguous_names(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("twin")
    swarm.add_node("twin", state="down")
    with pytest.raises(NotFound):
        nodes.info("ghost")
    with pytest.raises(Conflict) as two:
        nodes.info("twin")
    assert two.value.code == "ambiguous_node"


def test_labels_set_and_remove_in_one_change(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("w1", labels={"disk": "hdd"})
    row = nodes.label("w1", {"zone": "b", "ingress": "true"}, ["disk"])
    assert row.labels == {"zone": "b", "ingress": "true"} and row.zone == "b"
    before = swarm.updates
    assert nodes.label("w1", {"zone": "b"}, []).labels["zone"] == "b"
    assert swarm.updates == before  # nothing to change: nothing written


def test_bad_labels_change_nothing(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("w1", labels={"disk": "hdd"})
    for add, remove in (({"node.role": "x"}, []), ({"zone": "A B"}, []), ({}, ["missing"])):
        with pytest.raises((InvalidInput, Conflict)):
            nodes.label("w1", add, remove)
    assert swarm.updates == 0
    assert nodes.info("w1").labels == {"disk": "hdd"}


def test_a_concurrent_write_is_retried_on_the_new_version(swarm: FakeSwarm) -> None:
    w1 = swarm.add_node("w1")

    raced = {"done": False}
    real_update = swarm.update_node

    def update(node_id: str, version: int, node_spec: dict[str, object] | None = None) -> bool:
        if not raced["done"]:  # someone else writes between our read and our write
            raced["done"] = True
            node = swarm.inspect_node(node_id)
            real_update(node_id, node["Version"]["Index"], node["Spec"])
        return real_update(node_id, version, node_spec)

    swarm.update_node = update  # type: ignore[method-assign]
    row = ManagerClient(swarm, INST).label(w1, {"zone": "c"}, [])
    assert row.labels == {"zone": "c"} and raced["done"]


def test_cordon_and_uncordon(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("w1")
    row, before, changed = nodes.set_availability("w1", "pause")
    assert (row.availability, before, changed) == ("pause", "active", True)
    _, before, changed = nodes.set_availability("w1", "pause")
    assert (before, changed) == ("pause", False)
    row, _, changed = nodes.set_availability("w1", "active")
    assert (row.availability, changed) == ("active", True)
    swarm.add_node("drained", availability="drain")
    row, before, changed = nodes.set_availability("drained", "pause")
    assert (row.availability, changed) == ("drain", False)  # takes no work already


def test_a_down_node_can_always_be_removed(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    dead = swarm.add_node("dead", state="down")
    swarm.add_task(dead, {LABEL_INSTALLATION: INST})
    done = nodes.remove("dead")
    assert (done.was_down, done.forced, done.demoted) == (True, False, False)
    assert "dead" not in {r.name for r in nodes.list()}


def test_a_down_manager_is_demoted_then_removed(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("m2", role="manager")
    swarm.add_node("m3", role="manager", state="down")
    done = nodes.remove("m3")
    assert done.demoted and done.was_down
    assert [r.name for r in nodes.list() if r.role == "manager"] == ["fake-m1", "m2"]


def test_a_live_node_needs_drain_or_force(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    swarm.add_node("busy")
    with pytest.raises(Conflict) as live:
        nodes.remove("busy")
    assert "drain it first" in live.value.message and live.value.code == "node_in_use"
    assert nodes.remove("busy", force=True).forced
    drained = swarm.add_node("drained", availability="drain")
    swarm.add_task(drained, {LABEL_INSTALLATION: INST})
    with pytest.raises(Conflict) as still:
        nodes.remove("drained")
    assert "still runs 1 instance" in still.value.message
    swarm.add_node("empty", availability="drain")
    done = nodes.remove("empty")
    assert done.forced and "docker swarm leave" in done.message


def test_the_manager_berth_talks_to_and_the_last_manager_stay(
    swarm: FakeSwarm, nodes: ManagerClient
) -> None:
    with pytest.raises(Conflict) as itself:
        nodes.remove("fake-m1", force=True)
    assert "cannot remove itself" in itself.value.message


def test_join_commands(swarm: FakeSwarm, nodes: ManagerClient) -> None:
    worker = nodes.join_command()
    assert worker.command == f"docker swarm join --token {swarm.tokens['Worker']} 10.0.0.11:2377"
    assert nodes.join_command(manager=True).token == swarm.tokens["Manager"]


def test_a_worker_engine_gives_no_join_command_and_lists_nothing() -> None:
    worker = ManagerClient(FakeSwarm().as_worker_of("10.0.0.11:2377"), INST)
    with pytest.raises(Conflict) as err:
        worker.join_command()
    assert err.value.code == "not_a_manager"
    with pytest.raises(Conflict):
        worker.list()


def test_an_unreachable_manager_is_503() -> None:
    import docker

    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    with pytest.raises(EngineUnavailable):
        ManagerClient(api, INST).list()


def test_manager_address_prefers_its_own_entry() -> None:
    remotes = [
        {"NodeID": "other", "Addr": "10.0.0.2:2377"},
        {"NodeID": "me", "Addr": "10.0.0.3:2377"},
    ]
    info = {"NodeID": "me", "RemoteManagers": remotes}
    assert manager_address(info) == "10.0.0.3:2377"
    assert manager_address({"NodeID": "me", "NodeAddr": "fd00::1"}) == "[fd00::1]:2377"


def test_removal_refusal_is_pure() -> None:
    row = local_row("x", 1, 1, 0, 0.0)
    assert "cannot remove itself" in removal_refusal(row, True, True)
    assert "drain it first" in removal_refusal(row, False, False)
    assert removal_refusal(row, False, True) == ""
