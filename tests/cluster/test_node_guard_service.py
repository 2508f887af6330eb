"""Berth installs each node's guard itself and keeps it equal to the facts, on the shared
cluster: a real Berth server on Swarm, its guard image built offline on the manager's engine,
pushed to its registry and pulled by the workers (which have no copy of it, nor internet).

- Every worker runs a ``berth-node-guard`` task (global, host network, NET_ADMIN only,
  read-only root), its rules are in the node's filter table, `berth nodes list` shows it
  running; the drained manager gets no task, so Berth runs the same guard there as a plain
  container of the engine it talks to.
- ``berth nodes label W ingress=true``: a process on W (as an nginx there would be) reaches
  the published ports of the other workers, which it did not before; the label removed, it
  loses them again. The guard's chains stay installed on every node at every reading.
- A node that joins gets its guard, and the others' guards let it in as a Swarm peer; once it
  is gone, its address leaves their rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.netpolicy.node_guard_apply import NodeGuardFirewall
from berth.swarm.guard_service import CAPABILITIES, SERVICE_NAME
from tests.cluster.conftest import TIMINGS
from tests.cluster.guarded import (
    guard_rows,
    guard_service,
    guarded_server,
    published_chain,
    swarm_chain,
    wait_guarded,
    workers,
)
from tests.cluster.nodes import Cluster
from tests.cluster.services import create_web_service, task_port, wait_running
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PROBE_TIMEOUT = 1.5
PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    try:
        socket.create_connection(tuple(target), timeout=float(sys.argv[2])).close()
        return "OPEN"
    except OSError as exc:
        return type(exc).__name__
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(max(len(targets), 1)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


@pytest.fixture(scope="module")
def guarded(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    started = time.monotonic()
    with guarded_server(cluster, tmp_path_factory.mktemp("guard")) as (server, _port):
        # Before any test's `swarm` fixture takes its list of services to keep.
        wait_guarded(cluster, server)
        TIMINGS.append(
            f"node guard: server start -> every guard running: {time.monotonic() - started:.1f}s"
            " (image built, pushed, pulled by 3 workers)"
        )
        yield server


def _from_node(cluster: Cluster, short: str, targets: list[tuple[str, int]]) -> list[str]:
    """Connect from a process in the node's own namespace (not a container)."""
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{cluster.node(short).name}", sys.executable, "-c",
         PROBE, json.dumps([list(t) for t in targets]), str(PROBE_TIMEOUT)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcomes: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcomes


def test_every_worker_runs_the_guard_berth_installed(swarm: Cluster, guarded: BerthServer) -> None:
    wait_guarded(swarm, guarded)
    service = guard_service(swarm)
    assert service is not None
    spec = service["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    # Pinned by digest in the platform registry: the workers pulled it from there.
    assert container["Image"].startswith(guarded.settings["BERTH_REGISTRY_LISTEN"] + "/")
    assert "@sha256:" in container["Image"]
    assert "Global" in spec["Mode"]
    assert container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["CapabilityAdd"] == CAPABILITIES
    rows = guard_rows(guarded)
    manager = swarm.node(swarm.managers[0]).name
    assert rows[manager] == ""  # drained: Swarm gives it no task, global or not
    # ...so the manager Berth talks to runs the same guard as a plain container.
    (local,) = swarm.client(swarm.managers[0]).containers.list(filters={"name": SERVICE_NAME})
    assert local.attrs["HostConfig"]["NetworkMode"] == "host"
    assert local.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert local.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert NodeGuardFirewall(manager).installed()
    for short in workers(swarm):
        node = swarm.node(short)
        assert rows[node.name] == "running"
        chain = swarm_chain(swarm, short)
        # Every node's address is a Swarm peer in every guard.
        for other in swarm.nodes.values():
            assert any(f"-s {other.address}/32 -j RETURN" in line for line in chain), chain
    TIMINGS.append(f"node guard: {container['Image']} running on {len(workers(swarm))} workers")


def _published(swarm: Cluster, tasks: list[dict[str, Any]], apart_from: str) -> list[Any]:
    return [
        (swarm.node(t["short"]).address, task_port(swarm, t))
        for t in tasks
        if t["short"] != apart_from
    ]


def test_an_ingress_label_opens_the_published_ports_and_its_removal_closes_them(
    swarm: Cluster, guarded: BerthServer
) -> None:
    wait_guarded(swarm, guarded)
    service = create_web_service(swarm, 3, max_per_node=1)
    tasks = wait_running(swarm, service, 3)
    w1 = workers(swarm)[0]
    name = swarm.node(w1).name
    targets = _published(swarm, tasks, apart_from=w1)
    assert len(targets) == 2, targets
    # The host runs `berth server` (an ingress): it reaches every task.
    for task in tasks:
        address, port = swarm.node(task["short"]).address, task_port(swarm, task)
        assert _from_host(address, port), (address, port)
    before = _from_node(swarm, w1, targets)
    assert "OPEN" not in before, before
    try:
        labelled = time.monotonic()
        guarded.cli_json("nodes", "label", name, "ingress=true")
        wait_until(
            lambda: _from_node(swarm, w1, targets) == ["OPEN", "OPEN"], 60, f"{name} an ingress"
        )
        TIMINGS.append(
            f"node guard: label ingress=true -> open: {time.monotonic() - labelled:.1f}s"
        )
        assert all(
            any(swarm.node(w1).address in line for line in published_chain(swarm, s))
            for s in workers(swarm)
        )
        _assert_installed_everywhere(swarm)
    finally:
        unlabelled = time.monotonic()
        guarded.cli_json("nodes", "label", name, "--remove", "ingress")
    wait_until(lambda: "OPEN" not in _from_node(swarm, w1, targets), 60, f"{name} no ingress again")
    TIMINGS.append(f"node guard: label removed -> closed: {time.monotonic() - unlabelled:.1f}s")
    _assert_installed_everywhere(swarm)


def _assert_installed_everywhere(swarm: Cluster) -> None:
    for short in workers(swarm):
        assert NodeGuardFirewall(swarm.node(short).name).installed(), short


def _from_host(address: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((address, port), timeout=PROBE_TIMEOUT).close()
    except OSError:
        return False
    return True


def test_a_joining_node_gets_its_guard_and_the_others_let_it_in(
    swarm: Cluster, guarded: BerthServer, tmp_path: Path
) -> None:
    wait_guarded(swarm, guarded)
    short = "w9"
    node = swarm.add_node(short)
    try:
        joined = time.monotonic()
        swarm.join(short)
        swarm.wait_states(dict.fromkeys(swarm.nodes, "ready"), timeout=60)
        wait_until(lambda: guard_rows(guarded).get(node.name) == "running", 120, "w9's guard")
        wait_until(lambda: NodeGuardFirewall(node.name).installed(), 30, "w9's rules")
        TIMINGS.append(
            f"node guard: join -> its guard's rules in: {time.monotonic() - joined:.1f}s"
        )
        for other in workers(swarm):
            wait_until(
                lambda other=other: any(  # type: ignore[misc]
                    f"-s {node.address}/32 -j RETURN" in line for line in swarm_chain(swarm, other)
                ),
                30,
                f"{other} lets w9 in",
            )
        # Swarm is whole with the guards on: every node Ready.
        assert set(swarm.node_states().values()) == {"ready"}
    finally:
        if short in swarm.nodes:
            swarm.remove_node(short)
    first = workers(swarm)[0]
    wait_until(
        lambda: not any(node.address + "/32" in line for line in swarm_chain(swarm, first)),
        60,
        "w9's address gone from the guards",
    )
