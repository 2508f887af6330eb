"""The nginx.conf an ingress node is sent (pure: no I/O).

The same renderer and the same routes as a Berth server's own nginx (berth.proxy.render over
berth.controllers.ingress_sync.plan_from_rows), with the paths of the agent's container: state
in ``/var/lib/berth-ingress`` (a tmpfs, the root filesystem is read-only), logs to the task's
stderr (Docker keeps and rotates them; nginx sends its stdout to /dev/null when it forks),
workers as ``www-data``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from berth.proxy.model import NginxPaths, ProxyConfig, Route
from berth.proxy.render import auth_files, render_nginx_conf

STATE_DIR = Path("/var/lib/berth-ingress")
WORKER_USER = "www-data"
AGENT_PATHS = NginxPaths(
    prefix=STATE_DIR,
    conf_file=STATE_DIR / "nginx.conf",
    pid_file=STATE_DIR / "nginx.pid",
    lock_file=STATE_DIR / "nginx.lock",
    error_log=Path("/dev/stderr"),
    access_log=Path("/dev/stderr"),
    temp_dir=STATE_DIR / "tmp",
    worker_user=WORKER_USER,
    worker_group=WORKER_USER,
)


@dataclass(frozen=True)
class NodeConfig:
    etag: str
    generation: int
    text: str
    # The basic auth users files the config names (berth.proxy.render.auth_files): file name
    # in ``htpasswd/`` -> ``user:bcrypt`` lines. The agent writes them before ``nginx -t``.
    auth_files: dict[str, str] = field(default_factory=dict)


def routes_digest(routes: tuple[Route, ...], port: int) -> str:
    """Whether the routes changed (order-free, as the renderer is)."""
    body = repr(
        (
            port,
            sorted(
                (
                    r.app_id,
                    r.app_name,
                    r.tenant_id,
                    r.state,
                    tuple(sorted(r.hostnames)),
                    tuple(sorted((u.host, u.port) for u in r.upstreams)),
                    repr(r.controls),  # traffic controls: normalised, so a stable repr
                    r.max_body_mb,
                )
                for r in routes
            ),
        )
    )
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def node_config(
    routes: tuple[Route, ...], generation: int, port: int, paths: NginxPaths = AGENT_PATHS
) -> NodeConfig:
    """The whole config of an ingress node listening on ``port`` of every address of the node.
    Raises ValueError (the renderer's) on anything it refuses."""
    cfg = ProxyConfig("0.0.0.0", port, routes, generation)
    text = render_nginx_conf(cfg, paths)
    files = auth_files(cfg)
    digest = hashlib.sha256(text.encode())
    for name, content in sorted(files.items()):  # a changed password is a new config
        digest.update(b"\0" + name.encode() + b"\0" + content.encode())
    return NodeConfig(digest.hexdigest()[:24], generation, text, files)
