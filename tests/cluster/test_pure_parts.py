"""The harness's pure decisions: which /24 it takes, which names are whose, which run is alive."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from tests.cluster import nodes
from tests.cluster.nodes import NODE_NETWORKS, HarnessError, pick_free_subnet


def test_the_subnet_taken_overlaps_nothing_the_host_has() -> None:
    subnets = list(NODE_NETWORKS.subnets(new_prefix=24))
    free = subnets[77]
    used = [s for s in subnets if s != free] + [ipaddress.IPv4Network("192.0.2.0/24")]
    assert pick_free_subnet(used) == free


def test_a_host_route_covering_the_whole_range_leaves_no_subnet() -> None:
    with pytest.raises(HarnessError, match="in use"):
        pick_free_subnet([ipaddress.IPv4Network("10.0.0.0/8")])


@pytest.mark.parametrize(
    ("name", "run_id", "ours"),
    [
        ("bt1a2b3-w1", "bt1a2b3", True),
        ("bt1a2b3", "bt1a2b3", True),
        ("bt1a2b3-w1", None, True),
        ("bt1a2b3-w1", "bt1a2b4", False),
        ("bt1a2b3x-w1", None, False),
        ("btrfs", None, False),
        ("docker", None, False),
    ],
)
def test_names_belong_to_a_run_by_their_prefix(name: str, run_id: str | None, ours: bool) -> None:
    assert nodes._of_run(name, run_id) is ours


def test_a_run_is_alive_only_while_its_owner_is_the_same_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "STATE_ROOT", tmp_path)
    nodes.write_owner(tmp_path / "bt00001")
    assert nodes.run_alive("bt00001")
    pid, _ = (tmp_path / "bt00001" / "owner").read_text().split()
    # Same pid, another start time: the pid was reused by another process.
    (tmp_path / "bt00001" / "owner").write_text(f"{pid} 1\n")
    assert not nodes.run_alive("bt00001")
    assert not nodes.run_alive("bt00002")  # no owner file at all
    assert int(pid) == os.getpid()
