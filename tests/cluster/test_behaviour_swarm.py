"""The behaviour suite (tests/behaviour/scenarios.py) on the Swarm backend: a real Berth server
whose engine is the shared cluster's manager, apps as services on three workers, the ingress
on this machine reaching the tasks at their nodes' addresses. The same scenario functions run
on the local backend in tests/e2e/test_behaviour_local.py."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import docker.errors
import pytest

from tests.behaviour.images import behaviour_image
from tests.behaviour.scenarios import SCENARIOS, SERVER_ENV, Target
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _killer(cluster: Cluster) -> Callable[[dict[str, Any]], None]:
    """SIGKILL the process of the task behind a ps row, on whichever node runs it."""

    def kill(row: dict[str, Any]) -> None:
        prefix = row["container_id"]
        for short in [n for n in cluster.nodes if n not in cluster.managers]:
            client = cluster.client(short)
            for container in client.containers.list():
                task_id = container.labels.get("com.docker.swarm.task.id", "")
                if task_id.startswith(prefix):
                    pid = client.api.inspect_container(container.id)["State"]["Pid"]
                    assert pid > 0
                    os.kill(pid, signal.SIGKILL)
                    return
        raise AssertionError(f"no container of task {prefix} on any worker")

    return kill


def _counter(cluster: Cluster, server: BerthServer) -> Callable[[str], int]:
    """Tasks of an app's services that Swarm has not shut down (any node, any state)."""

    def count(app: str) -> int:
        client = cluster.manager_client()
        labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
        total = 0
        for service in client.services.list(filters={"label": labels}):
            total += sum(1 for t in service.tasks() if t.get("DesiredState") == "running")
        return total

    return count


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


@pytest.fixture(scope="module")
def target(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Target]:
    cluster.make_whole()
    with behaviour_image() as image:
        cluster.load_images([image])
        manager = cluster.node(cluster.manager)
        server = BerthServer(
            extra_env={
                **SERVER_ENV,
                "BERTH_BACKEND": "swarm",
                "BERTH_DOCKER_URL": manager.base_url,
                # Tenant networks are overlays on the nodes: this machine's iptables filter
                # guards local bridges only (cross-node isolation: see the README).
                "BERTH_EGRESS_FILTER": "false",
            }
        )

        def cleanup() -> None:
            installation = server.installation
            server.cleanup()
            _remove_services(cluster, installation)

        request.addfinalizer(cleanup)
        server.start()
        server.count_instances = _counter(cluster, server)
        yield Target(server, image, _killer(cluster), "swarm")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_behaviour_on_the_swarm_backend(target: Target, name: str) -> None:
    SCENARIOS[name](target)
