"""The behaviour suite (tests/behaviour/scenarios.py) on the Swarm backend: a real Berth server
whose engine is the shared cluster's manager, apps as services on three workers, the ingress
on this machine reaching the tasks at their nodes' addresses. The same scenario functions run
on the local backend in tests/e2e/test_behaviour_local.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.behaviour.images import behaviour_image
from tests.behaviour.scenarios import SCENARIOS, Target
from tests.cluster.berth_swarm import berth_on_swarm, kill_task
from tests.cluster.nodes import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def target(cluster: Cluster) -> Iterator[Target]:
    cluster.make_whole()
    with behaviour_image() as image:
        cluster.load_images([image])
        with berth_on_swarm(cluster) as server:
            yield Target(server, image, kill_task(cluster), "swarm")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_behaviour_on_the_swarm_backend(target: Target, name: str) -> None:
    SCENARIOS[name](target)
