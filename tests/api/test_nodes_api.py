"""The nodes and cluster routes through the real app and store, over a fake Swarm manager
(tests/unit/cluster/fake_swarm.py, which passes the real manager's contract).

Operators only; on the local backend the one node is this machine and changes are 409s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from berth.api.routes_nodes import engine_api
from berth.cli import cluster_cmd, nodes_cmd
from berth.cli import main as cli_main
from berth.cli.client import ApiClient, CliConfig, CliError
from berth.cluster.init import current_backend
from berth.cluster.nodes import ManagerClient
from berth.store.tables import Meta
from berth.workloads.protocol import LABEL_APP_NAME, LABEL_INSTALLATION
from tests.api.conftest import Env, assert_error
from tests.unit.cluster.fake_swarm import FakeSwarm

pytestmark = pytest.mark.store

MUTATIONS = (
    ("POST", "/admin/nodes/{n}/labels", {"set": {"zone": "a"}}),
    ("POST", "/admin/nodes/{n}/cordon", None),
    ("POST", "/admin/nodes/{n}/uncordon", None),
    ("DELETE", "/admin/nodes/{n}", None),
)


@pytest.fixture
def local(env: Env) -> Iterator[Env]:
    """The local backend: no manager wired, nothing recorded."""
    assert env.platform.swarm_manager is None
    no_engine = env.app.dependency_overrides[engine_api]  # conftest's: never the host's engine
    yield env
    env.platform.swarm_manager = None
    env.app.dependency_overrides[engine_api] = no_engine
    with env.db() as session:
        row = session.get(Meta, "backend")
        if row is not None:
            session.delete(row)
            session.commit()


@pytest.fixture
def fake(local: Env) -> Iterator[FakeSwarm]:
    """A swarm of a manager, two workers (zone a and b) and one dead worker, wired in."""
    swarm = FakeSwarm().manager()
    w1 = swarm.add_node("w1", labels={"zone": "a"})
    swarm.add_node("w2", labels={"zone": "b"})
    swarm.add_node("w3", state="down")
    labels = {LABEL_INSTALLATION: local.platform.installation, LABEL_APP_NAME: "shop"}
    swarm.add_task(w1, labels, memory_bytes=256 << 20, nano_cpus=500_000_000)
    local.platform.swarm_manager = ManagerClient(swarm, local.platform.installation)
    yield swarm


def test_the_local_backend_has_one_node_and_refuses_changes(local: Env) -> None:
    rows = local.ok("GET", "/admin/nodes", local.admin)
    assert len(rows) == 1
    (node,) = rows
    assert (node["role"], node["address"], node["state"], node["availability"]) == (
        "local",
        "127.0.0.1",
        "ready",
        "active",
    )
    assert node["memory_bytes"] == local.runtime.memory_bytes() and node["nano_cpus"] > 0
    assert local.ok("GET", f"/admin/nodes/{node['name']}", local.admin)["name"] == node["name"]
    assert_error(local.call("GET", "/admin/nodes/elsewhere", local.admin), 404, "node_not_found")
    for method, path, body in MUTATIONS:
        err = assert_error(
            local.call(method, path.format(n=node["name"]), local.admin, json=body),
            409,
            "single_machine",
        )
        assert "berth cluster init" in err["message"]
    assert_error(local.call("GET", "/admin/cluster/join-command", local.admin), 409)
    assert local.ok("GET", "/admin/cluster", local.admin) == {
        "backend": "local",
        "manager_node_id": None,
    }


def test_tenants_are_refused_every_route(local: Env) -> None:
    user = local.signup("nodes-tenant")
    owner_token = local.mint(user.session, "admin")["token"]
    for token in (user.session, owner_token):
        for method, path, body in (
            ("GET", "/admin/nodes", None),
            ("GET", "/admin/nodes/w1", None),
            ("GET", "/admin/cluster", None),
            ("GET", "/admin/cluster/join-command", None),
            ("POST", "/admin/cluster/init", {}),
            *MUTATIONS,
        ):
            resp = local.call(method, path.format(n="w1"), token, json=body)
            assert_error(resp, 403, "operator_only")
    assert_error(local.call("GET", "/admin/nodes"), 401)


def test_list_and_info_on_the_swarm(local: Env, fake: FakeSwarm) -> None:
    rows = local.ok("GET", "/admin/nodes", local.admin)
    assert [(r["name"], r["role"], r["state"], r["zone"]) for r in rows] == [
        ("fake-m1", "manager", "ready", None),
        ("w1", "worker", "ready", "a"),
        ("w2", "worker", "ready", "b"),
        ("w3", "worker", "down", None),
    ]
    w1 = rows[1]
    assert (w1["instances"], w1["reserved_memory_bytes"], w1["reserved_cpus"]) == (
        1,
        256 << 20,
        0.5,
    )
    assert w1["last_seen"] is not None and w1["berth_tasks"] is None  # listed without tasks
    info = local.ok("GET", f"/admin/nodes/{w1['id']}", local.admin)
    assert [t["app"] for t in info["berth_tasks"]] == ["shop"]
    assert local.ok("GET", f"/admin/nodes/{w1['id'][:10]}", local.admin)["name"] == "w1"
    assert_error(local.call("GET", "/admin/nodes/nope", local.admin), 404, "node_not_found")
    fake.add_node("w2")
    assert_error(local.call("GET", "/admin/nodes/w2", local.admin), 409, "ambiguous_node")


def test_labels(local: Env, fake: FakeSwarm) -> None:
    row = local.ok(
        "POST",
        "/admin/nodes/w1/labels",
        local.admin,
        json={"set": {"ingress": "true", "rack": "r7"}, "remove": ["zone"]},
    )
    assert row["labels"] == {"ingress": "true", "rack": "r7"} and row["zone"] is None
    writes = fake.updates
    for body, status in (
        ({"set": {"node.role": "x"}}, 422),
        ({"set": {"com.docker.x": "y"}}, 422),
        ({"set": {"zone": "Not A Zone"}}, 422),
        ({"set": {"ingress": "maybe"}}, 422),
        ({"set": {"rack": "a==b"}}, 422),
        ({"remove": ["Bad Key"]}, 422),
        ({}, 422),
        ({"set": {"rack": "r8"}, "extra": 1}, 422),
        ({"remove": ["zone"]}, 409),  # not set any more
    ):
        assert_error(local.call("POST", "/admin/nodes/w1/labels", local.admin, json=body), status)
    assert fake.updates == writes
    assert_error(
        local.call("POST", "/admin/nodes/ghost/labels", local.admin, json={"set": {"a": "b"}}),
        404,
    )


def test_cordon_and_uncordon(local: Env, fake: FakeSwarm) -> None:
    done = local.ok("POST", "/admin/nodes/w2/cordon", local.admin)
    assert (done["node"]["availability"], done["before"], done["changed"]) == (
        "pause",
        "active",
        True,
    )
    assert local.ok("POST", "/admin/nodes/w2/cordon", local.admin)["changed"] is False
    done = local.ok("POST", "/admin/nodes/w2/uncordon", local.admin)
    assert (done["node"]["availability"], done["changed"]) == ("active", True)


def test_remove(local: Env, fake: FakeSwarm) -> None:
    err = assert_error(local.call("DELETE", "/admin/nodes/w2", local.admin), 409, "node_in_use")
    assert "--force" in err["message"]
    assert "w2" in {r["name"] for r in local.ok("GET", "/admin/nodes", local.admin)}
    gone = local.ok("DELETE", "/admin/nodes/w3", local.admin)
    assert (gone["name"], gone["was_down"], gone["forced"]) == ("w3", True, False)
    forced = local.ok("DELETE", "/admin/nodes/w2", local.admin, params={"force": "true"})
    assert forced["forced"] and "docker swarm leave" in forced["message"]
    assert [r["name"] for r in local.ok("GET", "/admin/nodes", local.admin)] == ["fake-m1", "w1"]
    err = assert_error(
        local.call("DELETE", "/admin/nodes/fake-m1", local.admin, params={"force": "true"}), 409
    )
    assert "itself" in err["message"]
    assert_error(local.call("DELETE", "/admin/nodes/w3", local.admin), 404)


def test_join_command(local: Env, fake: FakeSwarm) -> None:
    worker = local.ok("GET", "/admin/cluster/join-command", local.admin)
    assert worker["command"] == (
        f"docker swarm join --token {fake.tokens['Worker']} {fake.address}:2377"
    )
    manager = local.ok(
        "GET", "/admin/cluster/join-command", local.admin, params={"manager": "true"}
    )
    assert manager["role"] == "manager" and manager["token"] == fake.tokens["Manager"]


def test_cluster_init_then_again_then_nodes_work(local: Env) -> None:
    engine = FakeSwarm(address="10.0.0.11")
    local.app.dependency_overrides[engine_api] = lambda: engine
    first = local.ok(
        "POST", "/admin/cluster/init", local.admin, json={"advertise_addr": "10.0.0.11"}
    )
    assert (first["changed"], first["backend"], first["backend_changed"]) == (True, "swarm", True)
    assert first["next_step"] == "berth nodes join-command"
    with local.db() as session:
        assert current_backend(session) == "swarm"
    again = local.ok("POST", "/admin/cluster/init", local.admin, json={})
    assert (again["changed"], again["backend_changed"]) == (False, False)
    assert len(engine.init_calls) == 1
    assert [r["role"] for r in local.ok("GET", "/admin/nodes", local.admin)] == ["manager"]
    assert local.ok("GET", "/admin/cluster", local.admin)["backend"] == "swarm"


def test_cluster_init_needs_a_body_and_touches_no_engine_without_one(local: Env) -> None:
    engine = FakeSwarm()
    local.app.dependency_overrides[engine_api] = lambda: engine
    for extra in ({}, {"params": {"advertise_addr": "10.0.0.5"}}, {"json": None}, {"json": []}):
        assert_error(local.call("POST", "/admin/cluster/init", local.admin, **extra), 422)
    assert engine.init_calls == [] and engine.state == "inactive"


def test_cluster_init_refuses_a_worker_and_bad_addresses(local: Env) -> None:
    engine = FakeSwarm().as_worker_of("192.0.2.9:2377")
    local.app.dependency_overrides[engine_api] = lambda: engine
    err = assert_error(local.call("POST", "/admin/cluster/init", local.admin, json={}), 409)
    assert "worker of another swarm" in err["message"]
    local.app.dependency_overrides[engine_api] = lambda: FakeSwarm()
    for addr in ("127.0.0.1", "not an address", "$(reboot)", "", "x" * 65):
        resp = local.call("POST", "/admin/cluster/init", local.admin, json={"advertise_addr": addr})
        assert_error(resp, 422)
    with local.db() as session:
        assert current_backend(session) == "local"
    assert local.platform.swarm_manager is None


# -- the CLI over the same app ------------------------------------------------------------------


@pytest.fixture
def cli(local: Env, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `berth ...` with its API client talking to the in-process app as the operator."""

    def api_client() -> ApiClient:
        api = ApiClient(CliConfig(api_url="http://testserver", token=local.admin))
        api.http = TestClient(
            local.app,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {local.admin}"},
            raise_server_exceptions=False,
        )
        return api

    monkeypatch.setattr(nodes_cmd, "client", api_client)
    monkeypatch.setattr(cluster_cmd, "client", api_client)
    runner = CliRunner()

    def run(*args: str) -> Result:
        # A wide terminal, so that the tables' cells are not wrapped.
        return runner.invoke(cli_main.app, list(args), env={"COLUMNS": "250"})

    return run


def test_cli_on_the_local_backend(cli: Callable[..., Result]) -> None:
    listed = cli("nodes", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["role"], row["address"]) == ("local", "127.0.0.1")
    table = cli("nodes", "list")
    assert "local" in table.output and "127.0.0.1" in table.output
    refused = cli("nodes", "cordon", row["name"])
    assert refused.exit_code != 0 and isinstance(refused.exception, CliError)
    assert "berth cluster init" in refused.exception.message


def test_cli_nodes_on_the_swarm(cli: Callable[..., Result], fake: FakeSwarm) -> None:
    table = cli("nodes", "list")
    assert table.exit_code == 0, table.output
    for word in ("fake-m1", "w1", "w3", "manager", "down", "256M"):
        assert word in table.output
    info = cli("nodes", "info", "w1")
    assert info.exit_code == 0 and "shop" in info.output
    labelled = cli("nodes", "label", "w2", "rack=r1", "--remove", "zone", "--json")
    assert json.loads(labelled.output)["labels"] == {"rack": "r1"}
    bad = cli("nodes", "label", "w2", "node.role=x")
    assert isinstance(bad.exception, CliError) and bad.exception.status == 422
    assert isinstance(cli("nodes", "label", "w2").exception, CliError)
    assert "Cordoned" in cli("nodes", "cordon", "w2").output
    assert "already pause" in cli("nodes", "cordon", "w2").output
    assert "Uncordoned" in cli("nodes", "uncordon", "w2").output
    kept = cli("nodes", "remove", "w2")
    assert isinstance(kept.exception, CliError) and kept.exception.status == 409
    assert "removed w3" in cli("nodes", "remove", "w3").output
    joined = cli("nodes", "join-command")
    assert joined.output == (
        f"docker swarm join --token {fake.tokens['Worker']} {fake.address}:2377\n"
    )
    as_manager = json.loads(cli("nodes", "join-command", "--manager", "--json").output)
    assert as_manager["token"] == fake.tokens["Manager"]


def test_cli_cluster_init_twice(cli: Callable[..., Result], local: Env) -> None:
    engine = FakeSwarm(address="10.0.0.11")
    local.app.dependency_overrides[engine_api] = lambda: engine
    first = cli("cluster", "init", "--advertise-addr", "10.0.0.11")
    assert first.exit_code == 0, first.output
    assert "Swarm created" in first.output and "berth nodes join-command" in first.output
    again = cli("cluster", "init")
    assert "nothing changed" in again.output and len(engine.init_calls) == 1
    assert "backend: swarm" in cli("cluster", "status").output


def test_a_labelled_node_says_why_no_ingress_runs_there(local: Env, fake: FakeSwarm) -> None:
    """Labelled ingress=true, but the leader cannot keep the ingress service (its API on
    loopback, say): `nodes list` says why, not nothing; an unlabelled node says nothing."""

    class Failing:
        last_error = "BerthError: ingress nodes cannot reach this server's API on 127.0.0.1"

    fake.add_node("w4", labels={"ingress": "true"})
    assert local.platform.ingress_nodes is None
    rows = {r["name"]: r["ingress"] for r in local.ok("GET", "/admin/nodes", local.admin)}
    assert rows["w4"] == "not started: ingress nodes are off (BERTH_INGRESS_NODES=false)"
    assert rows["w1"] == ""
    local.platform.ingress_nodes = Failing()  # type: ignore[assignment]
    try:
        info = local.ok("GET", "/admin/nodes/w4", local.admin)
        assert info["ingress"] == f"not started: {Failing.last_error}"
    finally:
        local.platform.ingress_nodes = None
