"""Admission control on one node's memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from berth.domain.admission import NodeMemory, Refusal, admit

NODE = NodeMemory("local", total_mb=23552, reserve_mb=1024)  # 22528 MiB allocatable


def test_an_instance_that_fits_is_admitted() -> None:
    assert admit(NODE, committed_mb=0, request_mb=256) is None
    assert admit(NODE, committed_mb=22528 - 512, request_mb=512) is None  # exactly full


def test_an_instance_that_does_not_fit_is_refused_with_the_figures() -> None:
    refusal = admit(NODE, committed_mb=16408, request_mb=16384)

    assert refusal == Refusal("local", 16384, 6120, 22528)
    assert refusal.reason == (
        "insufficient memory on node local: needs 16384 MiB, 6120 MiB free of 22528 MiB"
    )


def test_a_reserve_larger_than_the_node_leaves_nothing() -> None:
    tiny = NodeMemory("n1", total_mb=512, reserve_mb=1024)
    refusal = admit(tiny, committed_mb=0, request_mb=1)
    assert refusal is not None and refusal.free_mb == 0 and refusal.allocatable_mb == 0


def test_overcommitted_nodes_report_no_free_memory_rather_than_negative() -> None:
    refusal = admit(NODE, committed_mb=30000, request_mb=1)
    assert refusal is not None and refusal.free_mb == 0


@given(
    total=st.integers(0, 1 << 20),
    reserve=st.integers(0, 1 << 16),
    committed=st.integers(0, 1 << 20),
    request=st.integers(1, 1 << 18),
)
def test_admitted_means_the_sum_stays_within_the_allocatable_memory(
    total: int, reserve: int, committed: int, request: int
) -> None:
    node = NodeMemory("n", total, reserve)
    admitted = admit(node, committed, request) is None
    assert admitted == (committed + request <= node.allocatable_mb)
