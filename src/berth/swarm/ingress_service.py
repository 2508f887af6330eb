"""The ingress nodes as a global Swarm service (pure: no I/O).

Every node labelled ``ingress=true`` runs one task of ``berth-ingress``: the ``berth/ingress``
image (the distro's nginx and berth.ingress.agent) in the node's own network namespace (host
network: it listens on the node's port 80 of every address, as a provider's DNS or load
balancer expects). Swarm places it (``node.labels.ingress==true``): label a node and it starts
serving; remove the label and its task stops. The agent fetches the node's config from a Berth
server with a token Swarm mounts as a secret (``/run/secrets/berth-ingress-token``).

Hardening: a read-only root with a tmpfs for nginx's state; every capability dropped but what
an nginx master running as root needs to bind port 80 and run its workers as ``www-data``
(NET_BIND_SERVICE, SETUID, SETGID, CHOWN for its temp directories, KILL to signal workers of
another user); memory and pids limits; an init as PID 1.

Updates go one node at a time, stop-first (two nginx cannot both hold the node's port 80):
the other ingress nodes serve meanwhile, so a provider runs at least two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from berth.cluster.labels import INGRESS
from berth.ingress.node_config import STATE_DIR

SERVICE_NAME = "berth-ingress"
LABEL_SERVICE = "berth.ingress-node"  # "true" on the service, its tasks' containers, its secret
LABEL_INSTALLATION = "berth.ingress-node.installation"
LABEL_SPEC = "berth.ingress-node.spec"  # hash of the whole spec but this label
SECRET_PREFIX = "berth-ingress-token-"  # noqa: S105 (a name, not a secret)
SECRET_FILE = "berth-ingress-token"  # noqa: S105
CAPABILITIES = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID"]
MEMORY_LIMIT = 256 * 1024 * 1024
PIDS_LIMIT = 256
STATE_TMPFS_BYTES = 64 * 1024 * 1024
STOP_GRACE_NS = 20 * 1_000_000_000  # nginx answers what it holds before it exits
RESTART_DELAY_NS = 2 * 1_000_000_000
UPDATE_DELAY_NS = 5 * 1_000_000_000
LOG_OPTIONS = {"max-size": "10m", "max-file": "3"}
CONSTRAINT = f"node.labels.{INGRESS}==true"

Obj = dict[str, Any]


@dataclass(frozen=True)
class IngressAction:
    kind: Literal["create", "update", "keep"]
    service_id: str = ""
    version: int = 0


def ingress_spec(
    image: str, server_url: str, port: int, secret: tuple[str, str], installation: str
) -> Obj:
    """The ServiceSpec (Docker's API shape). ``secret``: (id, name) of the token's secret."""
    secret_id, secret_name = secret
    labels = {LABEL_SERVICE: "true", LABEL_INSTALLATION: installation}
    spec: Obj = {
        "Name": SERVICE_NAME,
        "Labels": dict(labels),
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Args": _agent_args(server_url, port),
                # Swarm fills in the node's name: the servers show each node's state by it.
                "Env": ["BERTH_NODE={{.Node.Hostname}}"],
                "Labels": dict(labels),
                "ReadOnly": True,
                "Init": True,
                "CapabilityDrop": ["ALL"],
                "CapabilityAdd": list(CAPABILITIES),
                "Mounts": [
                    {
                        "Type": "tmpfs",
                        "Target": str(STATE_DIR),
                        "TmpfsOptions": {"SizeBytes": STATE_TMPFS_BYTES, "Mode": 0o755},
                    }
                ],
                "Secrets": [
                    {
                        "SecretID": secret_id,
                        "SecretName": secret_name,
                        "File": {"Name": SECRET_FILE, "UID": "0", "GID": "0", "Mode": 0o400},
                    }
                ],
                "StopGracePeriod": STOP_GRACE_NS,
            },
            "Resources": {"Limits": {"MemoryBytes": MEMORY_LIMIT, "Pids": PIDS_LIMIT}},
            "RestartPolicy": {"Condition": "any", "Delay": RESTART_DELAY_NS, "MaxAttempts": 0},
            "Placement": {"Constraints": [CONSTRAINT]},
            "Networks": [{"Target": "host"}],
            "LogDriver": {"Name": "json-file", "Options": dict(LOG_OPTIONS)},
        },
        "Mode": {"Global": {}},
        "UpdateConfig": {
            "Parallelism": 1,
            "Delay": UPDATE_DELAY_NS,
            "Order": "stop-first",
            "FailureAction": "pause",
        },
    }
    spec["Labels"][LABEL_SPEC] = spec_hash(spec)
    return spec


def _agent_args(server_url: str, port: int) -> list[str]:
    return [
        *("--server", server_url),
        *("--token-file", f"/run/secrets/{SECRET_FILE}"),
        *("--port", str(port)),
        *("--state-dir", str(STATE_DIR)),
    ]


def spec_hash(spec: Mapping[str, Any]) -> str:
    body = dict(spec)
    body["Labels"] = {k: v for k, v in (spec.get("Labels") or {}).items() if k != LABEL_SPEC}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def plan_service(services: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]) -> IngressAction:
    """Create the service, update it to ``spec``, or keep it."""
    mine = [s for s in services if (s.get("Spec") or {}).get("Name") == SERVICE_NAME]
    if not mine:
        return IngressAction("create")
    current = mine[0]
    labels = (current.get("Spec") or {}).get("Labels") or {}
    version = int((current.get("Version") or {}).get("Index") or 0)
    service_id = str(current.get("ID", ""))
    if labels.get(LABEL_SPEC) == spec["Labels"][LABEL_SPEC] and labels.get(
        LABEL_INSTALLATION
    ) == spec["Labels"].get(LABEL_INSTALLATION):
        return IngressAction("keep", service_id, version)
    return IngressAction("update", service_id, version)


def secret_name(token_sha256: str) -> str:
    """A secret per token (Swarm's secrets cannot change): named by the token's hash."""
    return SECRET_PREFIX + token_sha256[:16]
