"""`berth nodes drain` on the real cluster: start-first (replacements ready and routed before the
node's instances stop), zero failed requests under load, and a drain that cannot be covered
times out clearly with the node left cordoned and the app still serving."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.behaviour.images import behaviour_image
from tests.cluster.berth_swarm import berth_on_swarm
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def berth(cluster: Cluster) -> Iterator[tuple[BerthServer, str]]:
    cluster.make_whole()
    with behaviour_image() as image:
        cluster.load_images([image])
        with berth_on_swarm(cluster) as server:
            yield server, image


def _deploy(server: BerthServer, image: str, app: str, scale: int) -> None:
    server.create_app(app, "--memory", "64M", "--cpus", "0.25", "--health-path", "/healthz")
    server.cli_ok("scale", app, str(scale))
    out = server.cli_json("deploy", app, "--image", image, timeout=240)
    assert out["deployment"]["status"] == "succeeded", out
    server.wait_converged(app, scale, timeout=90)


def _availability(cluster: Cluster, name: str) -> str:
    for node in cluster.manager_client().nodes.list():
        if node.attrs["Description"]["Hostname"] == name:
            return str(node.attrs["Spec"]["Availability"])
    raise AssertionError(f"no node {name}")


def test_drain_moves_instances_start_first_without_failed_requests(
    berth: tuple[BerthServer, str], cluster: Cluster
) -> None:
    server, image = berth
    _deploy(server, image, "drained", 4)
    per_node = Counter(r["node"] for r in server.ps("drained"))
    node, count = per_node.most_common(1)[0]
    assert count >= 1
    try:
        with server.client_loop("drained", max_seconds=150, max_requests=20000) as loop:
            loop.wait_for_requests(10)
            out = server.cli_json("nodes", "drain", node, "--timeout", "120", timeout=180)
            loop.wait_for_requests(loop.result.total + 30)
        assert out["status"] == "drained", out
        assert loop.result.failures == [], loop.result.failures[:5]
        rows = server.wait_converged("drained", 4, timeout=60)
        assert node not in {r["node"] for r in rows}
        assert _availability(cluster, node) == "drain"
        assert server.cli_json("nodes", "info", node)["instances"] == 0
    finally:
        server.cli_ok("nodes", "uncordon", node)
    assert _availability(cluster, node) == "active"
    gone = server.cli("nodes", "drain", node, "--no-wait", "--json")
    assert gone.returncode == 0  # a new drain may start again after an uncordon
    server.cli_ok("nodes", "uncordon", node)
    server.cli_ok("apps", "delete", "drained", "--yes")


def test_a_drain_that_cannot_be_covered_times_out_and_keeps_serving(
    berth: tuple[BerthServer, str], cluster: Cluster
) -> None:
    server, image = berth
    _deploy(server, image, "stuck", 2)
    rows = server.ps("stuck")
    node = rows[0]["node"]
    others = {n.attrs["Description"]["Hostname"] for n in cluster.manager_client().nodes.list()}
    others = {n for n in others if n != node and not n.endswith(tuple(cluster.managers))}
    try:
        for other in others:  # nowhere else to go
            server.cli_ok("nodes", "cordon", other)
        result = server.cli("nodes", "drain", node, "--timeout", "4", timeout=120)
        assert result.returncode != 0
        assert "timed out" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
        status = server.api_json("GET", f"/admin/nodes/{node}/drain")
        assert status["status"] == "timed_out" and "ready" in status["message"]
        assert _availability(cluster, node) == "pause"  # stays cordoned, instances stay
        wait_until(lambda: server.app_body("stuck") is not None, 30, "the app still serves")
        assert node in {r["node"] for r in server.ps("stuck") if r["state"] == "running"}
    finally:
        for other in [*others, node]:
            server.cli_ok("nodes", "uncordon", other)
    server.wait_converged("stuck", 2, timeout=60)
    server.cli_ok("apps", "delete", "stuck", "--yes")
