"""The firewall of one Swarm node that keeps tenants apart across nodes. Pure: no I/O.

Separate overlays are already isolated from each other. What is not: Swarm publishes a task's
host-mode port on *every* address of its node (moby/moby#32299), a task's container reaches
the outside through ``docker_gwbridge`` (NAT), and the nodes' addresses also carry Swarm's own
ports (2377 managers' API, 7946 gossip, 4789 VXLAN). So without this guard a tenant's container
reaches another tenant's task at ``node_address:published_port`` (of any node, its own
included, through docker-proxy), the managers' API, and the platform's host (API, ingress,
registry). The guard, in the node's filter table:

- ``BERTH-NG-FORWARD`` (jumped to first from ``DOCKER-USER``, the FORWARD path): replies pass;
  a new connection from a container interface (``docker_gwbridge``, ``docker0``, ``br-*``)
  whose *original* destination (``--ctorigdst``: before any DNAT) is a node, an ingress or a
  protected address is refused, and nothing from a container is forwarded back into
  ``docker_gwbridge``; a connection DNAT-ed to a published port (Docker's dynamic range, the
  node's ``ip_local_port_range``) from a source that is not an ingress address is dropped.
- ``BERTH-NG-INPUT`` (jumped to first from ``INPUT``): replies pass; nothing new from a
  container interface reaches the node itself (its docker-proxy ports, 2377, 7946, anything);
  Swarm's ports answer the cluster's nodes only (``BERTH-NG-SWARM``), and the managers' port
  also the networks new nodes join from (``join_from``: a machine that is not a node yet must
  reach 2377 to join; the join token and Swarm's mutual TLS guard it there).

Both layers are needed: an ingress may run on a node, and a container on that node leaves it
masqueraded to the node's (ingress) address, so the target node alone cannot tell them apart;
the origin node's container rule stops it. Containers are *refused* (icmp admin-prohibited, an
answer at once, as berth.netpolicy.plan does; the kernel rate-limits that ICMP per destination
(net.ipv4.icmp_ratelimit), so a burst mostly times out instead); strangers are dropped.

Only validated networks, ports and interface names reach the rules.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from berth.netpolicy.plan import LINK_LOCAL, NetPolicyError

FORWARD_CHAIN = "BERTH-NG-FORWARD"
INPUT_CHAIN = "BERTH-NG-INPUT"
CONTAINER_CHAIN = "BERTH-NG-CONTAINER"  # what a container may not reach through the node
PUBLISHED_CHAIN = "BERTH-NG-PUBLISHED"  # who may reach published ports
SWARM_CHAIN = "BERTH-NG-SWARM"  # who may reach Swarm's ports
CHAINS = (FORWARD_CHAIN, INPUT_CHAIN, CONTAINER_CHAIN, PUBLISHED_CHAIN, SWARM_CHAIN)
# (hook, chain): each hook jumps to its chain exactly once, in first position.
HOOKS = (("DOCKER-USER", FORWARD_CHAIN), ("INPUT", INPUT_CHAIN))

GWBRIDGE = "docker_gwbridge"  # a Swarm task's way out of its node
CONTAINER_INTERFACES = (GWBRIDGE, "docker0", "br-+")  # '+' is iptables' prefix wildcard
MANAGER_PORT = 2377  # the managers' API, where a new node joins
SWARM_TCP_PORTS = (MANAGER_PORT, 7946)  # managers' API (also workers' listen port), gossip
SWARM_UDP_PORTS = (7946, 4789)  # gossip, VXLAN (a stranger must not inject into overlays)
# Docker allocates dynamic host ports from the node's ip_local_port_range (this kernel's
# default): Swarm's host-mode tasks without a published port got 32768, 32769, ... here.
DEFAULT_PUBLISHED_PORTS = (32768, 60999)

_REPLIES = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]
_REFUSE = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
_DROP = ["-j", "DROP"]
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,13}[A-Za-z0-9_.+-]?$")


@dataclass(frozen=True)
class NodeGuard:
    """What one node's guard is made of (the same on every node of a cluster)."""

    ingress: tuple[ipaddress.IPv4Network, ...]  # may reach published ports
    nodes: tuple[ipaddress.IPv4Network, ...]  # the cluster's nodes: Swarm peers
    protected: tuple[ipaddress.IPv4Network, ...] = (LINK_LOCAL,)  # host, registry, pools...
    published_ports: tuple[int, int] = DEFAULT_PUBLISHED_PORTS
    container_interfaces: tuple[str, ...] = CONTAINER_INTERFACES
    swarm_tcp_ports: tuple[int, ...] = SWARM_TCP_PORTS
    swarm_udp_ports: tuple[int, ...] = SWARM_UDP_PORTS
    join_from: tuple[ipaddress.IPv4Network, ...] = ()  # may reach MANAGER_PORT too

    @property
    def forbidden(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Where a container may never connect to through its node (in order, no repeats)."""
        return _unique([*self.nodes, *self.ingress, *self.protected])


def parse_networks(texts: Iterable[str], what: str) -> tuple[ipaddress.IPv4Network, ...]:
    """``10.0.0.5`` or ``10.0.0.0/24`` (IPv4; host bits refused) as networks, in order."""
    out = []
    for text in texts:
        try:
            net = ipaddress.IPv4Network(text.strip(), strict=True)
        except ValueError:
            raise NetPolicyError(
                f"{what}: {text!r} is not an IPv4 address or CIDR (host bits must be zero)"
            ) from None
        out.append(net)
    return _unique(out)


def parse_port_range(text: str) -> tuple[int, int]:
    """``32768-60999``, ``32768:60999`` or the two numbers of ``ip_local_port_range``."""
    parts = [p for p in re.split(r"[\s:-]+", text.strip()) if p]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise NetPolicyError(f"published ports: {text!r} is not a range like 32768-60999")
    low, high = int(parts[0]), int(parts[1])
    if not 1 <= low <= high <= 65535:
        raise NetPolicyError(f"published ports: {text!r} is not a range within 1-65535")
    return low, high


def build_guard(
    ingress: Sequence[str],
    nodes: Sequence[str],
    protected: Sequence[str] = (),
    published_ports: str | None = None,
    container_interfaces: Sequence[str] = CONTAINER_INTERFACES,
    join_from: Sequence[str] = (),
) -> NodeGuard:
    """A guard from what an operator types; NetPolicyError says what is wrong."""
    if not ingress:
        raise NetPolicyError("give at least one ingress address (--ingress): who serves the apps")
    if not nodes:
        raise NetPolicyError("give the cluster's nodes (--nodes): the Swarm peers")
    interfaces = tuple(container_interfaces)
    for name in interfaces:
        if not _INTERFACE.fullmatch(name):
            raise NetPolicyError(f"container interface {name!r} is not an interface name")
    return NodeGuard(
        ingress=parse_networks(ingress, "ingress"),
        nodes=parse_networks(nodes, "nodes"),
        protected=_unique([*parse_networks(protected, "protected"), LINK_LOCAL]),
        published_ports=(
            parse_port_range(published_ports) if published_ports else DEFAULT_PUBLISHED_PORTS
        ),
        container_interfaces=interfaces,
        join_from=parse_networks(join_from, "join from"),
    )


def rules(guard: NodeGuard) -> list[list[str]]:
    """Every rule of the guard as an argument list (``-A CHAIN ...``), in order."""
    out: list[list[str]] = []
    low, high = guard.published_ports
    out.append(["-A", FORWARD_CHAIN, *_REPLIES])
    for iface in guard.container_interfaces:
        out.append(["-A", FORWARD_CHAIN, "-i", iface, "-j", CONTAINER_CHAIN])
    for proto in ("tcp", "udp"):
        out.append(
            [
                *["-A", FORWARD_CHAIN, "-p", proto, "-m", "conntrack", "--ctstate", "DNAT"],
                *["--ctorigdstport", f"{low}:{high}", "-j", PUBLISHED_CHAIN],
            ]
        )
    for net in guard.forbidden:
        # The original destination: a container that reaches a published port of its own
        # node's address is DNAT-ed before FORWARD; --ctorigdst still sees the node address.
        out.append(["-A", CONTAINER_CHAIN, "-m", "conntrack", "--ctorigdst", str(net), *_REFUSE])
    # docker_gwbridge only leads out of the node; a container going back into it goes to
    # another tenant's task on this node (Docker's own ICC rule drops it too: belt and braces).
    out.append(["-A", CONTAINER_CHAIN, "-o", GWBRIDGE, *_REFUSE])
    for net in guard.ingress:
        out.append(["-A", PUBLISHED_CHAIN, "-s", str(net), "-j", "RETURN"])
    out.append(["-A", PUBLISHED_CHAIN, *_DROP])
    out.append(["-A", INPUT_CHAIN, *_REPLIES])
    for iface in guard.container_interfaces:
        out.append(["-A", INPUT_CHAIN, "-i", iface, *_REFUSE])
    for proto, ports in (("tcp", guard.swarm_tcp_ports), ("udp", guard.swarm_udp_ports)):
        if ports:
            out.append(
                [
                    *["-A", INPUT_CHAIN, "-p", proto, "-m", "multiport", "--dports"],
                    *[",".join(str(p) for p in ports), "-j", SWARM_CHAIN],
                ]
            )
    for net in guard.join_from:
        out.append(
            ["-A", SWARM_CHAIN, "-p", "tcp", "--dport", str(MANAGER_PORT), "-s", str(net),
             "-j", "RETURN"]
        )  # fmt: skip
    for net in guard.nodes:
        out.append(["-A", SWARM_CHAIN, "-s", str(net), "-j", "RETURN"])
    out.append(["-A", SWARM_CHAIN, *_DROP])
    return out


def restore_text(guard: NodeGuard) -> str:
    """``iptables-restore --noflush`` input: the guard's chains declared (so emptied) and
    filled in one transaction; every other chain and rule of the table stays as it is."""
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in CHAINS)]
    lines += [" ".join(rule) for rule in rules(guard)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def describe(guard: NodeGuard) -> str:
    """What the guard does, for an operator (``print``)."""
    nets = ", ".join
    low, high = guard.published_ports
    return "\n".join(
        [
            f"# published ports {low}-{high} answer only: {nets(map(str, guard.ingress))}",
            f"# Swarm ports answer only: {nets(map(str, guard.nodes))}",
            f"# port {MANAGER_PORT} (joining) also: {nets(map(str, guard.join_from)) or '-'}",
            "# containers never reach: " + nets(map(str, guard.forbidden)) + ", nor this node",
        ]
    )


def _unique(nets: Iterable[ipaddress.IPv4Network]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(dict.fromkeys(nets))


if __name__ == "__main__":  # python -m berth.netpolicy.node_guard: the I/O half has the CLI
    from berth.netpolicy.node_guard_apply import main

    sys.exit(main(sys.argv[1:]))
