"""Routes from observed instances: pure. Whatever the backend, an instance is routed at the
address and port it reports (loopback and a published port locally, a node's address and a
host-mode port on Swarm), and only while it runs, passes its health check, and is not about
to go."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from berth.domain.traffic import TrafficControls, routable
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
    controls: TrafficControls | None = None  # None or empty: no traffic controls
    max_body_mb: int | None = None  # request bodies at the ingress, MiB; None: nginx's default


def plan_routes(
    apps: Sequence[RoutedApp],
    instances: Iterable[WorkloadInstance],
    healthy: Callable[[str], bool],
    leaving: frozenset[str] = frozenset(),
) -> tuple[tuple[Route, ...], frozenset[str]]:
    """The routes, and the ids of the instances they send traffic to."""
    # Only an instance that runs and can be reached may be routed: the others are not kept.
    by_app: dict[str, list[tuple[WorkloadInstance, str, int]]] = {}
    for inst in instances:
        address, port = inst.address, inst.port
        if inst.state == "running" and address and port:
            by_app.setdefault(inst.app_id, []).append((inst, address, port))
    routes: list[Route] = []
    routed: set[str] = set()
    for app in apps:
        found: set[tuple[str, int]] = set()
        for inst, address, port in by_app.get(app.app_id, ()):
            if inst.revision in app.revisions and inst.id not in leaving and healthy(inst.id):
                found.add((address, port))
                routed.add(inst.id)
        state: RouteState = (
            "suspended" if app.suspended else ("serving" if found else "no_instances")
        )
        # Sorted by (host, port): the same upstreams always render the same config.
        # A redirect from or to a domain that does not route (yet) is left out until it does.
        controls = routable(app.controls, app.hostnames) if app.controls is not None else None
        if controls is not None and controls.empty:
            controls = None
        routes.append(
            _route(
                app.app_id,
                app.name,
                app.tenant_id,
                app.hostnames,
                tuple(sorted(found)),
                state,
                controls,
                app.max_body_mb,
            )
        )
    return tuple(routes), frozenset(routed)


# Routes are immutable values: the same facts give the same Route object, so a plan that
# changed a few of 10,000 routes builds only those, and comparing it with the last plan
# finds the others identical at once.
@functools.lru_cache(maxsize=1 << 15)
def _route(
    app_id: str,
    name: str,
    tenant_id: str,
    hostnames: tuple[str, ...],
    servers: tuple[tuple[str, int], ...],
    state: RouteState,
    controls: TrafficControls | None = None,
    max_body_mb: int | None = None,
) -> Route:
    upstreams = tuple(Upstream(host, port) for host, port in servers)
    return Route(app_id, name, tenant_id, hostnames, upstreams, state, controls, max_body_mb)
