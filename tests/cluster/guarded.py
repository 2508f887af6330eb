"""A Berth server on the shared cluster that installs its node guard itself (the global
service ``berth-node-guard``), and the clean-up that leaves the cluster without it.

The guard's image is built on the manager's engine (``berth/python:3`` is loaded there, as
``make up`` has it on a real Berth machine) and pushed to the server's platform registry on the
host's switch address, over TLS (the nodes trust it through /etc/docker/certs.d/ADDR:PORT);
the workers pull it from there, as a real worker with Docker Engine only would.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker.errors

from berth.netpolicy.node_guard import CHAINS
from berth.netpolicy.node_guard_apply import NodeGuardFirewall
from berth.swarm.guard_service import LABEL_GUARD, SERVICE_NAME
from tests.cluster.berth_swarm import berth_on_swarm
from tests.cluster.nodes import SWARM_ADDRESS_POOL, Cluster
from tests.cluster.tls import free_port_on, self_signed
from tests.harness import BerthServer, wait_until

PYTHON = "berth/python:3"
CERTS_D = Path("/etc/docker/certs.d")
IMAGE_REPOSITORY = "berth/node-guard"


def workers(cluster: Cluster) -> list[str]:
    return [s for s in cluster.nodes if s not in cluster.managers]


def join_network(cluster: Cluster) -> str:
    """The lower half of the switch's /24: every node (.11 up), not the host (.254)."""
    assert cluster.subnet is not None
    return f"{cluster.subnet.network_address}/25"


def remove_guard(cluster: Cluster) -> None:
    """The guard service, its rules on every node and its images: gone (idempotent). The
    rules outlive the service by design, so they are removed node by node."""
    client = cluster.manager_client()
    for service in client.services.list(filters={"label": f"{LABEL_GUARD}=true"}):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
    for short in cluster.nodes:  # the plain-container guard of the manager Berth talks to
        if cluster.node(short).engine_alive():
            engine = cluster.client(short)
            for container in engine.containers.list(
                all=True, filters={"label": f"{LABEL_GUARD}=true", "name": SERVICE_NAME}
            ):
                if container.name == SERVICE_NAME:
                    with contextlib.suppress(docker.errors.NotFound):
                        container.remove(force=True)
    wait_until(
        lambda: (
            not any(
                cluster.client(s).containers.list(
                    all=True, filters={"label": f"{LABEL_GUARD}=true"}
                )
                for s in cluster.nodes
                if cluster.node(s).engine_alive()
            )
        ),
        60,
        "the guard's containers gone",
    )
    for node in cluster.nodes.values():
        firewall = NodeGuardFirewall(node.name)
        firewall.remove()
        assert all(firewall.rules(chain) is None for chain in CHAINS), node.name
    for short in cluster.nodes:
        engine = cluster.client(short)
        for image in engine.api.images():
            names = (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()))
            if any(IMAGE_REPOSITORY in n for n in names):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    engine.api.remove_image(image["Id"], force=True)


@contextlib.contextmanager
def guarded_server(
    cluster: Cluster, tmp: Path, extra_env: Mapping[str, str] | None = None, **kwargs: Any
) -> Iterator[tuple[BerthServer, int]]:
    """A started server on the swarm with its node guard on, and its registry's port. At the
    end the server goes, then the guard (service, rules, images): nothing is left."""
    cluster.make_whole()
    remove_guard(cluster)  # a guard another module's server left (its rules stay by design)
    clear_ingress_labels(cluster)  # and no ingress label another module's test set
    cluster.load_images([PYTHON], cluster.managers[:1])
    address = cluster.host_address
    port = free_port_on(address)
    cert, key = self_signed(tmp, address, "berth-guard-test")
    trust = CERTS_D / f"{address}:{port}"
    certs_d_existed = CERTS_D.exists()
    env = {
        "BERTH_REGISTRY_LISTEN": f"{address}:{port}",
        "BERTH_REGISTRY_TLS_CERT": str(cert),
        "BERTH_REGISTRY_TLS_KEY": str(key),
        "BERTH_NODE_GUARD": "true",
        "BERTH_NODE_GUARD_INTERVAL_SECONDS": "1",
        # The overlays' pool of the test cluster; joining only from the nodes' half.
        "BERTH_NODE_GUARD_PROTECT": json.dumps([SWARM_ADDRESS_POOL]),
        "BERTH_NODE_GUARD_JOIN_FROM": json.dumps([join_network(cluster)]),
        **(extra_env or {}),
    }
    try:
        trust.mkdir(parents=True, exist_ok=False)
        shutil.copy(cert, trust / "ca.crt")
        with berth_on_swarm(cluster, extra_env=env, **kwargs) as server:
            yield server, port
    finally:
        try:
            clear_ingress_labels(cluster)
            remove_guard(cluster)
        except Exception as exc:  # reported, and the rest of the clean-up still runs
            print(f"guard cleanup: {exc}", file=sys.stderr)
            raise
        finally:
            shutil.rmtree(trust, ignore_errors=True)
            if not certs_d_existed:
                with contextlib.suppress(OSError):
                    CERTS_D.rmdir()


def clear_ingress_labels(cluster: Cluster) -> None:
    """Remove the ``ingress`` label from every node of the shared cluster: a label outlives
    the test that set it, and would open published ports to that node in the next module."""
    for node in cluster.manager_client().nodes.list():
        spec = dict(node.attrs["Spec"])
        labels = dict(spec.get("Labels") or {})
        if "ingress" in labels:
            del labels["ingress"]
            spec["Labels"] = labels
            node.update(spec)


def guard_service(cluster: Cluster) -> dict[str, Any] | None:
    for service in cluster.manager_client().api.services(filters={"name": SERVICE_NAME}):
        if service["Spec"]["Name"] == SERVICE_NAME:
            found: dict[str, Any] = service
            return found
    return None


def guard_rows(server: BerthServer) -> dict[str, str]:
    """Node name -> its guard's state, as `berth nodes list --json` shows it."""
    rows = server.cli_json("nodes", "list")
    return {row["name"]: row["guard"] for row in rows}


def wait_guarded(cluster: Cluster, server: BerthServer, timeout: float = 120.0) -> None:
    """Every worker's guard task runs, and the rules are in place there and on the drained
    manager Berth talks to."""

    def done() -> bool:
        rows = guard_rows(server)
        names = [cluster.node(s).name for s in workers(cluster)]
        if any(rows.get(name) != "running" for name in names):
            return False
        guarded = [*workers(cluster), cluster.managers[0]]  # the manager: a plain container
        return all(NodeGuardFirewall(cluster.node(s).name).installed() for s in guarded)

    wait_until(done, timeout, "every worker's guard running with its rules")


def swarm_chain(cluster: Cluster, short: str) -> list[str]:
    return NodeGuardFirewall(cluster.node(short).name).rules("BERTH-NG-SWARM") or []


def published_chain(cluster: Cluster, short: str) -> list[str]:
    return NodeGuardFirewall(cluster.node(short).name).rules("BERTH-NG-PUBLISHED") or []
