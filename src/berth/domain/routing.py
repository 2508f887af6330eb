"""Routes from observed instances: pure. Whatever the backend, an instance is routed at the
address and port it reports (loopback and a published port locally, a node's address and a
host-mode port on Swarm), and only while it runs, passes its health check, and is not about
to go."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from berth.proxy.model import Route, RouteState, Upstream
from berth.workloads.protocol import WorkloadInstance


@dataclass(frozen=True)
class RoutedApp:
    """What routing needs of one app."""

    app_id: str
    name: str
    tenant_id: str
    hostnames: tuple[str, ...]
    revisions: frozenset[str]  # the revisions that may serve: target, and serving mid-rollout
    suspended: bool = False


def plan_routes(
    apps: Sequence[RoutedApp],
    instances: Iterable[WorkloadInstance],
    healthy: Callable[[str], bool],
    leaving: frozenset[str] = frozenset(),
) -> tuple[tuple[Route, ...], frozenset[str]]:
    """The routes, and the ids of the instances they send traffic to."""
    by_app: dict[str, list[WorkloadInstance]] = {}
    for inst in instances:
        by_app.setdefault(inst.app_id, []).append(inst)
    routes: list[Route] = []
    routed: set[str] = set()
    for app in apps:
        upstreams: set[Upstream] = set()
        for inst in by_app.get(app.app_id, []):
            if (
                inst.state == "running"
                and inst.revision in app.revisions
                and inst.id not in leaving
                and inst.address
                and inst.port
                and healthy(inst.id)
            ):
                upstreams.add(Upstream(inst.address, inst.port))
                routed.add(inst.id)
        state: RouteState = (
            "suspended" if app.suspended else ("serving" if upstreams else "no_instances")
        )
        routes.append(
            Route(
                app.app_id,
                app.name,
                app.tenant_id,
                app.hostnames,
                tuple(sorted(upstreams, key=lambda u: (u.host, u.port))),
                state,
            )
        )
    return tuple(routes), frozenset(routed)
