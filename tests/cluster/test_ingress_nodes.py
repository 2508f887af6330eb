"""Nodes labelled ``ingress=true`` run the ingress, on the shared cluster: a real Berth server
on Swarm (with its node guard) keeps the global service ``berth-ingress`` (the distro's nginx
and Berth's agent, an image built offline and pulled from the platform registry by nodes that
have no copy of it), and every labelled node serves the same routes as the server's own nginx.

- Two nodes labelled: each answers for the app on its port 80, from the app's instances on
  any node (the guard lets ingress nodes reach published ports); a new release reaches both.
- `berth nodes list` says which node serves which generation.
- The agents' endpoint takes the ingress token only: no token, a wrong one, or an operator's
  token is refused.
- The label removed: the node's nginx stops, and port 80 there refuses.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Iterator

import docker.errors
import httpx
import pytest

from berth.swarm.ingress_service import CAPABILITIES, CONSTRAINT, LABEL_SERVICE, SERVICE_NAME
from tests.behaviour.images import behaviour_image
from tests.cluster.conftest import TIMINGS
from tests.cluster.guarded import guarded_server, wait_guarded, workers
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP = "edge"
PORT = 80


def remove_ingress_service(cluster: Cluster) -> None:
    """The service and its secrets (they outlive a server by design: the nodes keep serving
    while every server restarts)."""
    client = cluster.manager_client()
    for service in client.services.list(filters={"label": f"{LABEL_SERVICE}=true"}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()

    def secrets_gone() -> bool:
        left = client.secrets.list(filters={"label": f"{LABEL_SERVICE}=true"})
        for secret in left:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                secret.remove()  # refused while a task still mounts it
        return not left

    wait_until(secrets_gone, 60, "the ingress token's secrets gone")


@pytest.fixture(scope="module")
def edge(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BerthServer, str]]:
    env = {"BERTH_INGRESS_NODES": "true", "BERTH_INGRESS_NODES_INTERVAL_SECONDS": "1"}
    remove_ingress_service(cluster)
    try:
        with behaviour_image() as image:
            cluster.load_images([image])
            with guarded_server(
                cluster, tmp_path_factory.mktemp("edge"), env, host=cluster.host_address
            ) as (server, _port):
                wait_guarded(cluster, server)
                yield server, image
    finally:
        remove_ingress_service(cluster)


def _get(address: str, host: str, timeout: float = 3.0) -> httpx.Response:
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        return client.get(f"http://{address}:{PORT}/", headers={"Host": host})


def _answers(address: str, host: str, text: str) -> bool:
    try:
        resp = _get(address, host)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200 and text in resp.text


def _diagnose(swarm: Cluster, server: BerthServer, address: str, host: str) -> None:
    """What the ingress nodes' tasks and the server said, for a failure's report."""
    client = swarm.manager_client()
    for task in client.api.tasks(filters={"service": SERVICE_NAME}):
        status = task["Status"]
        print("task", task["NodeID"][:8], task["DesiredState"], status["State"],
              status.get("Err", ""), status.get("Message", ""))  # fmt: skip
    for short in workers(swarm):
        for c in swarm.client(short).containers.list(all=True):
            if c.labels.get(LABEL_SERVICE) == "true":
                print(short, c.status, c.logs(tail=30).decode(errors="replace"))
    with contextlib.suppress(httpx.HTTPError):
        resp = _get(address, host)
        print("answer", resp.status_code, resp.text[:300])
    with contextlib.closing(sqlite3.connect(server.home / "berth.db")) as db:
        print(db.execute("SELECT key, value FROM meta WHERE key LIKE 'ingress%'").fetchall())
    print(server.log_tail(80))


def _ingress_rows(server: BerthServer) -> dict[str, str]:
    return {row["name"]: row["ingress"] for row in server.cli_json("nodes", "list")}


def _refuses(address: str) -> bool:
    try:
        socket.create_connection((address, PORT), timeout=1.0).close()
    except OSError:
        return True
    return False


def test_labelled_nodes_serve_the_same_routes(
    swarm: Cluster, edge: tuple[BerthServer, str]
) -> None:
    server, image = edge
    w1, w2, w3 = workers(swarm)[:3]
    server.create_app(APP, "--memory", "64M", "--cpus", "0.25", "--health-path", "/healthz")
    server.cli_ok("config", "set", APP, "GREETING=first")
    server.cli_ok("scale", APP, "2")
    out = server.cli_json("deploy", APP, "--image", image, timeout=240)
    assert out["deployment"]["status"] == "succeeded", out
    server.wait_converged(APP, 2, timeout=90)
    host = server.host_of(APP)

    started = time.monotonic()
    for short in (w1, w2):
        server.cli_ok("nodes", "label", swarm.node(short).name, "ingress=true")
    a1, a2 = swarm.node(w1).address, swarm.node(w2).address
    try:
        wait_until(
            lambda: _answers(a1, host, "first") and _answers(a2, host, "first"),
            180,
            "both ingress nodes answer for the app",
        )
    except AssertionError:
        _diagnose(swarm, server, a1, host)
        raise
    TIMINGS.append(
        f"ingress nodes: label set -> both serving the app: {time.monotonic() - started:.1f}s"
        " (image built, pushed, pulled by 2 nodes; guard opened the published ports)"
    )

    # The service as Swarm runs it: placed by the label, hardened, the token as a secret.
    (service,) = swarm.manager_client().api.services(filters={"name": SERVICE_NAME})
    spec = service["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == [CONSTRAINT]
    assert container["Image"].startswith(server.settings["BERTH_REGISTRY_LISTEN"] + "/")
    assert "@sha256:" in container["Image"]
    assert container["ReadOnly"] is True and container["Init"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == CAPABILITIES
    assert [s["File"]["Name"] for s in container["Secrets"]] == ["berth-ingress-token"]
    assert not any("bit_" in arg for arg in container["Args"])  # the token is in no argument
    running = {
        t["NodeID"]
        for t in swarm.manager_client().api.tasks(filters={"service": SERVICE_NAME})
        if t["Status"]["State"] == "running"
    }
    ids = swarm.short_of_node_id()
    assert {ids[n] for n in running} == {w1, w2}

    # Both spread the requests over the app's instances (on whichever nodes they run).
    for address in (a1, a2):
        seen = set()
        for _ in range(30):
            resp = _get(address, host)
            assert resp.status_code == 200, resp.text
            seen.add(resp.text.strip())
        assert len(seen) == 2, seen
    assert _get(a1, "nothing.example").status_code == 404

    seen_rows: list[dict[str, str]] = []

    def both_serve() -> dict[str, str] | None:
        rows = _ingress_rows(server)
        seen_rows[:] = [rows]
        names = (swarm.node(w1).name, swarm.node(w2).name)
        return rows if all(rows[n].startswith("serving") for n in names) else None

    try:
        rows = wait_until(both_serve, 30, "nodes list says both serve")
    except AssertionError:
        print("nodes list:", seen_rows)
        _diagnose(swarm, server, a1, host)
        raise
    assert rows[swarm.node(w3).name] == ""

    # A new release reaches both ingress nodes.
    server.cli_ok("config", "set", APP, "GREETING=second")
    started = time.monotonic()
    wait_until(
        lambda: _answers(a1, host, "second") and _answers(a2, host, "second"),
        120,
        "both ingress nodes serve the new release",
    )
    TIMINGS.append(
        f"ingress nodes: new release -> served by both: {time.monotonic() - started:.1f}s"
    )

    # The label removed: that node's nginx goes, the other keeps serving.
    server.cli_ok("nodes", "label", swarm.node(w1).name, "--remove", "ingress")
    wait_until(lambda: _refuses(a1), 60, "port 80 on the unlabelled node refuses")
    assert _answers(a2, host, "second")
    wait_until(lambda: _ingress_rows(server)[swarm.node(w1).name] == "", 30, "nodes list updated")


def test_the_agents_endpoint_takes_the_ingress_token_only(
    edge: tuple[BerthServer, str],
) -> None:
    server, _ = edge
    url = f"{server.api_url}/api/v1/ingress/sync"
    body = {"node": "w9", "etag": "", "live_generation": None, "error": ""}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for headers in (
            {},
            {"Authorization": "Bearer bit_not-the-token"},
            {"Authorization": f"Bearer {server.token}"},  # the operator's own token
        ):
            resp = client.post(url, json=body, headers=headers)
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["code"] == "unauthorized"
            assert "conf" not in resp.text
