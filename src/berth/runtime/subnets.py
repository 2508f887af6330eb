"""Subnets for Berth's bridge networks, taken from a pool of Berth's own.

Docker's default address pools hold about 31 bridge networks (172.17-31.0.0/16 and
192.168.0.0/16 in /20s). Berth makes a network per tenant for its apps and one per building
tenant, so the defaults would cap an installation at a few dozen tenants. Berth therefore
picks each network's subnet itself from ``settings.network_pool`` (default 10.224.0.0/12 in
/24s: 4,096 networks), skipping every subnet that an engine network or a host route already
covers. :func:`next_free` is the pure choice; :func:`create_bridge_network` is the I/O.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import docker.errors
from docker.types import IPAMConfig, IPAMPool

from berth.errors import InvalidInput

log = logging.getLogger(__name__)

PROC_ROUTES = Path("/proc/net/route")
DEFAULT_NETWORK_POOL = "10.224.0.0/12"
DEFAULT_NETWORK_PREFIX = 24
CREATE_ATTEMPTS = 8  # another creator may take the chosen subnet between our look and create


def parse_pool(pool: str, prefix: int) -> ipaddress.IPv4Network:
    """The pool as a network; a clear error when it is not an IPv4 CIDR wider than ``prefix``."""
    try:
        network = ipaddress.IPv4Network(pool, strict=True)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"BERTH_NETWORK_POOL {pool!r} is not an IPv4 network like 10.224.0.0/12 ({exc})",
            code="invalid_setting",
        ) from None
    if not network.prefixlen <= prefix <= 29:
        raise InvalidInput(
            f"BERTH_NETWORK_PREFIX /{prefix} must be between /{network.prefixlen} and /29",
            code="invalid_setting",
        )
    return network


def next_free(
    pool: ipaddress.IPv4Network, prefix: int, taken: Iterable[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network | None:
    """The first /``prefix`` of ``pool`` that overlaps nothing in ``taken``, or None."""
    busy = sorted(
        (t for t in taken if t.overlaps(pool)), key=lambda n: (int(n.network_address), n.prefixlen)
    )
    size = 2 ** (32 - prefix)
    candidate = int(pool.network_address)
    end = int(pool.broadcast_address)
    for net in busy:
        start, stop = int(net.network_address), int(net.broadcast_address)
        if stop < candidate:
            continue
        if start >= candidate + size:
            break  # the candidate fits before this busy range
        # Jump past the busy range, aligned to the next subnet boundary.
        candidate = ((stop + 1 + size - 1) // size) * size
    if candidate + size - 1 > end:
        return None
    return ipaddress.IPv4Network((candidate, prefix))


def parse_routes(text: str) -> list[ipaddress.IPv4Network]:
    """The destinations of ``/proc/net/route`` (little-endian hex), without the default route."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            network = ipaddress.IPv4Network(f"{destination}/{mask}", strict=False)
        except (ValueError, struct.error, OSError):
            continue
        if network.prefixlen > 0:
            routes.append(network)
    return routes


def _host_routes() -> list[ipaddress.IPv4Network]:
    try:
        return parse_routes(PROC_ROUTES.read_text())
    except OSError:
        return []


def _engine_subnets(api: Any) -> list[ipaddress.IPv4Network]:
    subnets = []
    for summary in api.networks():
        for config in (summary.get("IPAM") or {}).get("Config") or []:
            try:
                subnets.append(ipaddress.IPv4Network(config.get("Subnet", ""), strict=False))
            except (ValueError, TypeError):
                continue  # IPv6 or none
    return subnets


def create_bridge_network(
    api: Any,
    name: str,
    labels: Mapping[str, str],
    options: Mapping[str, str],
    pool: ipaddress.IPv4Network,
    prefix: int,
) -> None:
    """Create bridge network ``name`` on a free subnet of ``pool``.

    Raises docker.errors.APIError as the engine does (the callers map it), and InvalidInput
    (status 503) when the pool is full.
    """
    skipped: list[ipaddress.IPv4Network] = []
    for _ in range(CREATE_ATTEMPTS):
        subnet = next_free(pool, prefix, [*_engine_subnets(api), *_host_routes(), *skipped])
        if subnet is None:
            raise InvalidInput(
                f"no free /{prefix} is left in the network pool {pool}; "
                "the operator can widen BERTH_NETWORK_POOL",
                code="network_pool_full",
                status=503,
            )
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))])
        try:
            api.create_network(
                name,
                driver="bridge",
                options=dict(options),
                labels=dict(labels),
                ipam=ipam,
                check_duplicate=True,
            )
            return
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc).lower():
                raise
            log.info("subnet %s was taken meanwhile; trying the next one", subnet)
            skipped.append(subnet)
    raise InvalidInput(
        f"could not find a free subnet for network {name} after {CREATE_ATTEMPTS} attempts",
        code="network_pool_busy",
        status=503,
    )
