"""The Swarm service of a process group (pure: no I/O).

A task runs hardened exactly like a local container (berth.runtime.docker_driver): every
capability dropped but KEPT_CAPABILITIES, tini as PID 1, a pids limit, a read-only root
filesystem with size-limited tmpfs at WRITABLE_PATHS, memory and CPU limits, no mounts but those
tmpfs, json-file logs capped as locally, the same labels. Two things the service API of Engine
20.10 cannot set: **no-new-privileges** and **swap = memory**. Every node's dockerd must therefore
run with ``--no-new-privileges`` and the node without swap (tests/cluster's nodes do both); the
contract test inspects a task's container for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from berth.domain.placement import swarm_constraints
from berth.errors import InvalidInput
from berth.runtime.protocol import KEPT_CAPABILITIES, WRITABLE_PATHS, owner_labels
from berth.workloads.protocol import (
    LABEL_TENANT,
    ProcessGroup,
    group_labels,
)

LABEL_SPEC = "berth.spec"  # hash of the service spec but its replicas: drift is an update

MB = 1024 * 1024
NAME_MAX = 63
SPREAD_DESCRIPTOR = "node.labels.zone"
LOG_OPTIONS = {"max-size": "10m", "max-file": "3"}  # as the local driver's containers
STOP_GRACE_NS = 10 * 1_000_000_000
# Swarm restarts a crashed task after this (a fixed delay: Swarm has no exponential backoff).
RESTART_DELAY_NS = 1_000_000_000

_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


def service_name(group: ProcessGroup, installation: str) -> str:
    """A valid, unique service name of at most 63 characters: readable, then a hash of the key.

    ``<app>-<process>-v<version>-g<generation>-<hash>``; the readable part is cut to fit, the
    hash (of installation and group key) keeps two groups apart whatever was cut.
    """
    generation = group.revision.rpartition(":")[2] or "0"
    readable = f"{group.app_name}-{group.process}-v{group.release_version}-g{generation}"
    readable = _NAME_UNSAFE.sub("-", readable.lower()).strip("-") or "group"
    digest = hashlib.sha256(f"{installation}/{group.key}".encode()).hexdigest()[:10]
    readable = readable[: NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}"


def placement_constraints(constraints: tuple[str, ...]) -> list[str]:
    """``zone==b`` / ``zone!=a`` as Swarm constraints on node labels; anything else refused
    (the grammar is berth.domain.placement's, shared with the API and the local backend)."""
    return swarm_constraints(constraints)


def service_labels(group: ProcessGroup, installation: str) -> dict[str, str]:
    """The labels of the service and of each of its task containers: a local container's."""
    return {**owner_labels(installation), **group_labels(group)}


def network_labels(installation: str, tenant_id: str) -> dict[str, str]:
    return {**owner_labels(installation), LABEL_TENANT: tenant_id}


def service_spec(group: ProcessGroup, installation: str) -> dict[str, Any]:
    """The ServiceSpec (Docker's API shape) of a group; raises InvalidInput on a bad group."""
    if group.replicas < 0:
        raise InvalidInput(f"replicas must not be negative, not {group.replicas}")
    labels = service_labels(group, installation)
    env = dict(group.env)
    if group.port is not None:
        env["PORT"] = str(group.port)  # PORT wins: the app must listen where it is published
    container: dict[str, Any] = {
        "Image": group.image,
        "Labels": dict(labels),
        "Env": [f"{key}={value}" for key, value in sorted(env.items())],
        "ReadOnly": True,
        "Init": True,
        "CapabilityDrop": ["ALL"],
        "CapabilityAdd": list(KEPT_CAPABILITIES),
        # The only mounts: tmpfs of disk_mb each (the root filesystem is read-only).
        "Mounts": [
            {
                "Type": "tmpfs",
                "Target": path,
                "TmpfsOptions": {"SizeBytes": max(group.disk_mb, 1) * MB, "Mode": 0o1777},
            }
            for path in WRITABLE_PATHS
        ],
        "StopGracePeriod": STOP_GRACE_NS,
    }
    if group.command is not None:
        # The local driver's ``command`` is the image's CMD (its entrypoint stays): Args here.
        container["Args"] = list(group.command)
    memory = group.memory_mb * MB
    spec: dict[str, Any] = {
        "Name": service_name(group, installation),
        "Labels": dict(labels),
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {
                    "MemoryBytes": memory,
                    "NanoCPUs": group.cpus_milli * 1_000_000,
                    "Pids": group.pids_limit,
                },
                # Placement reserves what the instance may use: no node is overcommitted.
                "Reservations": {"MemoryBytes": memory},
            },
            "RestartPolicy": {"Condition": "any", "Delay": RESTART_DELAY_NS, "MaxAttempts": 0},
            "Placement": {
                "Constraints": placement_constraints(group.constraints),
                "Preferences": [{"Spread": {"SpreadDescriptor": SPREAD_DESCRIPTOR}}],
            },
            "Networks": [{"Target": group.network}],
            "LogDriver": {"Name": "json-file", "Options": dict(LOG_OPTIONS)},
        },
        "Mode": {"Replicated": {"Replicas": group.replicas}},
        # No IPVS here (and no routing mesh wanted): dnsrr, and the port published in host mode
        # WITHOUT a fixed host port, so each task gets its own (a fixed one deadlocks start-first
        # updates when replicas = nodes, moby/moby#36934).
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": (
                [{"Protocol": "tcp", "TargetPort": group.port, "PublishMode": "host"}]
                if group.port is not None
                else []
            ),
        },
    }
    spec["Labels"][LABEL_SPEC] = spec_hash(spec)
    return spec


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A hash of what a service runs, all but its replica count and this hash itself."""
    body = {key: value for key, value in spec.items() if key != "Mode"}
    body["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k != LABEL_SPEC}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def replicas_of(spec: Mapping[str, Any]) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)
