"""Build the egress controller of a real server from its settings."""

from __future__ import annotations

import docker
from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.engine_events import EngineEvents
from berth.netpolicy.controller import EgressController
from berth.netpolicy.events import NetworkCreations
from berth.netpolicy.iptables import IptablesFirewall
from berth.netpolicy.observe import DockerNetworks, database_endpoints, tenants_without_internet
from berth.netpolicy.plan import parse_blocked_ranges
from berth.settings import Settings


def build_egress_controller(
    settings: Settings,
    sessions: sessionmaker[Session],
    installation: str,
    events: EngineEvents | None = None,
) -> EgressController:
    """Raises NetPolicyError with a clear message on a bad blocked range or missing iptables."""
    blocked = parse_blocked_ranges(settings.egress_blocked_ranges)
    firewall = IptablesFirewall(installation)
    firewall.check_available()
    # A client of its own: the filter's thread never shares a connection with the builder's.
    client = (
        docker.DockerClient(base_url=settings.docker_url, version="auto")
        if settings.docker_url
        else docker.from_env(version="auto")
    )
    controller = EgressController(
        installation,
        DockerNetworks(client.api, installation),
        lambda: tenants_without_internet(sessions),
        firewall,
        blocked,
        databases=lambda: database_endpoints(sessions),
    )
    # The server's one engine event stream when given; else a stream of its own.
    controller.set_watcher(NetworkCreations(events or client.api, controller.sync))
    return controller
