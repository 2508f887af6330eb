"""The fake Swarm passes the contract the real manager passes (tests/cluster/test_nodes_ops.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.cluster.fake_swarm import FakeSwarm
from tests.unit.cluster.swarm_contract import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_fake_swarm_contract(check: Callable[[Any, str, str], None]) -> None:
    swarm = FakeSwarm().manager()
    worker = swarm.add_node("fake-w1")
    swarm.add_node("fake-w2")
    check(swarm, worker, swarm.node_id)
