"""Services for the multi-node tests: a web service per test, where its tasks run, whether
each answers. Traffic goes only to the nodes' addresses.
"""

from __future__ import annotations

import uuid
from typing import Any

import docker.types
import httpx

from tests.cluster.nodes import Cluster
from tests.harness import wait_until

IMAGE = "berth/busybox:latest"
# Each task serves its own hostname (node name and slot). sh as PID 1 traps TERM, so a task
# stops at once instead of after the 10 s grace period.
HTTPD = (
    "mkdir -p /www && hostname > /www/index.html && trap 'exit 0' TERM; "
    "httpd -f -p 8080 -h /www & wait"
)


def create_web_service(
    swarm: Cluster, replicas: int, max_per_node: int | None = None, **placement: Any
) -> Any:
    """busybox httpd, dnsrr, target 8080 published in host mode on a dynamic node port.

    ``placement``: docker-py's ``constraints`` and ``preferences``.
    """
    return swarm.manager_client().services.create(
        IMAGE,
        command=["sh", "-c", HTTPD],
        name=f"{swarm.run_id}-{uuid.uuid4().hex[:6]}",
        hostname="{{.Node.Hostname}}-{{.Task.Slot}}",
        mode=docker.types.ServiceMode("replicated", replicas=replicas),
        maxreplicas=max_per_node,
        endpoint_spec=docker.types.EndpointSpec(
            mode="dnsrr",
            ports=[{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}],
        ),
        **placement,
    )


def running_tasks(swarm: Cluster, service: Any) -> list[dict[str, Any]]:
    """Tasks the manager wants running and reports running, with their node's short name."""
    shorts = swarm.short_of_node_id()
    tasks = []
    # Asked of a manager that is up now, not of the one the service object came from.
    wanted = {"service": service.id, "desired-state": "running"}
    for task in swarm.manager_client().api.tasks(filters=wanted):
        if task["Status"]["State"] == "running":
            tasks.append(dict(task, short=shorts.get(task["NodeID"], "?")))
    return tasks


def wait_running(swarm: Cluster, service: Any, count: int, timeout: float = 60.0) -> list[Any]:
    tasks: list[Any] = wait_until(
        lambda: (tasks := running_tasks(swarm, service)) and len(tasks) == count and tasks,
        timeout,
        f"{count} tasks of {service.name} run",
    )
    return tasks


def http_get(address: str, port: int) -> str:
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.get(f"http://{address}:{port}/")
        response.raise_for_status()
        return response.text.strip()


def task_port(swarm: Cluster, task: dict[str, Any]) -> int:
    """The node port of a task's 8080, read from its node's engine.

    Not from the task's PortStatus: after a Raft leader change a running task was seen
    re-reported with an empty PortStatus.
    """
    label = f"com.docker.swarm.task.id={task['ID']}"
    (container,) = swarm.node(task["short"]).client().containers.list(filters={"label": label})
    return int(container.ports["8080/tcp"][0]["HostPort"])


def assert_each_task_answers(swarm: Cluster, tasks: list[dict[str, Any]]) -> None:
    """Every task answers on its node's address and its own host-mode port."""
    for task in tasks:
        assert_task_answers(swarm, task)


def assert_task_answers(swarm: Cluster, task: dict[str, Any]) -> None:
    """The task answers on its node's address with its own name (node name and slot)."""
    node = swarm.node(task["short"])
    port = wait_until(lambda: task_port(swarm, task), 20, f"task {task['ID']} has a port")
    body = wait_until(
        lambda: http_get(node.address, port), 20, f"the task on {node.name}:{port} answers"
    )
    assert body.startswith(f"{node.name}-"), (body, node.name)


def containers_running_everywhere(swarm: Cluster, service: Any) -> int:
    """The truth from every engine, not the manager's view: running containers of a service."""
    label = f"com.docker.swarm.service.name={service.name}"
    total = 0
    for node in swarm.nodes.values():
        if node.engine_alive():
            total += len(node.client().containers.list(filters={"label": label}))
    return total
