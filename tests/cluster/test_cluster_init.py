"""`berth cluster init` of a running single-machine installation, under load: the apps move
onto the new swarm start-first with zero failed requests, and running it twice changes nothing.

The "single machine" is a node of the test cluster that is in no swarm: the Berth server runs
inside that node's network namespace (so its loopback is that engine's), reached at the node's
address. The host's engine is never made a swarm member."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import pytest

from tests.behaviour.images import behaviour_image
from tests.behaviour.scenarios import SERVER_ENV
from tests.cluster.nodes import NETNS_DIR, Cluster, Node
from tests.harness import BerthServer, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP = "movers"


@pytest.fixture
def machine(cluster: Cluster) -> Iterator[tuple[Node, str]]:
    """A fresh engine of its own (in no swarm), with the app's image."""
    short = "ci" + format(len(cluster.nodes), "x")
    node = cluster.add_node(short)
    try:
        with behaviour_image() as image:
            cluster.load_images([image], [short])
            yield node, image
    finally:
        cluster.remove_node(short)


def _count(node: Node, server: BerthServer) -> int:
    """The app's instances on that engine: containers before the move, tasks after."""
    client = docker.DockerClient(base_url=node.base_url, version="1.41", timeout=30)
    with contextlib.closing(client):
        labels = [f"berth.installation={server.installation}", f"berth.app-name={APP}"]
        running = client.containers.list(filters={"label": labels})
        return len(running)


def _services(node: Node, server: BerthServer) -> list[docker.models.services.Service]:
    client = docker.DockerClient(base_url=node.base_url, version="1.41", timeout=30)
    with contextlib.closing(client):
        label = f"berth.installation={server.installation}"
        return list(client.services.list(filters={"label": label}))


def test_cluster_init_moves_running_apps_without_failed_requests(
    cluster: Cluster, machine: tuple[Node, str]
) -> None:
    node, image = machine
    server = BerthServer(
        host=node.address,
        command_prefix=["nsenter", f"--net={NETNS_DIR / node.name}"],
        extra_env={
            **SERVER_ENV,
            "BERTH_DOCKER_URL": node.base_url,
            # The node namespace's firewall is not this test's subject (tests/e2e covers it).
            "BERTH_EGRESS_FILTER": "false",
            "BERTH_REGISTRY_LISTEN": f"{node.address}:{free_port()}",
        },
    )
    try:
        server.start()
        server.count_instances = lambda app: _count(node, server)
        server.create_app(APP, "--memory", "64M", "--cpus", "0.25", "--health-path", "/healthz")
        server.cli_ok("scale", APP, "2")
        out = server.cli_json("deploy", APP, "--image", image, timeout=240)
        assert out["deployment"]["status"] == "succeeded", out
        local = server.wait_converged(APP, 2, timeout=90)
        assert {r["node"] for r in local} == {"local"}

        with server.client_loop(APP, max_seconds=120, max_requests=20000) as loop:
            loop.wait_for_requests(20)
            init = server.cli_json("cluster", "init", "--advertise-addr", node.address)
            assert init["changed"] and init["backend_changed"], init

            def moved() -> bool:
                rows = server.ps(APP)
                on_swarm = [r for r in rows if r["node"] == node.name and r["state"] == "running"]
                return len(rows) == 2 and len(on_swarm) == 2 and all(r["healthy"] for r in rows)

            try:
                wait_until(moved, 90, "both instances run as Swarm tasks, healthy")
            except AssertionError as exc:
                tasks = [t["Status"] for svc in _services(node, server) for t in svc.tasks()]
                raise AssertionError(f"{exc}\ntasks: {tasks[:3]}\n{server.log_tail(10)}") from None
            loop.wait_for_requests(loop.result.total + 40)
        assert loop.result.failures == [], loop.result.failures[:5]
        assert loop.result.ok >= 60
        services = _services(node, server)
        assert len(services) == 1
        assert services[0].attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
        # The local containers are gone; the two left are the service's tasks.
        wait_until(lambda: _count(node, server) == 2, 30, "only the tasks run")

        again = server.cli_json("cluster", "init", "--advertise-addr", node.address)
        assert not again["changed"] and not again["backend_changed"], again
        assert server.cli_json("apps", "info", APP)["scale"] == 2
    finally:
        installation = server.installation
        server.cleanup()
        if installation:
            for service in _services(node, server):
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
