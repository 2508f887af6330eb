"""Berth's bridge networks take their subnets from Berth's own pool, one free /24 each."""

from __future__ import annotations

import contextlib
import ipaddress
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.protocol import LABEL_TENANT

POOL = "10.231.0.0/16"


@pytest.fixture
def runtime() -> Iterator[DockerRuntime]:
    installation = f"net{uuid.uuid4().hex[:8]}"
    made = DockerRuntime(installation, network_pool=POOL, network_prefix=24)
    yield made
    for name in made.list_networks():
        with contextlib.suppress(Exception):
            made.remove_network(name)


def subnet_of(name: str) -> ipaddress.IPv4Network:
    client = docker.from_env()
    try:
        config = client.api.inspect_network(name)["IPAM"]["Config"][0]
        return ipaddress.IPv4Network(config["Subnet"])
    finally:
        client.close()


def test_each_network_gets_its_own_subnet_from_the_pool(runtime: DockerRuntime) -> None:
    names = [f"berth-t-{uuid.uuid4().hex[:16]}" for _ in range(3)]
    for name in names:
        runtime.ensure_network(name, {LABEL_TENANT: name[-16:]})
    subnets = [subnet_of(name) for name in names]
    assert all(s.subnet_of(ipaddress.IPv4Network(POOL)) and s.prefixlen == 24 for s in subnets)
    assert len(set(subnets)) == 3
    # Ensuring again keeps the network (and its subnet) as it is.
    runtime.ensure_network(names[0], {LABEL_TENANT: names[0][-16:]})
    assert subnet_of(names[0]) == subnets[0]


def test_a_subnet_held_by_a_foreign_network_is_skipped(runtime: DockerRuntime) -> None:
    client = docker.from_env()
    foreign = f"not-berth-{uuid.uuid4().hex[:8]}"
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.231.0.0/24")])
    try:
        with contextlib.suppress(docker.errors.APIError):
            client.api.create_network(foreign, driver="bridge", ipam=ipam)
        name = f"berth-t-{uuid.uuid4().hex[:16]}"
        runtime.ensure_network(name, {LABEL_TENANT: name[-16:]})
        assert subnet_of(name) != ipaddress.IPv4Network("10.231.0.0/24")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_network(foreign)
        client.close()
