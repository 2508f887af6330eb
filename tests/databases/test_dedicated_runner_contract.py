"""The ``DedicatedRunner`` contract, against the unit tests' fake and against
``LocalDedicatedRunner`` on the real engine (a dedicated Redis of the launch image): a run
makes the server and its volume, a second of the same name is refused, a run whose init step
fails leaves nothing, remove takes the container and the volume and may be repeated."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.databases import dedicated_servers as ds
from berth.databases.dedicated import (
    LABEL_DATABASE_SERVER,
    DedicatedRunner,
    DedicatedSpec,
    InitStep,
    volume_name,
)
from berth.databases.dedicated_local import LocalDedicatedRunner
from berth.databases.errors import DatabaseExists, DatabaseServerError
from berth.databases.provider import Account
from berth.images.db_server_images import ensure_db_server_image
from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.protocol import LABEL_INSTALLATION
from berth.workloads.local import tenant_network
from tests.databases.dedicated_fakes import FakeDedicatedRunner

pytestmark = [pytest.mark.docker]


@pytest.fixture(params=["fake", "real"])
def runner(request: pytest.FixtureRequest) -> Iterator[DedicatedRunner]:
    if request.param == "fake":
        yield FakeDedicatedRunner()
        return
    installation = f"k1c{secrets.token_hex(4)}"
    runtime = DockerRuntime(installation)
    real = LocalDedicatedRunner(runtime)
    client = docker.from_env()
    try:
        yield real
    finally:
        label = f"{LABEL_INSTALLATION}={installation}"
        for found in client.api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(found["Id"], force=True, v=True)
        for volume in client.api.volumes(filters={"label": label}).get("Volumes") or []:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_volume(volume["Name"], force=True)
        for name in runtime.list_networks():
            with contextlib.suppress(Exception):
                runtime.remove_network(name)
        client.close()


def _spec(runner: DedicatedRunner) -> DedicatedSpec:
    account = Account(secrets.token_hex(8), secrets.token_hex(8), "cache", "redis", 5, 16)
    network = tenant_network(account.tenant_id)
    gateway = runner.network_gateway(network, account.tenant_id)
    image = "berth/db-redis:fake"
    if isinstance(runner, LocalDedicatedRunner):
        cache = Path(os.environ.get("BERTH_CACHE_DIR", "/var/cache/berth"))
        image = ensure_db_server_image(runner.client, cache, "redis").tag
    return ds.spec_for(account, image, network, secrets.token_hex(16), gateway)


def test_run_find_remove(runner: DedicatedRunner) -> None:
    spec = _spec(runner)
    running = runner.run(spec)
    assert running.name == spec.name and running.address
    assert runner.find(spec.name) == running
    assert spec.name in runner.names() and not runner.exited(spec.name)
    assert runner.created_at(spec.name) is not None
    with pytest.raises(DatabaseExists):
        runner.run(spec)
    runner.remove(spec.name)
    assert runner.find(spec.name) is None and spec.name not in runner.names()
    assert runner.created_at(spec.name) is None and runner.exited(spec.name)
    runner.remove(spec.name)  # a missing one is not an error


def test_a_run_whose_init_step_fails_leaves_nothing(runner: DedicatedRunner) -> None:
    spec = replace(_spec(runner), init=InitStep(entrypoint=("/bin/false",)))
    if isinstance(runner, FakeDedicatedRunner):
        runner.fail_at = "init"
    with pytest.raises(DatabaseServerError):
        runner.run(spec)
    assert spec.name not in runner.names() and runner.find(spec.name) is None
    assert runner.created_at(spec.name) is None


def test_names_are_checked(runner: DedicatedRunner) -> None:
    for bad in ("postgres", "berth-db-../x", "berth-db-" + "0" * 23):
        with pytest.raises(ValueError):
            runner.remove(bad)
        with pytest.raises(ValueError):
            runner.created_at(bad)


def test_a_volume_alone_is_a_server_to_sweep(runner: DedicatedRunner) -> None:
    """What a create cut short between its volume and its container leaves: listed, dated,
    removed."""
    name = "berth-db-" + secrets.token_hex(12)
    if isinstance(runner, LocalDedicatedRunner):
        labels = {LABEL_INSTALLATION: runner.installation, LABEL_DATABASE_SERVER: "postgres"}
        runner.client.api.create_volume(name=volume_name(name), labels=labels)
    else:
        assert isinstance(runner, FakeDedicatedRunner)
        runner.volumes[volume_name(name)] = time.time()
    assert name in runner.names() and runner.find(name) is None
    created = runner.created_at(name)
    assert created is not None and abs(created - time.time()) < 600
    runner.remove(name)
    assert name not in runner.names() and runner.created_at(name) is None
