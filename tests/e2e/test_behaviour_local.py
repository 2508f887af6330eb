"""The behaviour suite (tests/behaviour/scenarios.py) on the local backend: containers on this
machine's engine. tests/cluster/test_behaviour_swarm.py runs the same scenarios on Swarm."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.behaviour.images import behaviour_image
from tests.behaviour.scenarios import SCENARIOS, SERVER_ENV, Target
from tests.harness import BerthServer, docker_client

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]


def _kill_local(row: dict[str, Any]) -> None:
    with contextlib.closing(docker_client()) as client:
        pid = client.api.inspect_container(row["container_id"])["State"]["Pid"]
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def target(real_platform: None, request: pytest.FixtureRequest) -> Iterator[Target]:
    with behaviour_image() as image:
        server = BerthServer(extra_env=SERVER_ENV)
        request.addfinalizer(server.cleanup)
        server.start()
        yield Target(server, image, _kill_local, "local")
        server.cleanup()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_behaviour_on_the_local_backend(target: Target, name: str) -> None:
    scenario: Callable[[Target], None] = SCENARIOS[name]
    scenario(target)
