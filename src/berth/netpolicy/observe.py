"""What the egress rules are made from: the engine's managed networks and the tenants' plans."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.netpolicy.plan import (
    BridgeNetwork,
    DatabaseEndpoint,
    NetPolicyError,
    valid_interface,
    valid_subnet,
)
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_MANAGED, LABEL_TENANT
from berth.store.tables import DbServer, ManagedDatabase, PlanRow, Tenant

log = logging.getLogger(__name__)

LABEL_PURPOSE = "berth.purpose"  # "build" on build networks (berth-b-*); absent on app networks
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


def bridge_of(attrs: Mapping[str, Any]) -> BridgeNetwork:
    """A Docker network's bridge as the planner needs it; raises NetPolicyError if unusable.

    The interface is the network's ``com.docker.network.bridge.name`` option when set, else the
    name dockerd gives it: ``br-`` and the first 12 characters of the network id.
    """
    if attrs.get("Driver") != "bridge":
        raise NetPolicyError(f"network {attrs.get('Name')!r} is not a bridge network")
    options = attrs.get("Options") or {}
    network_id = str(attrs.get("Id") or "")
    interface = str(options.get(BRIDGE_NAME_OPTION) or f"br-{network_id[:12]}")
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    subnets = [str(c["Subnet"]) for c in configs if c.get("Subnet") and ":" not in c["Subnet"]]
    if len(subnets) > 1:
        raise NetPolicyError(f"network {attrs.get('Name')!r} has more than one IPv4 subnet")
    labels = attrs.get("Labels") or {}
    return BridgeNetwork(
        interface=valid_interface(interface),
        subnet=valid_subnet(subnets[0] if subnets else ""),
        tenant=str(labels.get(LABEL_TENANT, "")),
        purpose="build" if labels.get(LABEL_PURPOSE) == "build" else "app",
        name=str(attrs.get("Name", "")),
        id=network_id,
    )


class DockerNetworks:
    """The bridge networks of one installation on a Docker Engine (docker-py APIClient)."""

    def __init__(self, api: Any, installation: str) -> None:
        self._api = api
        self._installation = installation

    def managed(self) -> list[BridgeNetwork]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTALLATION}={self._installation}"]}
        bridges = []
        for attrs in self._api.networks(filters=filters):
            labels = attrs.get("Labels") or {}
            if labels.get(LABEL_INSTALLATION) != self._installation:
                continue
            try:
                bridges.append(bridge_of(attrs))
            except NetPolicyError as exc:
                # Left out of the rules; ensure_filtered() refuses containers on it.
                log.error("egress filter: skipping network: %s", exc)
        return bridges

    def network_id(self, name: str) -> str | None:
        """The id of the network called exactly ``name`` (None if there is none)."""
        found = [n for n in self._api.networks(names=[name]) if n.get("Name") == name]
        return str(found[0]["Id"]) if found else None


def tenants_without_internet(sessions: sessionmaker[Session]) -> frozenset[str]:
    """Tenant ids whose plan switches outbound internet off."""
    with sessions() as session:
        rows = session.scalars(
            select(Tenant.id)
            .join(PlanRow, PlanRow.id == Tenant.plan_id)
            .where(PlanRow.egress_internet.is_(False))
        )
        return frozenset(rows)


def database_endpoints(
    sessions: sessionmaker[Session], resolve: Callable[[str], list[str]] | None = None
) -> tuple[DatabaseEndpoint, ...]:
    """Every registered database server's address and port as tenants' instances reach it,
    with the tenants that have an active database there. A server whose host does not resolve
    to IPv4 gets no rule (logged): its tenants cannot reach it through the filter."""
    resolve = resolve or _ipv4_addresses
    with sessions() as session:
        servers = {s.id: (s.host, s.port) for s in session.scalars(select(DbServer))}
        rows = session.execute(
            select(ManagedDatabase.server_id, ManagedDatabase.tenant_id).where(
                ManagedDatabase.state == "active"
            )
        ).all()
    tenants: dict[str, set[str]] = {server_id: set() for server_id in servers}
    for server_id, tenant_id in rows:
        tenants.setdefault(server_id, set()).add(tenant_id)
    out: list[DatabaseEndpoint] = []
    for server_id, (host, port) in sorted(servers.items()):
        try:
            addresses = resolve(host)
        except OSError as exc:
            log.warning("egress filter: database server %s does not resolve: %s", host, exc)
            continue
        for address in addresses:
            out.append(
                DatabaseEndpoint(
                    ipaddress.IPv4Address(address), port, frozenset(tenants.get(server_id, ()))
                )
            )
    return tuple(out)


def _ipv4_addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.IPv4Address(host))]
    except ValueError:
        pass
    found = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in found})
