"""The platform registry across nodes: the host pushes, the shared cluster's workers pull by
digest (only the layers they lack) and Swarm runs a service pinned to a digest.

The registry listens on the host's address on the cluster's switch, over TLS with a certificate
this test makes, with htpasswd (auto: beyond loopback). The engines trust the certificate
through /etc/docker/certs.d/ADDR:PORT/ca.crt, a directory of this test's own address and port,
removed afterwards; no engine's daemon config changes. Traffic goes only to the harness's /24.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from berth.registry.push import PushedImage, push_image, repository_for
from berth.registry.server import RegistryServer
from berth.settings import Settings
from tests.cluster.nodes import Cluster
from tests.cluster.tls import free_port_on, self_signed
from tests.harness import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]

BUSYBOX = "berth/busybox:latest"
CERTS_D = Path("/etc/docker/certs.d")


@dataclass
class NodeRegistry:
    server: RegistryServer
    host: Any  # the host engine's client, which pushes
    images: list[str]


@pytest.fixture
def node_registry(swarm: Cluster, tmp_path: Path) -> Iterator[NodeRegistry]:
    address = swarm.host_address
    port = free_port_on(address)
    cert, key = self_signed(tmp_path, address)
    trust = CERTS_D / f"{address}:{port}"
    host = docker.from_env(version="auto")
    server = RegistryServer(
        Settings(
            home=tmp_path / "home",
            registry_listen=f"{address}:{port}",
            registry_tls_cert=str(cert),
            registry_tls_key=str(key),
        )
    )
    registry = NodeRegistry(server, host, [])
    certs_d_existed = CERTS_D.exists()
    try:
        trust.mkdir(parents=True, exist_ok=False)
        shutil.copy(cert, trust / "ca.crt")
        server.ensure_running()
        yield registry
    finally:
        prefix = f"{server.address}/"
        for engine in [host, *(swarm.client(s) for s in swarm.nodes)]:
            try:
                for image in engine.api.images():
                    names = (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()))
                    if any(name.startswith(prefix) for name in names):
                        for name in names:
                            if name.startswith(prefix):
                                _remove_quietly(engine, name)
                        if engine is not host:  # pulled by this test: the image goes too
                            _remove_quietly(engine, image["Id"])
            except docker.errors.DockerException as exc:
                print(f"registry node cleanup: {exc}", file=sys.stderr)
        for image_id in reversed(registry.images):
            try:
                host.api.remove_image(image_id, force=True)
            except docker.errors.NotFound:
                pass
        server.stop()
        shutil.rmtree(trust, ignore_errors=True)
        if not certs_d_existed:
            with contextlib.suppress(OSError):
                CERTS_D.rmdir()  # only if empty: another test's trust stays
        host.close()


def _remove_quietly(engine: Any, name: str) -> None:
    try:
        engine.api.remove_image(name, force=True)
    except docker.errors.NotFound:
        pass  # gone with another of its names


def _build(host: Any, parent: str, name: str, data: bytes) -> str:
    dockerfile = f"FROM {parent}\nCOPY {name} /{name}\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for entry, content in (("Dockerfile", dockerfile), (name, data)):
            info = tarfile.TarInfo(entry)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    context.seek(0)
    image, _ = host.images.build(fileobj=context, custom_context=True, rm=True, forcerm=True)
    image_id: str = image.id
    return image_id


def _pull(engine: Any, pushed: PushedImage, auth: dict[str, str] | None) -> dict[str, int]:
    """Pull by digest on one node; how many layers were downloaded and how many were there."""
    repository, _, digest = pushed.reference.partition("@")
    counts = {"Pull complete": 0, "Already exists": 0}
    for line in engine.api.pull(repository, tag=digest, stream=True, decode=True, auth_config=auth):
        assert "error" not in line, line
        if line.get("status") in counts:
            counts[line["status"]] += 1
    return counts


def test_workers_pull_by_digest_only_the_layers_they_lack(
    swarm: Cluster, node_registry: NodeRegistry
) -> None:
    server, host = node_registry.server, node_registry.host
    auth = server.auth_config
    assert auth is not None  # beyond loopback: credentials on by default
    repo = repository_for(secrets.token_hex(8), "web")
    v1 = _build(host, BUSYBOX, "v1.txt", secrets.token_bytes(64 * 1024))
    node_registry.images.append(v1)
    v2 = _build(host, v1, "v2.txt", secrets.token_bytes(64 * 1024))
    node_registry.images.append(v2)
    first = push_image(host, server.address, v1, repo, auth_config=auth)
    second = push_image(host, server.address, v2, repo, auth_config=auth)
    assert (second.layers_pushed, second.layers_existing) == (1, 2)

    # Without the credentials a node gets nothing.
    worker = swarm.client("w1")
    repository, _, digest = first.reference.partition("@")
    with pytest.raises(docker.errors.APIError, match=r"no basic auth credentials|unauthorized"):
        worker.api.pull(repository, tag=digest)

    pulled_v1 = _pull(worker, first, auth)
    pulled_v2 = _pull(worker, second, auth)
    assert worker.api.inspect_image(second.reference)["Id"] == v2  # same bytes on the node
    assert pulled_v1["Pull complete"] == 2
    assert pulled_v2 == {"Pull complete": 1, "Already exists": 2}


def test_swarm_runs_a_service_pinned_to_the_pushed_digest(
    swarm: Cluster, node_registry: NodeRegistry
) -> None:
    server, host = node_registry.server, node_registry.host
    repo = repository_for(secrets.token_hex(8), "web")
    image_id = _build(host, BUSYBOX, "www.txt", b"pinned\n")
    node_registry.images.append(image_id)
    pushed = push_image(host, server.address, image_id, repo, auth_config=server.auth_config)

    api = swarm.manager_client().api
    # docker-py's create_service sends the registry credentials its client holds (from a login,
    # kept in memory, never written to a config file); Swarm hands them to the nodes.
    auth = server.auth_config
    assert auth is not None
    api.login(auth["username"], auth["password"], registry=server.address, reauth=True)
    spec = docker.types.TaskTemplate(
        container_spec=docker.types.ContainerSpec(pushed.reference, ["sleep", "600"]),
        restart_policy=docker.types.RestartPolicy(condition="none"),
    )
    service = api.create_service(
        spec,
        name=f"regtest-{secrets.token_hex(3)}",
        mode=docker.types.ServiceMode("replicated", replicas=2),
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
    )

    def running() -> list[dict[str, Any]]:
        tasks = api.tasks(filters={"service": service["ID"], "desired-state": "running"})
        return [t for t in tasks if t["Status"]["State"] == "running"]

    try:
        wait_until(lambda: len(running()) == 2, timeout=60)
        for task in running():
            assert task["Spec"]["ContainerSpec"]["Image"] == pushed.reference
    finally:
        # Gone before the fixture removes the pulled images, so none stays behind in use.
        api.remove_service(service["ID"])
        label = f"com.docker.swarm.service.id={service['ID']}"
        wait_until(
            lambda: (
                not any(
                    swarm.client(s).api.containers(all=True, filters={"label": label})
                    for s in swarm.nodes
                )
            ),
            timeout=60,
        )
