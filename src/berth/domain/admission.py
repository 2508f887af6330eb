"""Admission control on one node: does one more instance fit the node's memory?

Pure: the reconciler feeds it the node's memory (the engine's MemTotal), the memory of the
instances running or starting there, and the request. Memory is the only resource that cannot be
overcommitted safely: CPU is shared by weight, but a host out of memory kills processes at random
(Berth's own included). ``reserve_mb`` stays free for the host: the OS, Docker, nginx, Berth.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class NodeMemory:
    node: str
    total_mb: int  # what the kernel reports (MemTotal)
    reserve_mb: int  # kept free for the host

    @property
    def allocatable_mb(self) -> int:
        return max(0, self.total_mb - self.reserve_mb)


@dataclass(frozen=True)
class Refusal:
    node: str
    needs_mb: int
    free_mb: int
    allocatable_mb: int

    @property
    def reason(self) -> str:
        """What `berth ps` shows on the pending instance."""
        return (
            f"insufficient memory on node {self.node}: needs {self.needs_mb} MiB, "
            f"{self.free_mb} MiB free of {self.allocatable_mb} MiB"
        )


def admit(node: NodeMemory, committed_mb: int, request_mb: int) -> Refusal | None:
    """None when an instance of ``request_mb`` fits next to ``committed_mb`` (the limits of the
    instances running or starting on the node); otherwise why not."""
    free = max(0, node.allocatable_mb - committed_mb)
    if request_mb <= free:
        return None
    return Refusal(node.node, request_mb, free, node.allocatable_mb)
