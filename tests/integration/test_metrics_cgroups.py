"""Cgroup readings of real containers on the real engine: a container that fills a known
amount of memory reads within tolerance of it (and of what the engine's own stats say), one
that burns CPU shows it, and the engine collector folds them into the store's buckets with
the reconciler's restart count, asking the engine once per container."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from berth.metrics import cgroups
from berth.metrics import store as mstore
from berth.metrics.engine_collector import CgroupSampler, EngineCollector, docker_pid_of
from berth.platform import open_store
from berth.settings import Settings
from berth.store.tables import App, Instance, Tenant
from tests.harness import docker_client, wait_until

pytestmark = pytest.mark.docker
IMAGE = "berth/busybox:latest"
MIB = 1 << 20
FILL_MIB = 48
FILL = (
    f"dd if=/dev/zero of=/dev/shm/fill bs=1M count={FILL_MIB} 2>/dev/null; echo filled; sleep 300"
)
BURN = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo burnt; sleep 300"


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    c = docker_client()
    yield c
    c.close()


@pytest.fixture
def containers(client: docker.DockerClient) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for container in made:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def run(client: docker.DockerClient, made: list[Any], script: str, ready: str) -> Any:
    container = client.containers.run(
        IMAGE, ["sh", "-c", script], detach=True, name=f"berth-test-metrics-{secrets.token_hex(4)}",
        mem_limit="256m", shm_size="128m",
    )  # fmt: skip
    made.append(container)
    wait_until(lambda: ready in container.logs().decode(), timeout=60, what=f"{ready} logged")
    return container


def files_of(client: docker.DockerClient, container: Any) -> cgroups.CgroupFiles:
    pid = docker_pid_of(client.api)(container.id)
    assert pid is not None
    files = cgroups.files_of_pid(pid)
    assert files is not None
    return files


def test_memory_of_a_container_that_fills_a_known_amount(
    client: docker.DockerClient, containers: list[Any]
) -> None:
    container = run(client, containers, FILL, "filled")
    reading = cgroups.read(files_of(client, container))
    assert reading is not None
    # 48 MiB of shared memory, plus the shell and sleep (well under 4 MiB).
    assert FILL_MIB * MIB <= reading.memory_bytes <= (FILL_MIB + 4) * MIB, reading
    stats = client.api.stats(container.id, stream=False)
    memory = stats["memory_stats"]
    engine_says = memory["usage"] - memory["stats"].get("total_inactive_file", 0)
    assert abs(reading.memory_bytes - engine_says) <= 2 * MIB, (reading, engine_says)


def test_cpu_of_a_container_that_burns_some(
    client: docker.DockerClient, containers: list[Any]
) -> None:
    idle = run(client, containers, "echo idle; sleep 300", "idle")
    busy = run(client, containers, BURN, "burnt")
    before = client.api.stats(busy.id, stream=False)["cpu_stats"]["cpu_usage"]["total_usage"]
    busy_reading = cgroups.read(files_of(client, busy))
    idle_reading = cgroups.read(files_of(client, idle))
    assert busy_reading is not None and idle_reading is not None
    # The loop has ended: the counter stands still, and both readers see the same figure.
    assert abs(busy_reading.cpu_usec - before // 1000) <= 5_000
    assert busy_reading.cpu_usec > 50_000 > idle_reading.cpu_usec


def test_the_collector_folds_readings_into_the_store(
    client: docker.DockerClient, containers: list[Any], tmp_path: Path
) -> None:
    container = run(client, containers, FILL, "filled")
    settings = Settings(home=tmp_path / "home", database_url="", metrics_bucket_seconds=10)
    engine, sessions, _ = open_store(settings)
    try:
        tenant_id, app_id, instance_id = (secrets.token_hex(8) for _ in range(3))
        with sessions.begin() as session:
            session.add(Tenant(id=tenant_id, name=f"t-{tenant_id}"))
            session.flush()
            session.add(App(id=app_id, tenant_id=tenant_id, name="web", memory_mb=256,
                            cpus_milli=100, port=80))  # fmt: skip
            session.add(Instance(id=instance_id, app_id=app_id, tenant_id=tenant_id,
                                 release_id="r", container_id=container.id, state="running",
                                 restarts=3))  # fmt: skip
            # Another node's container: the engine here does not know it.
            elsewhere = Instance(
                id=secrets.token_hex(8), app_id=app_id, tenant_id=tenant_id, release_id="r",
                container_id="f" * 64, state="running",
            )  # fmt: skip
            session.add(elsewhere)
        sampler = CgroupSampler(docker_pid_of(client.api))
        collector = EngineCollector(sessions, "server-a", sampler, bucket_seconds=10)
        assert collector.run_once() == 1
        time.sleep(0.2)
        assert collector.run_once() == 1
        assert sampler.lookups == 2  # once each: ours and the unknown one
        with sessions() as session:
            (row,) = mstore.instance_rows(session, mstore.Scope(app_id=app_id), 0, 2**40)
        assert row.instance_id == instance_id and row.restarts == 3
        assert FILL_MIB * MIB <= row.memory_bytes <= (FILL_MIB + 4) * MIB
        assert row.memory_max_bytes >= row.memory_bytes
    finally:
        engine.dispose()
