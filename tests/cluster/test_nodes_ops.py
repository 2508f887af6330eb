"""`berth nodes ...` and `berth cluster init` on real engines: the shared cluster's manager,
and engines of this module's own (``d1``, ``w9``, ``i1``, ``i2``) that it always removes.

The manager's API also passes the contract the fake Swarm of the API tests passes.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.types
import pytest

from berth.api.routes_nodes import engine_api
from berth.cluster.init import current_backend, init_swarm
from berth.cluster.nodes import ManagerClient, connect_manager
from berth.errors import Conflict
from berth.platform import Platform, open_store
from berth.runtime.fake import FakeRuntime
from berth.services.bootstrap import ensure_admin
from berth.settings import Settings
from berth.workloads.protocol import LABEL_APP_NAME, LABEL_INSTALLATION
from tests.api.conftest import Env, FakeBuilder
from tests.cluster.nodes import Cluster
from tests.cluster.services import IMAGE, wait_running
from tests.harness import wait_until
from tests.unit.cluster.swarm_contract import CHECKS

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

INSTALLATION = "bt-nodes-" + secrets.token_hex(3)


def manager_api(swarm: Cluster) -> docker.APIClient:
    return docker.APIClient(base_url=swarm.node(swarm.manager).base_url, version="1.41")


@pytest.fixture
def manager(swarm: Cluster) -> Iterator[ManagerClient]:
    api = manager_api(swarm)
    yield ManagerClient(api, INSTALLATION)
    api.close()


@contextlib.contextmanager
def own_nodes(swarm: Cluster, *shorts: str) -> Iterator[None]:
    """Nodes of this test: removed (engine, namespace, swarm entry) however the test ends."""
    try:
        yield
    finally:
        for short in shorts:
            if short in swarm.nodes:
                node = swarm.node(short)
                if not node.engine_alive():
                    # remove_node asks the engine to leave first, so it must run; without its
                    # swarm state it starts at once instead of waiting ~20 s for its old swarm.
                    shutil.rmtree(node.data_dir / "swarm", ignore_errors=True)
                    swarm.restart_node(short)
                swarm.remove_node(short)
        ids = {swarm.run_id + "-" + s for s in shorts}
        left = [n["Description"]["Hostname"] for n in manager_api(swarm).nodes()]
        assert not ids & set(left), left


def hostname(swarm: Cluster, short: str) -> str:
    return swarm.node(short).name


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_real_manager_passes_the_fake_swarms_contract(
    swarm: Cluster, check: Callable[[Any, str, str], None]
) -> None:
    api = manager_api(swarm)
    try:
        check(api, swarm.swarm_node("w1").id, swarm.swarm_node(swarm.manager).id)
    finally:
        api.close()


def test_list_shows_every_node_with_role_state_capacity_and_berths_instances(
    swarm: Cluster, manager: ManagerClient
) -> None:
    reserve = 64 << 20
    service = swarm.manager_client().services.create(
        IMAGE,
        command=["sleep", "3600"],
        name=f"{swarm.run_id}-nodes-{secrets.token_hex(3)}",
        container_labels={LABEL_INSTALLATION: INSTALLATION, LABEL_APP_NAME: "listed"},
        resources=docker.types.Resources(mem_reservation=reserve, cpu_reservation=100_000_000),
        mode=docker.types.ServiceMode("replicated", replicas=1),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )
    (task,) = wait_running(swarm, service, 1)
    rows = {r.name: r for r in manager.list()}
    assert set(rows) == {hostname(swarm, s) for s in swarm.nodes}
    assert len(rows) == 4
    boss = rows[hostname(swarm, "m1")]
    assert (boss.role, boss.availability, boss.state, boss.leader) == (
        "manager",
        "drain",
        "ready",
        True,
    )
    assert boss.address == swarm.node("m1").address and boss.reachability == "reachable"
    for short in ("w1", "w2", "w3"):
        row = rows[hostname(swarm, short)]
        assert (row.role, row.state, row.address) == ("worker", "ready", swarm.node(short).address)
        assert row.memory_bytes > 0 and row.nano_cpus > 0 and row.last_seen is not None
    where = next(r for r in rows.values() if r.id == task["NodeID"])
    assert (where.instances, where.reserved_memory_bytes, where.reserved_nano_cpus) == (
        1,
        reserve,
        100_000_000,
    )
    assert [t.app for t in manager.info(where.name).berth_tasks] == ["listed"]
    assert sum(r.instances for r in rows.values()) == 1


def test_connect_manager_finds_a_manager_and_nothing_else(swarm: Cluster) -> None:
    found = connect_manager(swarm.node(swarm.manager).base_url, INSTALLATION)
    assert found is not None
    try:
        assert found.self_id() == swarm.swarm_node(swarm.manager).id
    finally:
        found.api.close()  # type: ignore[attr-defined]
    assert connect_manager(swarm.node("w1").base_url, INSTALLATION) is None  # a worker
    assert connect_manager("unix:///nonexistent/docker.sock", INSTALLATION) is None


def test_labels_add_and_remove(swarm: Cluster, manager: ManagerClient) -> None:
    name = hostname(swarm, "w2")
    before = dict(swarm.swarm_node("w2").attrs["Spec"].get("Labels") or {})
    try:
        row = manager.label(name, {"rack": "r7", "ingress": "true"}, [])
        assert row.labels == {**before, "rack": "r7", "ingress": "true"}
        engine_view = swarm.swarm_node("w2").attrs["Spec"]["Labels"]
        assert engine_view["rack"] == "r7" and engine_view["ingress"] == "true"
        row = manager.label(name, {}, ["rack"])
        assert (
            "rack" not in row.labels
            and "rack" not in swarm.swarm_node("w2").attrs["Spec"]["Labels"]
        )
        with pytest.raises(Conflict):
            manager.label(name, {}, ["rack"])
    finally:
        swarm.set_labels("w2", before)


def test_cordon_and_uncordon(swarm: Cluster, manager: ManagerClient) -> None:
    name = hostname(swarm, "w3")
    try:
        row, before, changed = manager.set_availability(name, "pause")
        assert (row.availability, before, changed) == ("pause", "active", True)
        assert swarm.swarm_node("w3").attrs["Spec"]["Availability"] == "pause"
        row, before, changed = manager.set_availability(name, "active")
        assert (row.availability, before, changed) == ("active", "pause", True)
        assert swarm.swarm_node("w3").attrs["Spec"]["Availability"] == "active"
    finally:
        swarm.set_availability("w3", "active")


def test_a_live_node_is_not_removed_without_drain_or_force(
    swarm: Cluster, manager: ManagerClient
) -> None:
    with pytest.raises(Conflict) as err:
        manager.remove(hostname(swarm, "w1"))
    assert "drain it first" in err.value.message
    assert swarm.node_states()["w1"] == "ready"


def test_a_dead_node_is_removed(swarm: Cluster, manager: ManagerClient) -> None:
    with own_nodes(swarm, "d1"):
        swarm.add_node("d1")
        swarm.join("d1")
        swarm.wait_states({"d1": "ready"})
        swarm.kill_node("d1")
        down_after = swarm.wait_states({"d1": "down"})
        row = manager.info(hostname(swarm, "d1"))
        assert row.state == "down" and row.last_seen is not None
        done = manager.remove(hostname(swarm, "d1"))
        assert (done.was_down, done.forced, done.demoted) == (True, False, False)
        names = {r.name for r in manager.list()}
        assert hostname(swarm, "d1") not in names and len(names) == 4
        print(f"a killed node was Down after {down_after:.1f}s, then removed")


def demote_own_managers(swarm: Cluster, shorts: tuple[str, ...]) -> None:
    """Cleanup: a manager of this test that is still one is demoted while the swarm has its
    quorum, so that removing it cannot leave the shared swarm with unreachable Raft members."""
    api = manager_api(swarm)
    try:
        names = {swarm.run_id + "-" + s for s in shorts}
        for node in api.nodes(filters={"role": "manager"}):
            if node["Description"]["Hostname"] in names:
                api.update_node(
                    node["ID"], node["Version"]["Index"], dict(node["Spec"], Role="worker")
                )
                wait_until(
                    lambda n=node: not api.inspect_node(n["ID"]).get("ManagerStatus"),
                    30,
                    "the demoted manager leaves Raft",
                )
    finally:
        api.close()


def join_as_manager(swarm: Cluster, short: str, manager: ManagerClient) -> None:
    """Joined with the manager token but not through swarm.join: the harness's own managers
    stay m1 alone (its helpers pick a manager from that list)."""
    cmd = manager.join_command(manager=True)
    node = swarm.add_node(short)
    node.client().swarm.join(
        remote_addrs=[cmd.address],
        join_token=cmd.token,
        listen_addr=f"{node.address}:2377",
        advertise_addr=node.address,
    )
    swarm.wait_states({short: "ready"})


def test_the_join_command_joins_a_fresh_node(swarm: Cluster, manager: ManagerClient) -> None:
    cmd = manager.join_command()
    words = shlex.split(cmd.command)
    assert words[:4] == ["docker", "swarm", "join", "--token"] and len(words) == 6
    token, address = words[4], words[5]
    assert address == f"{swarm.node(swarm.manager).address}:2377"
    assert (
        manager.join_command(manager=True).token
        == manager_api(swarm).inspect_swarm()["JoinTokens"]["Manager"]
    )
    with own_nodes(swarm, "w9"):
        node = swarm.add_node("w9")
        node.client().swarm.join(
            remote_addrs=[address],
            join_token=token,
            listen_addr=f"{node.address}:2377",
            advertise_addr=node.address,
        )
        swarm.wait_states({"w9": "ready"})
        row = manager.info(node.name)
        assert (row.role, row.state, row.address) == ("worker", "ready", node.address)


def test_cluster_init_on_a_fresh_engine_through_the_api_is_safe_twice(
    swarm: Cluster, tmp_path: Path
) -> None:
    with own_nodes(swarm, "i1", "i2"):
        first, second = swarm.add_nodes(["i1", "i2"])
        env = sqlite_env(tmp_path / "home", docker_url=first.base_url)
        try:
            init_twice_then_join(env, first.address, second)
            host = docker.from_env(version="1.41")
            try:
                assert host.info()["Swarm"]["LocalNodeState"] == "inactive"  # never the host's
            finally:
                host.close()
        finally:
            if env.platform.swarm_manager is not None:
                env.platform.swarm_manager.api.close()  # type: ignore[attr-defined]
            env.engine.dispose()


def sqlite_env(home: Path, docker_url: str) -> Env:
    """The API tests' world on SQLite of its own (never the PostgreSQL that
    BERTH_DATABASE_URL names: build_env would drop its tables), Berth talking to ``docker_url``."""
    settings = Settings(home=home, database_url="", docker_url=docker_url)
    engine, sessions, installation = open_store(settings)
    with sessions() as session:
        ensure_admin(session, settings.home / "admin-token", settings.currency)
    admin = (settings.home / "admin-token").read_text().strip()
    runtime = FakeRuntime(installation)  # only the local node's memory is read from it
    platform = Platform(settings, engine, sessions, installation, runtime=runtime)
    env = Env(settings, platform, engine, runtime, FakeBuilder(runtime), admin)
    # The API tests' app refuses every engine call of cluster init; this one means the
    # namespaced engine of docker_url (never the host's).
    del env.app.dependency_overrides[engine_api]
    return env


def init_twice_then_join(env: Env, address: str, second: Any) -> None:
    assert env.ok("GET", "/admin/nodes", env.admin)[0]["role"] == "local"
    done = env.ok("POST", "/admin/cluster/init", env.admin, json={"advertise_addr": address})
    assert (done["changed"], done["backend_changed"], done["address"]) == (
        True,
        True,
        f"{address}:2377",
    )
    engine = env.platform.swarm_manager
    assert engine is not None
    spec = engine.api.inspect_swarm()
    assert spec["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 2_000_000_000
    assert spec["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 5
    assert spec["DefaultAddrPool"] == ["10.240.0.0/16"] and spec["SubnetSize"] == 24
    with env.db() as session:
        assert current_backend(session) == "swarm"
    again = env.ok("POST", "/admin/cluster/init", env.admin, json={})
    assert (again["changed"], again["backend_changed"]) == (False, False)
    assert again["node_id"] == done["node_id"]
    # The printed line joins the second engine to this new swarm.
    words = env.ok("GET", "/admin/cluster/join-command", env.admin)["command"].split()
    second.client().swarm.join(
        remote_addrs=[words[5]],
        join_token=words[4],
        listen_addr=f"{second.address}:2377",
        advertise_addr=second.address,
    )
    wait_until(
        lambda: [r["state"] for r in env.ok("GET", "/admin/nodes", env.admin)] == ["ready"] * 2,
        30,
        "both nodes of the new swarm are ready",
    )
    # That worker's engine cannot become a manager of a swarm of its own: a clear 409.
    worker_api = docker.APIClient(base_url=second.base_url, version="1.41")
    try:
        with pytest.raises(Conflict) as err:
            init_swarm(worker_api, env.settings, second.address)
        assert err.value.status == 409 and "worker of another swarm" in err.value.message
        assert f"{address}:2377" in err.value.message
    finally:
        worker_api.close()
