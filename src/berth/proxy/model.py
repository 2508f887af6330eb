"""What the routing layer is asked to serve: pure data, no I/O.

A ``ProxyConfig`` is a complete snapshot. Berth renders it to one nginx.conf, so the config
nginx runs is always a function of a single snapshot, never of a sequence of edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from berth.domain.traffic import TrafficControls

RouteState = Literal["serving", "no_instances", "suspended"]


@dataclass(frozen=True, slots=True)
class Upstream:
    """One healthy instance of an app, reachable at ``host:port`` (normally loopback)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    """The domains of one app and where their traffic goes.

    ``state`` decides what nginx answers: ``serving`` proxies to ``upstreams``;
    ``no_instances`` and ``suspended`` answer 503 with a page that says why. ``controls``
    are the app's traffic controls (redirects, basic auth, maintenance, allow/deny, rate
    limit), or None for none. ``max_body_mb`` is the largest request body nginx passes to
    the app (MiB, 413 above it); None: the http-level default.
    """

    app_id: str
    app_name: str
    tenant_id: str
    hostnames: tuple[str, ...]
    upstreams: tuple[Upstream, ...]
    state: RouteState
    controls: TrafficControls | None = None
    max_body_mb: int | None = None


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """A certificate and its key, served for ``hostnames`` (its own domain, or the platform
    hostnames an operator's wildcard covers). The paths name one issued version, so a renewal
    is a new config text and therefore a reload."""

    hostnames: tuple[str, ...]
    chain: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """HTTPS on ``port`` (HTTP/2 by ALPN) for the hostnames that have a certificate. An app
    in ``redirect_apps`` answers plain HTTP on those hostnames with a redirect to HTTPS."""

    port: int
    certificates: tuple[ServedCertificate, ...] = ()
    redirect_apps: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything nginx serves. ``generation`` is answered at ``/__berth/generation`` so a
    caller can tell when a reload carrying this snapshot is live; it should only increase.

    ``acme_upstream`` is where ``/.well-known/acme-challenge/`` of every plain-HTTP host goes
    (a Berth API server, which answers a pending HTTP-01 challenge from the store); None: not
    served. ``tls`` None: plain HTTP only."""

    listen_host: str
    listen_port: int
    routes: tuple[Route, ...]
    generation: int
    tls: TlsConfig | None = None
    acme_upstream: Upstream | None = None


@dataclass(frozen=True, slots=True)
class NginxPaths:
    """Where Berth's own nginx keeps its files, all under one directory it owns.

    ``worker_user``/``worker_group`` are set only when nginx starts as root, so that workers
    drop privileges; as any other user nginx cannot switch users and must not be told to.
    """

    prefix: Path
    conf_file: Path
    pid_file: Path
    lock_file: Path
    error_log: Path
    access_log: Path
    temp_dir: Path
    worker_user: str | None = None
    worker_group: str | None = None
    # nginx's compact per-request log for berth.metrics; None: not written (ingress nodes).
    metrics_log: Path | None = None
    # Upstreams set at run time through this Unix socket (berth.proxy.dynamic), with the Lua
    # modules in lua_modules; None: instances are written into the config (a reload each).
    control_socket: Path | None = None
    lua_modules: Path | None = None

    @classmethod
    def in_dir(
        cls,
        conf_dir: Path,
        *,
        worker_user: str | None = None,
        worker_group: str | None = None,
        lua_modules: Path | None = None,
    ) -> NginxPaths:
        return cls(
            prefix=conf_dir,
            conf_file=conf_dir / "nginx.conf",
            pid_file=conf_dir / "nginx.pid",
            lock_file=conf_dir / "nginx.lock",
            error_log=conf_dir / "error.log",
            access_log=conf_dir / "access.log",
            temp_dir=conf_dir / "tmp",
            worker_user=worker_user,
            worker_group=worker_group,
            metrics_log=conf_dir / "metrics.log",
            control_socket=conf_dir / "control.sock" if lua_modules is not None else None,
            lua_modules=lua_modules,
        )
