"""A real Berth server on the Swarm backend over a test cluster: its engine is a manager of
the cluster, the ingress on this machine reaches the tasks at their nodes' addresses. Shared by
the multi-node modules (behaviour suite, drain, failures)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker.errors

from tests.behaviour.scenarios import SERVER_ENV
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, free_port


def kill_task(cluster: Cluster) -> Callable[[dict[str, Any]], None]:
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


def task_counter(cluster: Cluster, server: BerthServer) -> Callable[[str], int]:
    """Tasks of an app's services that Swarm has not shut down (any node, any state)."""

    def count(app: str) -> int:
        client = cluster.manager_client()
        labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
        total = 0
        for service in client.services.list(filters={"label": labels}):
            total += sum(1 for t in service.tasks() if t.get("DesiredState") == "running")
        return total

    return count


def remove_services(cluster: Cluster, installation: str | None) -> None:
    if not installation:
        return
    client = cluster.manager_client()
    for service in client.services.list(filters={"label": f"berth.installation={installation}"}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
    for network in client.networks.list(filters={"label": f"berth.installation={installation}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()


@contextlib.contextmanager
def berth_on_swarm(
    cluster: Cluster, extra_env: Mapping[str, str] | None = None, **kwargs: Any
) -> Iterator[BerthServer]:
    """Started; everything it made (services, overlays, its own state) removed at the end."""
    server = BerthServer(
        extra_env={
            **SERVER_ENV,
            "BERTH_BACKEND": "swarm",
            "BERTH_DOCKER_URL": cluster.node(cluster.manager).base_url,
            # Tenant networks are overlays on the nodes: this machine's iptables filter guards
            # local bridges only (cross-node isolation: see the README).
            "BERTH_EGRESS_FILTER": "false",
            # A registry of its own: servers of other modules may run at the same time.
            "BERTH_REGISTRY_LISTEN": f"127.0.0.1:{free_port()}",
            # The node guard's rules outlive its service by design: only the modules that test
            # it turn it on (tests/cluster/guarded.py), and remove it after them.
            "BERTH_NODE_GUARD": "false",
            # Likewise the ingress nodes' service (tests/cluster/test_ingress_nodes.py).
            "BERTH_INGRESS_NODES": "false",
            **(extra_env or {}),
        },
        **kwargs,
    )
    try:
        server.start()
        server.count_instances = task_counter(cluster, server)
        yield server
    finally:
        installation = server.installation
        server.cleanup()
        remove_services(cluster, installation)
