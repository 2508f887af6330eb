"""Berth's node guard as a global Swarm service (pure: no I/O).

Every node of the swarm runs one task of ``berth-node-guard``: the ``berth/node-guard`` image
(berth.images.node_guard_image) with ``python -m berth.netpolicy.node_guard run ...`` in the
node's own network namespace (host network), with NET_ADMIN and nothing else, a read-only root
filesystem, restart on any exit. Its arguments are the current facts:

- ``--nodes``: every node's address (Swarm's ports 2377/7946/4789 answer only them);
- ``--ingress``: the addresses of the nodes labelled ``ingress=true`` plus those of the
  machines running ``berth server`` (their nginx reaches the published ports);
- ``--protect``: the platform's addresses (API, registry, the overlays' pool, the operator's
  own), which a tenant's container never reaches through its node (the managers are nodes);
- ``--join-from``: who may reach the managers' port to join.

A change of the facts is a new spec, so Swarm rolls the guard: the old task exits leaving its
rules, the new one replaces the chains' contents in one ``iptables-restore`` transaction, so a
node is never without a guard. The service carries none of Berth's owner labels: the swarm
backend removes every owned service that is no app's, and the guard is no app.

Swarm gives a drained node no task, global services included, and managers are drained. So
the manager Berth talks to gets the same guard as a plain container of its engine
(:func:`local_container_options`, restart always), for as long as it is drained. A drained
manager Berth does not talk to runs no guard: it runs no tenant container, and what a container
sends it is refused on the container's own node; only its Swarm ports stay open to strangers
there (run `berth server` on each manager, or the guard by hand: see the README).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from berth.cluster.labels import INGRESS
from berth.netpolicy.node_guard import build_guard

SERVICE_NAME = "berth-node-guard"
LABEL_GUARD = "berth.node-guard"  # "true" on the service and on each task's container
LABEL_GUARD_INSTALLATION = "berth.node-guard.installation"
LABEL_GUARD_FACTS = "berth.node-guard.facts"  # hash of the whole spec but this label
CAPABILITIES = ["CAP_NET_ADMIN"]  # nf_tables over netlink needs no more
MEMORY_LIMIT = 64 * 1024 * 1024
PIDS_LIMIT = 32
CHECK_SECONDS = 10  # how often each guard checks that its rules are still in place
RESTART_DELAY_NS = 5 * 1_000_000_000
STOP_GRACE_NS = 5 * 1_000_000_000
LOG_OPTIONS = {"max-size": "1m", "max-file": "2"}
# Any published port range and never a loopback/unspecified: checked as the guard will.
_CHECK_PORTS = "32768-60999"

Obj = dict[str, Any]


@dataclass(frozen=True)
class GuardFacts:
    """What every node's guard is told; sorted, no repeats."""

    nodes: tuple[str, ...]
    ingress: tuple[str, ...]
    protected: tuple[str, ...]
    join_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardAction:
    kind: Literal["create", "update", "keep"]
    service_id: str = ""
    version: int = 0


def node_address(node: Mapping[str, Any]) -> str:
    """A node's address as Swarm knows it (a manager may say 0.0.0.0: its Raft address)."""
    addr = str((node.get("Status") or {}).get("Addr") or "")
    if not addr or addr == "0.0.0.0":
        raft = str((node.get("ManagerStatus") or {}).get("Addr") or "")
        addr = raft.rsplit(":", 1)[0].strip("[]") if raft else ""
    return addr


def is_ingress(node: Mapping[str, Any]) -> bool:
    labels = (node.get("Spec") or {}).get("Labels") or {}
    return str(labels.get(INGRESS, "")).lower() == "true"


def guard_facts(
    nodes: Iterable[Mapping[str, Any]],
    server_addresses: Sequence[str],
    protected: Sequence[str],
    join_from: Sequence[str] = (),
) -> GuardFacts:
    """The facts from Docker's node objects and Berth's settings. A node with no usable
    address yet (joining) is left out until it has one."""
    addresses: list[str] = []
    ingress: list[str] = []
    for node in nodes:
        addr = node_address(node)
        if not _usable(addr):
            continue
        addresses.append(addr)
        if is_ingress(node):
            ingress.append(addr)
    ingress += [a for a in server_addresses if a]
    return GuardFacts(
        nodes=_sorted(addresses),
        ingress=_sorted(ingress),
        protected=_sorted(p for p in protected if p),
        join_from=_sorted(j for j in join_from if j),
    )


def check_facts(facts: GuardFacts) -> None:
    """Raise NetPolicyError (what is wrong) unless the guard would accept the facts."""
    build_guard(
        facts.ingress, facts.nodes, facts.protected, _CHECK_PORTS, join_from=facts.join_from
    )


def guard_args(facts: GuardFacts) -> list[str]:
    """The task's arguments (after the image's entrypoint ``python3 -m ...node_guard``)."""
    args = ["run", "--interval", str(CHECK_SECONDS)]
    for flag, values in (
        ("--ingress", facts.ingress),
        ("--nodes", facts.nodes),
        ("--protect", facts.protected),
        ("--join-from", facts.join_from),
    ):
        for value in values:
            args += [flag, value]
    return args


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A hash of everything the spec says (image, arguments, limits, ...) but its own label:
    new facts, or a Berth whose guard is built differently, is an update."""
    body = dict(spec)
    body["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k != LABEL_GUARD_FACTS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def guard_spec(image: str, facts: GuardFacts, installation: str) -> Obj:
    """The ServiceSpec (Docker's API shape) of the guard."""
    args = guard_args(facts)
    labels = {LABEL_GUARD: "true", LABEL_GUARD_INSTALLATION: installation}
    spec: Obj = {
        "Name": SERVICE_NAME,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Args": args,
                "Labels": {LABEL_GUARD: "true", LABEL_GUARD_INSTALLATION: installation},
                "ReadOnly": True,
                "CapabilityDrop": ["ALL"],
                "CapabilityAdd": list(CAPABILITIES),
                # iptables may take its lock file in /run: the only writable place.
                "Mounts": [
                    {"Type": "tmpfs", "Target": "/run", "TmpfsOptions": {"SizeBytes": 1 << 20}}
                ],
                "StopGracePeriod": STOP_GRACE_NS,
            },
            "Resources": {"Limits": {"MemoryBytes": MEMORY_LIMIT, "Pids": PIDS_LIMIT}},
            "RestartPolicy": {"Condition": "any", "Delay": RESTART_DELAY_NS, "MaxAttempts": 0},
            # The node's own network namespace: the rules are the node's.
            "Networks": [{"Target": "host"}],
            "LogDriver": {"Name": "json-file", "Options": dict(LOG_OPTIONS)},
        },
        "Mode": {"Global": {}},
        # Every node at once: the old rules stay until the new task replaces them, so a
        # stop-first update opens no window; a guard that fails leaves the old rules.
        "UpdateConfig": {"Parallelism": 0, "Order": "stop-first", "FailureAction": "continue"},
    }
    spec["Labels"][LABEL_GUARD_FACTS] = spec_hash(spec)
    return spec


def local_container_options(spec: Mapping[str, Any]) -> Obj:
    """docker-py ``containers.run`` keywords for the guard of ``spec`` as a plain container
    (the drained manager Berth talks to)."""
    container = spec["TaskTemplate"]["ContainerSpec"]
    return {
        "image": container["Image"],
        "command": list(container["Args"]),
        "name": SERVICE_NAME,
        "detach": True,
        "network_mode": "host",
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "read_only": True,
        "tmpfs": {"/run": "size=1m"},
        "restart_policy": {"Name": "always"},
        "mem_limit": MEMORY_LIMIT,
        "pids_limit": PIDS_LIMIT,
        "labels": {**container["Labels"], LABEL_GUARD_FACTS: spec["Labels"][LABEL_GUARD_FACTS]},
        "log_config": {"Type": "json-file", "Config": dict(LOG_OPTIONS)},
        "stop_signal": "SIGTERM",
    }


def local_guard_wanted(nodes: Iterable[Mapping[str, Any]], self_id: str) -> bool:
    """Whether the node of Berth's own engine needs the plain-container guard: it is in the
    swarm and drained (a node that is not drained runs the service's task)."""
    for node in nodes:
        if node.get("ID") == self_id:
            return (node.get("Spec") or {}).get("Availability") == "drain"
    return False


def plan_service(services: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]) -> GuardAction:
    """Create the guard, update it to ``spec`` (its facts changed, or it was edited), or keep
    it. ``services``: the swarm's services labelled as a guard."""
    mine = [s for s in services if (s.get("Spec") or {}).get("Name") == SERVICE_NAME]
    if not mine:
        return GuardAction("create")
    current = mine[0]
    labels = (current.get("Spec") or {}).get("Labels") or {}
    version = int((current.get("Version") or {}).get("Index") or 0)
    if labels.get(LABEL_GUARD_FACTS) == spec["Labels"][LABEL_GUARD_FACTS] and labels.get(
        LABEL_GUARD_INSTALLATION
    ) == spec["Labels"].get(LABEL_GUARD_INSTALLATION):
        return GuardAction("keep", str(current.get("ID", "")), version)
    return GuardAction("update", str(current.get("ID", "")), version)


def protected_addresses(
    registry_listen: str, api_host: str, address_pool: str, extra: Sequence[str]
) -> list[str]:
    """The platform's own addresses a tenant must not reach through its node: the registry's
    and the API's listen addresses (when they are a specific, non-loopback address), the
    overlays' pool and the operator's extra CIDRs."""
    out: list[str] = []
    for text in (registry_listen.rpartition(":")[0] or registry_listen, api_host):
        host = text.strip("[]")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_unspecified):
            out.append(str(address))
    return [*out, *(p for p in (address_pool, *extra) if p)]


def _usable(address: str) -> bool:
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (parsed.is_unspecified or parsed.is_loopback)


def _sorted(values: Iterable[str]) -> tuple[str, ...]:
    def key(value: str) -> tuple[int, str]:
        try:
            return int(ipaddress.IPv4Network(value, strict=False).network_address), value
        except ValueError:
            return 0, value

    return tuple(sorted(set(values), key=key))
