"""The route changes of a churn run and how each one's effect is recognised (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.edge.configs import backend_tag

KINDS = ("add_upstream", "remove_upstream", "add_domain", "remove_domain")


@dataclass(frozen=True)
class Change:
    kind: str
    domain: str
    ports: tuple[int, ...]


def domain_name(i: int) -> str:
    return f"d{i}.edge.test"


def initial_routes(domains: int, backend_ports: list[int]) -> dict[str, list[int]]:
    """``domains`` domains, one upstream each, spread over the backends."""
    return {domain_name(i): [backend_ports[i % len(backend_ports)]] for i in range(domains)}


def change_plan(
    count: int, base_domains: list[str], extra_port: int, backend_ports: list[int]
) -> list[Change]:
    """``count`` changes in cycles of four: an upstream added to a base domain and removed
    again, a new domain added and removed again. The base domains keep their own upstream all
    along, so the clients on them always have a live route."""
    plan = []
    for n in range(count):
        cycle, step = divmod(n, 4)
        kind = KINDS[step]
        if kind in ("add_upstream", "remove_upstream"):
            plan.append(Change(kind, base_domains[cycle % len(base_domains)], (extra_port,)))
        else:
            port = backend_ports[cycle % len(backend_ports)]
            plan.append(Change(kind, f"new{cycle}.churn.test", (port,)))
    return plan


@dataclass
class EffectWatch:
    """Feeds on probe answers (fresh connections) until the change is seen to have effect.

    An added upstream or domain: its backend answered. A removed upstream: ``settle``
    answers in a row came from other backends. A removed domain: a 404.
    """

    change: Change
    settle: int = 8
    streak: int = 0

    def seen(self, status: int | None, body: bytes) -> bool:
        tag = backend_tag(self.change.ports[0]).encode()
        answered_by = body.strip()
        kind = self.change.kind
        if kind in ("add_upstream", "add_domain"):
            return status == 200 and answered_by == tag
        if kind == "remove_domain":
            return status == 404
        if status == 200 and answered_by != tag:
            self.streak += 1
        else:
            self.streak = 0
        return self.streak >= self.settle
