"""Placement constraints through a real Berth server on the Swarm backend (the shared cluster):
nodes labelled zone=a/b/b, an app with ``--constraint zone==b`` runs on zone b only, an app that
no node satisfies waits as pending with Swarm's own reason in ``berth ps`` and its deployment
does not say succeeded, and removing its constraint rolls it out."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import docker.errors
import pytest

from tests.behaviour.scenarios import SERVER_ENV
from tests.cluster.nodes import Cluster
from tests.harness import PYTHON_APP, BerthServer, docker_client, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ZONES = {"w1": "a", "w2": "b", "w3": "b"}


def _remove_services(cluster: Cluster, installation: str | None) -> None:
    if not installation:
        return
    client = cluster.manager_client()
    for service in client.services.list(filters={"label": f"berth.installation={installation}"}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
    for network in client.networks.list(filters={"label": f"berth.installation={installation}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()


def _running_tasks(cluster: Cluster, server: BerthServer, app: str) -> list[dict[str, Any]]:
    """The tasks Swarm keeps running for an app's services, each with its node's short name."""
    client = cluster.manager_client()
    shorts = cluster.short_of_node_id()
    labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
    out = []
    for service in client.services.list(filters={"label": labels}):
        for task in service.tasks():
            if task.get("DesiredState") == "running":
                out.append({**task, "short": shorts.get(task.get("NodeID", ""), "")})
    return out


@contextlib.contextmanager
def _image() -> Iterator[str]:
    """examples/python-app under a unique ``berth/...`` name, with a label of this run so that
    its image id is unique too: Cluster.load_images saves an image by id under its first tag,
    and another run's build of the same app (the same id) would lend it another name."""
    run = uuid.uuid4().hex[:8]
    ref = f"berth/placement-{run}:latest"
    with contextlib.closing(docker_client()) as client:
        client.images.build(
            path=str(PYTHON_APP), tag=ref, labels={"berth.test-run": run}, rm=True, forcerm=True
        )
        try:
            yield ref
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.images.remove(ref, force=True)


class Placed(NamedTuple):
    server: BerthServer
    image: str  # a base-image reference every tenant may deploy, loaded on every node


@pytest.fixture(scope="module")
def placed(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Placed]:
    cluster.make_whole()
    before = {s: dict(cluster.swarm_node(s).attrs["Spec"].get("Labels") or {}) for s in ZONES}

    def restore_labels() -> None:
        for short, labels in before.items():
            with contextlib.suppress(Exception):  # a node already gone has nothing to restore
                cluster.set_labels(short, labels)

    request.addfinalizer(restore_labels)
    for short, zone in ZONES.items():
        cluster.set_labels(short, {"zone": zone})
    with _image() as image:
        cluster.load_images([image])
        berth = BerthServer(
            extra_env={
                **SERVER_ENV,
                "BERTH_BACKEND": "swarm",
                "BERTH_DOCKER_URL": cluster.node(cluster.manager).base_url,
                # Tenant networks are overlays on the nodes: this machine's iptables filter
                # guards local bridges only.
                "BERTH_EGRESS_FILTER": "false",
            }
        )

        def cleanup() -> None:
            installation = berth.installation
            berth.cleanup()
            _remove_services(cluster, installation)

        request.addfinalizer(cleanup)
        berth.start()
        berth.count_instances = lambda app: len(_running_tasks(cluster, berth, app))
        yield Placed(berth, image)


def _app(server: BerthServer, prefix: str, *constraints: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    server.create_app(name, "--memory", "64M", "--cpus", "0.2")
    if constraints:
        args = [arg for c in constraints for arg in ("--constraint", c)]
        updated = server.cli_json("apps", "update", name, *args)
        assert updated["deployment"] is None  # nothing runs yet: nothing to roll out
    return name


def test_an_app_constrained_to_zone_b_runs_on_zone_b_nodes_only(
    cluster: Cluster, placed: Placed
) -> None:
    server = placed.server
    name = _app(server, "in-b", "zone==b")
    server.cli_ok("scale", name, "3")
    server.cli_ok("deploy", name, "--image", placed.image, timeout=120)
    rows = server.wait_converged(name, 3)
    in_b = {cluster.node(s).name for s, zone in ZONES.items() if zone == "b"}
    assert {r["node"] for r in rows} <= in_b
    assert {t["short"] for t in _running_tasks(cluster, server, name)} <= {"w2", "w3"}
    info = server.cli_json("apps", "info", name)
    assert info["constraints"] == ["zone==b"]
    assert "zone==b" in server.cli_ok("apps", "info", name).stdout
    # A bad constraint: a clear error, no traceback, nothing changed (no new revision).
    refused = server.cli("apps", "update", name, "--constraint", "zone=b;reboot")
    assert refused.returncode == 1, refused
    assert "LABEL==VALUE" in refused.stderr and "Traceback" not in refused.stderr
    again = server.cli_json("apps", "info", name)
    assert again["constraints"] == ["zone==b"]
    assert again["deployment"]["id"] == info["deployment"]["id"]


def test_an_unsatisfiable_app_is_pending_with_swarms_reason_until_its_constraint_goes(
    cluster: Cluster, placed: Placed
) -> None:
    server = placed.server
    name = _app(server, "nowhere", "zone==nowhere")
    server.cli_ok("scale", name, "2")
    deployed = server.cli_json("deploy", name, "--image", placed.image, "--no-wait", timeout=120)
    dep_id = deployed["deployment"]["id"]

    def pending() -> list[dict[str, Any]] | None:
        rows = server.ps(name)
        # Swarm says "pending task scheduling" until its scheduler has tried every node.
        decided = [
            r for r in rows if r["state"] == "pending" and r["reason"].startswith("no suitable")
        ]
        return decided if len(decided) == 2 and len(rows) == 2 else None

    for row in wait_until(pending, 40, f"{name} is pending with Swarm's reason"):
        assert "scheduling constraints not satisfied on 3 nodes" in row["reason"], row
        assert not row["healthy"]
    shown = server.cli_ok("ps", name).stdout
    assert "pending" in shown
    # In full, as Swarm says it ("...on 3 nodes; 1 node not available for new tasks)": the
    # drained manager).
    assert "is pending: no suitable node (scheduling constraints not satisfied on 3 nodes" in shown
    tasks = _running_tasks(cluster, server, name)
    assert tasks and all(t["Status"]["State"] == "pending" and not t["short"] for t in tasks)
    dep = server.api_json("GET", f"/apps/{name}/deployments/{dep_id}")
    assert dep["status"] == "in_progress", dep  # never "succeeded" while nothing runs

    # Without the constraint: a new revision, rolled out, running on any worker.
    cleared = server.cli_json("apps", "update", name, "--no-constraints", timeout=120)
    assert cleared["app"]["constraints"] == []
    assert cleared["deployment"]["kind"] == "constraints"
    assert cleared["deployment"]["status"] == "succeeded", cleared
    rows = server.wait_converged(name, 2)
    assert all(r["state"] == "running" and r["reason"] == "" for r in rows)
    first = server.api_json("GET", f"/apps/{name}/deployments/{dep_id}")
    assert first["status"] == "superseded"


def _services(cluster: Cluster, server: BerthServer, app: str) -> dict[str, dict[str, Any]]:
    client = cluster.manager_client()
    labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
    return {s.id: s.attrs for s in client.services.list(filters={"label": labels})}


def test_a_change_of_constraints_moves_a_running_app_start_first(
    cluster: Cluster, placed: Placed
) -> None:
    server = placed.server
    name = _app(server, "moving", "zone==b")
    server.cli_ok("scale", name, "2")
    server.cli_ok("deploy", name, "--image", placed.image, timeout=120)
    server.wait_converged(name, 2)
    old = _services(cluster, server, name)
    assert len(old) == 1
    (old_id,) = old
    old_tasks = {t["ID"] for t in _running_tasks(cluster, server, name)}

    with server.client_loop(name, max_seconds=60) as load:
        load.wait_for_requests(20)
        moved = server.cli_json("apps", "update", name, "--constraint", "zone==a", "--no-wait")
        assert moved["deployment"]["kind"] == "constraints"
        # Until the new revision serves, the old service is left exactly as it was: Swarm
        # never moves its tasks itself (its update would stop them first).
        dep_path = f"/apps/{name}/deployments/{moved['deployment']['id']}"
        while old_id in (now := _services(cluster, server, name)):
            spec = now[old_id]["Spec"]["TaskTemplate"]["Placement"]["Constraints"]
            assert spec == ["node.labels.zone==b"], now[old_id]["Spec"]
            assert "PreviousSpec" not in now[old_id], "the old service was updated in place"
            # Scaled down once the new instances serve, never replaced by tasks of its own.
            still = _running_tasks(cluster, server, name)
            assert {t["ID"] for t in still if t["ServiceID"] == old_id} <= old_tasks
            if server.api_json("GET", dep_path)["status"] != "in_progress":
                break
        rows = server.wait_converged(name, 2)
        load.wait_for_requests(load.result.total + 20)
    result = load.stop()
    assert {r["node"] for r in rows} == {cluster.node("w1").name}
    assert old_id not in _services(cluster, server, name)
    assert result.failures == [], result.failures[:5]
    assert result.ok >= 40
