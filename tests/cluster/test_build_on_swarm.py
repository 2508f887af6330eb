"""Builds reach every node through the platform registry, on the shared cluster.

A real Berth server on the Swarm backend (its engine: the cluster's manager, where builds run)
with its registry on the host's address on the cluster's switch, over TLS with a certificate
this test makes and with credentials (auto: beyond loopback). The engines trust the
certificate through /etc/docker/certs.d/ADDR:PORT/ca.crt (a directory of this test's own
address and port, removed afterwards); no engine's config changes, and the workers get the
credentials only from the services Berth writes (X-Registry-Auth).

`berth deploy APP DIR` of examples/python-app builds on the manager, pushes to
``t-<tenant>/<app>``, and three replicas run on the three workers from the pinned digest,
answering through the ingress; a second deploy of a changed app.py pushes one layer; a
rollback runs the earlier digest again; the GC loop (every 3 s here) deletes the digest no kept
release names, from the registry and from the manager's engine, and keeps the rest.
berth/python:3 is loaded on every node first (a base image must exist on every node), so each
worker pulls only the app's own layer.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from berth.builds.image_policy import LABEL_BUILD_INSTALLATION
from berth.registry.gc import RegistryApi
from berth.registry.server import RegistryServer
from berth.settings import Settings
from tests.cluster.berth_swarm import berth_on_swarm
from tests.cluster.nodes import Cluster
from tests.cluster.tls import free_port_on, self_signed
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]

PYTHON = "berth/python:3"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python-app"
CERTS_D = Path("/etc/docker/certs.d")
PUSHED = re.compile(r"pushed (\S+): (\d+) new layers?, (\d+) already there")


@dataclass
class RegistryOnSwarm:
    server: BerthServer
    cluster: Cluster
    registry: RegistryServer  # the server's registry, seen from outside (its files, its API)

    @property
    def address(self) -> str:
        """ADDR:PORT, the host part of every pinned reference."""
        return self.registry.address

    def holds(self, reference: str) -> bool:
        """Whether the registry still has the manifest of a pinned reference."""
        repository, _, digest = reference.removeprefix(f"{self.address}/").partition("@")
        credentials = self.registry.credentials
        assert credentials is not None
        api = RegistryApi(
            self.registry.url,
            (credentials.username, credentials.password),
            verify=self.registry.verify,
        )
        try:
            return api.manifest_exists(repository, digest)
        finally:
            api.close()

    def services(self, app: str) -> list[dict[str, Any]]:
        labels = [f"berth.installation={self.server.installation}", f"berth.app-name={app}"]
        api = self.cluster.manager_client().api
        return list(api.services(filters={"label": labels}))

    def running_tasks(self, service_id: str) -> list[dict[str, Any]]:
        api = self.cluster.manager_client().api
        tasks = api.tasks(filters={"service": service_id, "desired-state": "running"})
        return [t for t in tasks if t["Status"]["State"] == "running"]

    def only_service_running(self, app: str, image: str, replicas: int) -> list[dict[str, Any]]:
        """Wait until the app has exactly one service, running ``image`` in ``replicas`` tasks;
        those tasks."""

        def settled() -> list[dict[str, Any]] | None:
            services = self.services(app)
            if len(services) != 1:
                return None
            spec_image = services[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            tasks = self.running_tasks(services[0]["ID"])
            return tasks if spec_image == image and len(tasks) == replicas else None

        found: list[dict[str, Any]] = wait_until(settled, 120, f"{app} running {image}")
        return found


def _remove_images(cluster: Cluster, installation: str | None, prefix: str) -> None:
    """Every image this test's registry put on a node, and the builds on the manager, once
    the removed services' containers are gone (an image in use cannot be removed)."""
    if installation:
        label = {"label": f"berth.installation={installation}"}
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: (
                    not any(
                        cluster.client(s).api.containers(all=True, filters=label)
                        for s in cluster.nodes
                    )
                ),
                60,
                "the services' containers gone",
            )
    for short in cluster.nodes:
        try:
            engine = cluster.client(short)
            doomed = []
            for image in engine.api.images():
                names = (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()))
                labels = image.get("Labels") or {}
                ours = installation and labels.get(LABEL_BUILD_INSTALLATION) == installation
                if ours or any(n.startswith(prefix) for n in names):
                    doomed.append(image["Id"])
            for image_id in doomed:
                with contextlib.suppress(docker.errors.NotFound):
                    engine.api.remove_image(image_id, force=True)
        except docker.errors.DockerException as exc:
            print(f"build-on-swarm cleanup on {short}: {exc}", file=sys.stderr)


@pytest.fixture
def on_swarm(swarm: Cluster, tmp_path: Path) -> Iterator[RegistryOnSwarm]:
    swarm.load_images([PYTHON])
    address = swarm.host_address
    port = free_port_on(address)
    cert, key = self_signed(tmp_path, address)
    trust = CERTS_D / f"{address}:{port}"
    certs_d_existed = CERTS_D.exists()
    env = {
        "BERTH_REGISTRY_LISTEN": f"{address}:{port}",
        "BERTH_REGISTRY_TLS_CERT": str(cert),
        "BERTH_REGISTRY_TLS_KEY": str(key),
        # GC every few seconds; a push stays untouched for 20 s (its release is written well
        # within that); two releases kept per app, so a third deploy drops the oldest.
        "BERTH_REGISTRY_GC_INTERVAL_SECONDS": "3",
        "BERTH_REGISTRY_GC_GRACE_SECONDS": "20",
        "BERTH_RELEASE_HISTORY": "2",
    }
    installation: str | None = None
    try:
        trust.mkdir(parents=True, exist_ok=False)
        shutil.copy(cert, trust / "ca.crt")
        with berth_on_swarm(swarm, extra_env=env, deploy_timeout=180.0) as server:
            installation = server.installation
            registry = RegistryServer(
                Settings(
                    home=server.home,
                    registry_listen=env["BERTH_REGISTRY_LISTEN"],
                    registry_tls_cert=str(cert),
                    registry_tls_key=str(key),
                )
            )
            try:
                yield RegistryOnSwarm(server, swarm, registry)
            finally:
                registry.stop()  # it outlives the server by design (it keeps serving pulls)
    finally:
        _remove_images(swarm, installation, f"{address}:{port}/")
        shutil.rmtree(trust, ignore_errors=True)
        if not certs_d_existed:
            with contextlib.suppress(OSError):
                CERTS_D.rmdir()  # only if empty: another test's trust stays


def _deploy(server: BerthServer, app: str, directory: Path) -> tuple[str, int, int]:
    """``berth deploy APP DIR`` as a user runs it; (pinned reference, layers pushed, layers the
    registry had), from the build's own log."""
    started = time.monotonic()
    result = server.cli_ok("deploy", app, str(directory), timeout=400)
    found = PUSHED.search(result.stderr)
    assert found is not None, result.stderr
    assert "Deployed" in result.stdout, result.stdout
    print(f"deploy {directory.name}: {found[0]}; whole deploy {time.monotonic() - started:.1f}s")
    return found[1], int(found[2]), int(found[3])


def _app_copy(tmp_path: Path, name: str, greeting: str) -> Path:
    directory = tmp_path / name
    shutil.copytree(EXAMPLE, directory)
    source = directory / "app.py"
    text = source.read_text()
    assert 'DEFAULT_GREETING = "hello from berth"' in text
    source.write_text(text.replace("hello from berth", greeting))
    return directory


def test_a_build_runs_on_every_worker_from_its_pinned_digest(
    on_swarm: RegistryOnSwarm, tmp_path: Path
) -> None:
    server, cluster = on_swarm.server, on_swarm.cluster
    app = f"reg-{int(time.time() * 1000) % 100000:05d}"
    server.create_app(app, "--memory", "64M", "--cpus", "0.25", "--health-path", "/healthz")
    server.cli_ok("scale", app, "3")
    pinned = re.compile(rf"^{re.escape(on_swarm.address)}/t-[0-9a-f]+/{app}@sha256:[0-9a-f]{{64}}$")

    # v1: built on the manager, pushed whole (the registry is empty), run on the 3 workers.
    first, pushed1, existing1 = _deploy(server, app, _app_copy(tmp_path, "v1", "hello v1"))
    assert pinned.match(first), first
    assert pushed1 >= 2 and existing1 == 0  # the base image's layers and the app's
    tasks = on_swarm.only_service_running(app, first, 3)
    workers = {s for s in cluster.nodes if s not in cluster.managers}
    where = cluster.short_of_node_id()
    assert sorted(where[t["NodeID"]] for t in tasks) == sorted(workers)  # one on each worker
    for task in tasks:
        assert task["Spec"]["ContainerSpec"]["Image"] == first
    wait_until(lambda: (server.app_body(app) or "").startswith("hello v1"), 60, "v1 answers")
    releases = server.cli_json("releases", app)
    assert any(r["image"].startswith(f"berth-app/{app}:") for r in releases)

    # v2: only app.py changed, so one layer is pushed; the workers pull only that layer.
    second, pushed2, existing2 = _deploy(server, app, _app_copy(tmp_path, "v2", "hello v2"))
    assert pinned.match(second) and second != first
    assert (pushed2, existing2) == (1, pushed1 - 1)
    on_swarm.only_service_running(app, second, 3)
    wait_until(lambda: (server.app_body(app) or "").startswith("hello v2"), 60, "v2 answers")
    for short in [s for s in cluster.nodes if s not in cluster.managers]:
        # The same bytes on every worker: the image pulled by digest (no other name).
        engine = cluster.client(short)
        assert second in engine.api.inspect_image(second)["RepoDigests"]

    # Rollback: the earlier digest runs again, nothing rebuilt or pushed.
    back = server.cli_json("rollback", app, timeout=400)
    assert back["deployment"]["status"] == "succeeded", back
    on_swarm.only_service_running(app, first, 3)
    wait_until(lambda: (server.app_body(app) or "").startswith("hello v1"), 60, "rolled back")

    # GC: a fourth release leaves v3 (the rollback, pinned to v1's digest) and v4 in the
    # history; v2's digest is no release's any more and goes, from the registry and from the
    # manager's engine (where it was built); v1's stays: the rollback runs it.
    v2_image = next(r["image_id"] for r in server.cli_json("releases", app) if r["version"] == 2)
    manager = cluster.client(cluster.manager)
    assert manager.api.inspect_image(v2_image)
    # A release that an instance row still names is never pruned: the rows of v2's removed
    # tasks go once Swarm's reports of them end.
    wait_until(
        lambda: {r["release_version"] for r in server.ps(app)} == {3}, 120, "only v3 instances"
    )
    fourth, _, _ = _deploy(server, app, _app_copy(tmp_path, "v4", "hello v4"))
    on_swarm.only_service_running(app, fourth, 3)
    assert [r["version"] for r in server.cli_json("releases", app)] == [4, 3]
    wait_until(lambda: not on_swarm.holds(second), 90, "v2's manifest collected")
    assert on_swarm.holds(first) and on_swarm.holds(fourth)

    def v2_gone_from_the_manager() -> bool:
        try:
            manager.api.inspect_image(v2_image)
        except docker.errors.ImageNotFound:
            return True
        return False

    wait_until(v2_gone_from_the_manager, 60, "v2's build removed from the manager's engine")
    # What runs still pulls and answers: the kept digest is whole after the collection.
    wait_until(lambda: (server.app_body(app) or "").startswith("hello v4"), 60, "v4 answers")
