"""Draining a node start-first: pure.

Swarm's own drain stops a node's tasks first and starts their replacements after, so requests
to them fail and a group can run short. Berth drains in two steps instead, every pass deciding
again from what it sees:

1. **surge**: the node is cordoned (nothing new lands on it) and each group with instances on
   it runs that many extra replicas elsewhere, until the group has its full count of instances
   that are ready (running, healthy, routed) on other nodes;
2. **evict**: once every group on the node is covered, the node's instances leave the ingress
   (the reload goes live first), the node is set to Swarm's ``drain`` availability, and the
   groups go back to their counts in the same pass: Swarm stops the node's tasks and removes
   the replacements it would start for them (they are not running yet), not the ready ones.

A drain past its deadline stops surging and says which groups could not be covered, and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from berth.workloads.protocol import WorkloadInstance

ON_NODE_STATES = frozenset({"starting", "running"})


@dataclass(frozen=True)
class DrainRequest:
    node: str  # the node's name, as instances report it
    deadline: float


@dataclass(frozen=True)
class DrainProgress:
    node: str
    status: str  # "draining" | "evicting" | "drained" | "timed_out"
    message: str


@dataclass(frozen=True)
class DrainPlan:
    replicas: Mapping[str, int] = field(default_factory=dict)  # group key -> replicas to run
    leaving: frozenset[str] = frozenset()  # instances to take out of the ingress now
    evict: tuple[str, ...] = ()  # nodes to hand to Swarm's drain now (after the reload)
    progress: tuple[DrainProgress, ...] = ()


def plan_drains(
    drains: Sequence[DrainRequest],
    replicas: Mapping[str, int],
    instances: Iterable[WorkloadInstance],
    ready: frozenset[str],
    now: float,
) -> DrainPlan:
    """``replicas``: each group's count as the rollout wants it; ``ready``: ids of instances
    that run, pass their checks and are routed."""
    if not drains:
        return DrainPlan(dict(replicas))
    draining = {d.node for d in drains}
    alive = [i for i in instances if i.state in ON_NODE_STATES and i.group in replicas]
    out = dict(replicas)
    leaving: set[str] = set()
    evict: list[str] = []
    progress: list[DrainProgress] = []
    for drain in sorted(drains, key=lambda d: d.node):
        on_node = [i for i in alive if i.node == drain.node]
        if not on_node:
            progress.append(DrainProgress(drain.node, "drained", "no instance left on the node"))
            continue
        by_group: dict[str, int] = {}
        for inst in on_node:
            by_group[inst.group] = by_group.get(inst.group, 0) + 1
        short: list[str] = []
        for group, count in sorted(by_group.items()):
            elsewhere = sum(
                1 for i in alive if i.group == group and i.node not in draining and i.id in ready
            )
            if elsewhere < replicas[group]:
                short.append(f"{group.split('/')[0]}: {elsewhere} of {replicas[group]} ready")
                if now < drain.deadline:
                    out[group] = out.get(group, replicas[group]) + count
        if not short:
            leaving |= {i.id for i in on_node}
            evict.append(drain.node)
            message = f"{len(on_node)} instances replaced elsewhere; stopping them on the node"
            progress.append(DrainProgress(drain.node, "evicting", message))
        elif now >= drain.deadline:
            message = "timed out: not replaced yet (" + "; ".join(short) + ")"
            progress.append(DrainProgress(drain.node, "timed_out", message))
        else:
            message = (
                f"{len(on_node)} instances on the node; starting replacements first ("
                + "; ".join(short)
                + ")"
            )
            progress.append(DrainProgress(drain.node, "draining", message))
    return DrainPlan(out, frozenset(leaving), tuple(evict), tuple(progress))
