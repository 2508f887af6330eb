"""The egress rules of one installation, rendered as iptables-restore text. Pure: no I/O.

Two chains per installation, in the filter table:

- ``BERTH-E-<installation>``, jumped to from ``DOCKER-USER`` (the FORWARD path): what a tenant
  bridge may send through the host to other machines;
- ``BERTH-I-<installation>``, jumped to from ``INPUT``: what a tenant bridge may send to the
  host itself (none of it: Berth publishes nothing to tenants).

Replies (ESTABLISHED, RELATED) always pass, so nginx and health checks from the host keep
reaching the containers. Traffic inside one tenant network always passes. Then, per bridge:
packets with a source outside the bridge's subnet are dropped, DNAT-ed connections (ports the
host publishes on its own addresses) are refused, link-local and the operator's blocked ranges
are refused, and for a tenant whose plan has no internet, everything else new is refused too.
A database server's port answers the app networks of the tenants with a database there (through
the host or beyond it, whatever their plan's internet) and nobody else's.

Only validated interface names, CIDRs and installation ids reach the text: nothing a tenant
chose (network or tenant names) is ever written into it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from berth.errors import BerthError

LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")  # includes the cloud metadata address
PURPOSES = frozenset({"app", "build"})
# Linux interface names are at most 15 bytes; '+' is an iptables wildcard and is refused.
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
# "BERTH-E-" + id must fit iptables' 28-character chain names.
_INSTALLATION = re.compile(r"^[a-z0-9]{1,20}$")
# Refused, not dropped silently: the tenant sees "administratively prohibited" at once instead
# of waiting for a timeout.
_REFUSE = "REJECT --reject-with icmp-admin-prohibited"
_REPLIES = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"


class NetPolicyError(BerthError):
    """Egress filtering cannot be set up or applied (bad settings, bad input, iptables)."""

    status = 503
    code = "egress_filter"


@dataclass(frozen=True, order=True)
class BridgeNetwork:
    """One managed Docker bridge network as the engine reports it."""

    interface: str
    subnet: str  # CIDR; "" when the engine reports none
    tenant: str
    purpose: str = "app"  # "app" (berth-t-*) or "build" (berth-b-*)
    name: str = field(default="", compare=False)  # for messages only, never rendered
    id: str = field(default="", compare=False)


@dataclass(frozen=True, order=True)
class DatabaseEndpoint:
    """A database server's address as tenants' instances reach it, and the tenants that have
    a database there: only their app networks reach it (not their builds, not other
    tenants), through the host or to another machine, whatever their plan's internet."""

    address: ipaddress.IPv4Address
    port: int
    tenants: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EgressSnapshot:
    installation: str
    networks: tuple[BridgeNetwork, ...] = ()
    internet_off: frozenset[str] = frozenset()  # tenant ids whose plan has egress_internet off
    blocked: tuple[ipaddress.IPv4Network, ...] = ()  # the operator's internal ranges
    databases: tuple[DatabaseEndpoint, ...] = ()


@dataclass(frozen=True)
class Chains:
    egress: str
    input: str


def chains_for(installation: str) -> Chains:
    if not _INSTALLATION.match(installation):
        raise NetPolicyError(f"installation id {installation!r} is not 1-20 lowercase hex/digits")
    return Chains(egress=f"BERTH-E-{installation}", input=f"BERTH-I-{installation}")


def parse_blocked_ranges(texts: Iterable[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """The operator's blocked ranges as networks; a clear error names the first bad entry."""
    networks = []
    for text in texts:
        value = text.strip() if isinstance(text, str) else text
        if not isinstance(value, str) or not value:
            raise NetPolicyError(f"BERTH_EGRESS_BLOCKED_RANGES: {text!r} is not a CIDR")
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise NetPolicyError(
                f"BERTH_EGRESS_BLOCKED_RANGES: {value!r} is not a valid CIDR ({exc}); "
                "write the network address, e.g. 10.0.0.0/8"
            ) from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise NetPolicyError(
                f"BERTH_EGRESS_BLOCKED_RANGES: {value!r} is IPv6; Berth's networks are IPv4 only"
            )
        networks.append(network)
    return tuple(networks)


def valid_interface(name: str) -> str:
    if not isinstance(name, str) or not _INTERFACE.match(name):
        raise NetPolicyError(f"bridge interface name {name!r} is not a valid interface name")
    return name


def valid_subnet(cidr: str) -> str:
    """The subnet in canonical form, "" for none; raises on anything that is not IPv4 CIDR."""
    if cidr == "":
        return ""
    try:
        network = ipaddress.IPv4Network(cidr, strict=False)
    except (ValueError, TypeError):
        raise NetPolicyError(f"subnet {cidr!r} is not an IPv4 CIDR") from None
    return str(network)


def render(snapshot: EgressSnapshot) -> str:
    """The complete iptables-restore text for this installation's two chains (deterministic)."""
    chains = chains_for(snapshot.installation)
    blocked = sorted(
        {LINK_LOCAL, *snapshot.blocked}, key=lambda n: (int(n.network_address), n.prefixlen)
    )
    bridges = _bridges(snapshot)
    databases = _databases(snapshot.databases)
    egress = [f"-A {chains.egress} {_REPLIES}"]
    inbound = [f"-A {chains.input} {_REPLIES}"]
    for interface, (subnet, internet_off, app_of) in sorted(bridges.items()):
        rule = f"-A {chains.egress} -i {interface}"
        egress.append(f"{rule} -o {interface} -j RETURN")  # inside the tenant's own network
        if subnet:
            egress.append(f"{rule} ! -s {subnet} -j DROP")  # spoofed source
        egress.append(f"{rule} -m conntrack --ctstate DNAT -j {_REFUSE}")  # host's published ports
        # Database servers: their tenants' app networks in (before any range is refused),
        # everyone else refused (before the internet is let through).
        for endpoint in databases:
            target = f"-d {endpoint.address}/32 -p tcp -m tcp --dport {endpoint.port}"
            verdict = "RETURN" if app_of & endpoint.tenants else _REFUSE
            egress.append(f"{rule} {target} -j {verdict}")
            if verdict == "RETURN":  # a server on this host itself
                inbound.append(f"-A {chains.input} -i {interface} {target} -j RETURN")
        egress.extend(f"{rule} -d {network} -j {_REFUSE}" for network in blocked)
        if internet_off:
            egress.append(f"{rule} -j {_REFUSE}")
        inbound.append(f"-A {chains.input} -i {interface} -j {_REFUSE}")
    lines = [
        "*filter",
        f":{chains.egress} - [0:0]",
        f":{chains.input} - [0:0]",
        *egress,
        *inbound,
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def _bridges(snapshot: EgressSnapshot) -> dict[str, tuple[str, bool, frozenset[str]]]:
    """interface -> (subnet, internet off, the tenant whose app network it is, if one),
    validated; one bridge seen twice merges strictly (and is nobody's app network if it is
    reported as two tenants' or as a build network too)."""
    bridges: dict[str, tuple[str, bool, frozenset[str]]] = {}
    conflicted: set[str] = set()
    for network in snapshot.networks:
        interface = valid_interface(network.interface)
        subnet = valid_subnet(network.subnet)
        if network.purpose not in PURPOSES:
            raise NetPolicyError(f"network purpose {network.purpose!r} is not app or build")
        off = network.tenant in snapshot.internet_off
        app_of = frozenset({network.tenant}) if network.purpose == "app" else frozenset()
        if interface in bridges:
            seen_subnet, seen_off, seen_app = bridges[interface]
            if seen_subnet != subnet:
                raise NetPolicyError(f"bridge {interface} is reported with two subnets")
            off = off or seen_off
            if app_of != seen_app:
                conflicted.add(interface)
        bridges[interface] = (subnet, off, app_of)
    for interface in conflicted:
        subnet, off, _ = bridges[interface]
        bridges[interface] = (subnet, off, frozenset())
    return bridges


def _databases(endpoints: Iterable[DatabaseEndpoint]) -> list[DatabaseEndpoint]:
    """Checked, one per address and port (the tenants of both merged), in a stable order."""
    merged: dict[tuple[ipaddress.IPv4Address, int], frozenset[str]] = {}
    for endpoint in endpoints:
        if not isinstance(endpoint.address, ipaddress.IPv4Address):
            raise NetPolicyError(f"database address {endpoint.address!r} is not IPv4")
        if endpoint.address.is_unspecified or endpoint.address.is_multicast:
            raise NetPolicyError(f"database address {endpoint.address} is not a host")
        port = endpoint.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise NetPolicyError(f"database port {port!r} is not a TCP port")
        key = (endpoint.address, port)
        merged[key] = merged.get(key, frozenset()) | frozenset(endpoint.tenants)
    return [DatabaseEndpoint(a, p, t) for (a, p), t in sorted(merged.items())]
