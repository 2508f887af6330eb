"""The metrics collectors of one Berth server, built from its settings. Every server runs
them (leader or not): each counts its own nginx's traffic and its own engine's containers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from berth.metrics.engine_collector import CgroupSampler, EngineCollector, docker_pid_of
from berth.metrics.ingress_collector import IngressCollector
from berth.proxy.nginx import NginxManager
from berth.settings import Settings


@dataclass
class Collectors:
    ingress: IngressCollector | None
    engine: EngineCollector | None

    def start(self) -> None:
        for loop in (self.ingress, self.engine):
            if loop is not None:
                loop.start()

    def stop(self) -> None:
        for loop in (self.ingress, self.engine):
            if loop is not None:
                loop.stop()


def nginx_reopen(master_pid: Callable[[], int | None]) -> Callable[[], None]:
    """Ask nginx's master to reopen its log files (SIGUSR1), as logrotate would."""

    def reopen() -> None:
        pid = master_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    return reopen


def build_collectors(
    settings: Settings,
    sessions: sessionmaker[Session],
    server_id: str,
    nginx: NginxManager | None,
    docker_api: object | None,
) -> Collectors | None:
    if not settings.metrics_enabled:
        return None
    bucket = settings.metrics_bucket_seconds
    ingress = None
    if nginx is not None and nginx.paths.metrics_log is not None:
        ingress = IngressCollector(
            nginx.paths.metrics_log,
            sessions,
            server_id,
            bucket_seconds=bucket,
            retention_seconds=settings.metrics_retention_hours * 3600,
            flush_seconds=settings.metrics_flush_seconds,
            max_log_bytes=settings.metrics_log_max_bytes,
            reopen=nginx_reopen(nginx.pid),
        )
    engine = None
    if docker_api is not None:
        engine = EngineCollector(
            sessions,
            server_id,
            CgroupSampler(docker_pid_of(docker_api)),
            bucket_seconds=bucket,
            interval=settings.metrics_engine_interval_seconds,
        )
    return Collectors(ingress, engine)
