"""What berth.cluster relies on from a Swarm manager's API, checked against the fake
(tests/unit/cluster/test_fake_swarm.py) and a real 20.10 manager (tests/cluster/test_nodes_ops.py).

Each check takes the API, a live worker's id and a manager's id, and leaves the swarm as it was.
"""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest


def check_node_lookup(api: Any, worker_id: str, manager_id: str) -> None:
    node = api.inspect_node(worker_id)
    assert node["ID"] == worker_id
    assert api.inspect_node(node["Description"]["Hostname"])["ID"] == worker_id
    with pytest.raises(docker.errors.NotFound):
        api.inspect_node("no-such-node-0000")
    listed = {n["ID"] for n in api.nodes()}
    assert {worker_id, manager_id} <= listed
    assert manager_id in {n["ID"] for n in api.nodes(filters={"role": "manager"})}
    assert worker_id not in {n["ID"] for n in api.nodes(filters={"role": "manager"})}
    shape = api.inspect_node(manager_id)
    assert shape["Spec"]["Role"] == "manager" and shape["ManagerStatus"]["Addr"].endswith(":2377")
    assert shape["Description"]["Resources"]["MemoryBytes"] > 0
    assert shape["Status"]["State"] == "ready"


def check_versioned_update(api: Any, worker_id: str, manager_id: str) -> None:
    node = api.inspect_node(worker_id)
    version, spec = node["Version"]["Index"], node["Spec"]
    labelled = dict(spec, Labels={**(spec.get("Labels") or {}), "contract": "x"})
    assert api.update_node(worker_id, version, labelled)
    after = api.inspect_node(worker_id)
    assert after["Version"]["Index"] > version
    assert after["Spec"]["Labels"]["contract"] == "x"
    with pytest.raises(docker.errors.APIError) as stale:
        api.update_node(worker_id, version, spec)  # the version we read before our own write
    assert stale.value.status_code == 500 and "update out of sequence" in str(
        stale.value.explanation
    )
    assert api.update_node(worker_id, after["Version"]["Index"], spec)
    assert "contract" not in (api.inspect_node(worker_id)["Spec"].get("Labels") or {})


def check_removal_refusals(api: Any, worker_id: str, manager_id: str) -> None:
    with pytest.raises(docker.errors.APIError) as live:
        api.remove_node(worker_id)
    assert live.value.status_code == 400 and "is not down" in str(live.value.explanation)
    with pytest.raises(docker.errors.APIError) as boss:
        api.remove_node(manager_id, force=True)
    assert boss.value.status_code == 400 and "demoted" in str(boss.value.explanation)
    assert {worker_id, manager_id} <= {n["ID"] for n in api.nodes()}


def check_last_manager_stays(api: Any, worker_id: str, manager_id: str) -> None:
    managers = api.nodes(filters={"role": "manager"})
    if len(managers) != 1:
        return
    node = api.inspect_node(manager_id)
    with pytest.raises(docker.errors.APIError) as last:
        api.update_node(manager_id, node["Version"]["Index"], dict(node["Spec"], Role="worker"))
    assert last.value.status_code == 400 and "last manager" in str(last.value.explanation)


def check_swarm_facts(api: Any, worker_id: str, manager_id: str) -> None:
    swarm = api.info()["Swarm"]
    assert swarm["LocalNodeState"] == "active" and swarm["ControlAvailable"] is True
    assert swarm["NodeID"] == manager_id
    assert any(m["NodeID"] == manager_id for m in swarm["RemoteManagers"])
    tokens = api.inspect_swarm()["JoinTokens"]
    assert tokens["Worker"].startswith("SWMTKN-1-") and tokens["Manager"].startswith("SWMTKN-1-")
    assert tokens["Worker"] != tokens["Manager"]
    for task in api.tasks(filters={"node": worker_id}):
        assert task["NodeID"] == worker_id


CHECKS = (
    check_node_lookup,
    check_versioned_update,
    check_removal_refusals,
    check_last_manager_stays,
    check_swarm_facts,
)
