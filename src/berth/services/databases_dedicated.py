"""How the services reach a dedicated database's server: the provider factory that knows both
kinds, shared servers (``real_provider``) and the servers Berth runs itself, and the backups
factory that reaches the latter at their container's address.

A dedicated server's ``DbServer`` row is in state ``dedicated`` and its host is its alias
(``berth-db-<hash>``); its engine decides the provider: Memcached's own, or PostgreSQL's,
MariaDB's and Redis's shared provider behind ``DedicatedServerProvider``. Only on the local
backend: a Swarm runner is the missing piece for many machines
(``berth.databases.dedicated.SWARM_GAPS``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.databases.backup import BackupFailed, Backups
from berth.databases.dedicated import (
    DEDICATED,
    DedicatedNotAvailable,
    DedicatedRunner,
    is_server_name,
)
from berth.databases.dedicated_local import LocalDedicatedRunner
from berth.databases.dedicated_servers import DedicatedServerProvider, reachable
from berth.databases.errors import DatabaseServerError
from berth.databases.memcached_dedicated import MemcachedProvider
from berth.databases.names import Engine
from berth.databases.provider import Provider
from berth.runtime.protocol import Runtime
from berth.services.databases_access import ProviderFactory, ServerAddress, real_provider
from berth.settings import Settings
from berth.store.tables import DbServer

log = logging.getLogger(__name__)
BackupFactory = Callable[[ServerAddress], Backups]

# A dedicated server younger than this with no row may be a create in flight.
LEFTOVER_GRACE_SECONDS = 600.0
# Why a new dedicated database (Memcached, or a server of its own) cannot start here.
SWARM_REFUSAL = "dedicated databases run on the single-machine backend only for now"


def memcached_image(client: Callable[[], object], cache_dir: Path) -> Callable[[], str]:
    """The image's tag, made on first use if ``berth images bootstrap`` has not made it."""

    def image() -> str:
        from berth.databases.errors import DatabaseServerError
        from berth.images.bootstrap import BootstrapError
        from berth.images.memcached_image import ensure_memcached_image

        try:
            return ensure_memcached_image(client(), cache_dir).tag
        except BootstrapError as exc:
            raise DatabaseServerError(f"the memcached image is missing: {exc.message}") from exc

    return image


def server_image(client: Callable[[], object], cache_dir: Path) -> Callable[[Engine], str]:
    """The tag of an engine's server image (``db-servers launch``'s), made on first use. An
    image that cannot be made is a 409 for the tenant (nothing was started); the operator's
    log has why."""

    def image(engine: Engine) -> str:
        from berth.images.bootstrap import BootstrapError
        from berth.images.db_server_images import ensure_db_server_image

        try:
            return ensure_db_server_image(client(), cache_dir, engine).tag
        except BootstrapError as exc:
            log.error("the %s server image cannot be made: %s", engine, exc.message)
            raise DedicatedNotAvailable(
                f"dedicated {engine} servers are not available on this installation right now "
                "(their image cannot be made); ask the operator"
            ) from None

    return image


def _no_server_image(engine: Engine) -> str:
    raise DedicatedNotAvailable(f"dedicated {engine} servers are not available here")


def is_dedicated_address(address: ServerAddress) -> bool:
    """A server Berth runs for one database: its host is its alias (``berth-db-<hash>``)."""
    return address.engine == "memcached" or is_server_name(address.host)


def with_dedicated(
    runner: DedicatedRunner | None,
    image: Callable[[], str],
    shared: ProviderFactory = real_provider,
    refuse_create: Callable[[], str] = lambda: "",
    server_image: Callable[[Engine], str] = _no_server_image,
) -> ProviderFactory:
    """``shared`` for the operator's servers; a dedicated server's provider through ``runner``
    (None: this installation has no engine to run them on). ``refuse_create``: why no new one
    may start now ("": it may); the ones there still answer and can be deleted. ``image`` is
    Memcached's, ``server_image`` the other engines'."""

    def shared_over(engine: Engine, admin_url: str, host: str, port: int) -> Provider:
        return shared(ServerAddress(engine, admin_url, host, port))

    def factory(address: ServerAddress) -> Provider:
        if not is_dedicated_address(address):
            return shared(address)
        if address.engine == "memcached":
            if runner is None:
                raise DedicatedNotAvailable(SWARM_REFUSAL)
            return MemcachedProvider(runner, image, refuse_create=refuse_create)
        if runner is None:
            raise DedicatedNotAvailable(SWARM_REFUSAL)
        return DedicatedServerProvider(
            address.engine,
            address.admin_url,
            address.host,
            address.port,
            runner=runner,
            image=server_image,
            shared=shared_over,
            refuse_create=refuse_create,
        )

    return factory


def with_dedicated_backups(runner: DedicatedRunner | None, inner: BackupFactory) -> BackupFactory:
    """``inner`` for shared servers; for a dedicated one, ``inner`` over its container's
    current address. A server that cannot be reached fails the backup (reported, never
    silent) rather than the request."""

    def factory(address: ServerAddress) -> Backups:
        if not is_dedicated_address(address) or address.engine == "memcached":
            return inner(address)
        if runner is None:
            raise BackupFailed(f"the database's own server cannot be reached: {SWARM_REFUSAL}")
        try:
            running = runner.find(address.host)
        except DatabaseServerError as exc:
            raise BackupFailed(
                f"the database's own server cannot be found: {exc.message}"
            ) from None
        if running is None:
            raise BackupFailed("the database's own server is not running")
        url = reachable(address.admin_url, running.address)
        return inner(ServerAddress(address.engine, url, address.host, address.port))

    return factory


_RUNNERS: dict[int, tuple[Runtime, LocalDedicatedRunner]] = {}
_RUNNERS_LOCK = threading.Lock()


def local_runner(
    runtime: Runtime,
    docker_url: str,
    network_ready: Callable[[str], None] = lambda network: None,
) -> LocalDedicatedRunner:
    """One runner (one engine connection) per runtime, for every request and for the local
    backend's ``held_networks``."""
    with _RUNNERS_LOCK:
        found = _RUNNERS.get(id(runtime))
        if found is not None and found[0] is runtime:
            return found[1]
        runner = LocalDedicatedRunner(runtime, docker_url, network_ready)
        _RUNNERS[id(runtime)] = (runtime, runner)
        return runner


def local_factory(
    runtime: Runtime | None,
    docker_url: str,
    cache_dir: Path,
    network_ready: Callable[[str], None] = lambda network: None,
    refuse_create: Callable[[], str] = lambda: "",
) -> ProviderFactory:
    """The factory of a platform whose apps run on this machine's Docker Engine (``runtime``;
    any other runtime, a test's fake, runs no dedicated server)."""
    from berth.runtime.docker_driver import DockerRuntime

    if not isinstance(runtime, DockerRuntime):
        return with_dedicated(None, lambda: "")
    runner = local_runner(runtime, docker_url, network_ready)
    image = memcached_image(lambda: runner.client, cache_dir)
    servers = server_image(lambda: runner.client, cache_dir)
    return with_dedicated(runner, image, refuse_create=refuse_create, server_image=servers)


def local_backups(runtime: Runtime | None, docker_url: str, settings: Settings) -> BackupFactory:
    """The backups of a platform whose apps run on this machine's Docker Engine: the real
    ones, dedicated servers reached at their container's address."""
    from berth.runtime.docker_driver import DockerRuntime
    from berth.services.databases_backups import backups_with

    inner = backups_with(settings)
    if not isinstance(runtime, DockerRuntime):
        return with_dedicated_backups(None, inner)
    return with_dedicated_backups(local_runner(runtime, docker_url), inner)


def sweep_leftovers(
    session: Session,
    runner: DedicatedRunner,
    now: float,
    grace_seconds: float = LEFTOVER_GRACE_SECONDS,
) -> list[str]:
    """Remove the dedicated servers on the engine that no store row names and that are older
    than ``grace_seconds``: what a Berth stopped between starting a container and storing its
    row left behind (with its volume, or a volume alone). A create in flight has its container
    before its row (for at most ``dedicated_servers.READY_SECONDS``, an init step and a
    commit), so a young one is left alone and the sweep may run at any time, on any server.
    Returns the names removed."""
    known = set(session.scalars(select(DbServer.name).where(DbServer.state == DEDICATED)))
    removed = []
    for name in runner.names():
        if name in known:
            continue
        created = runner.created_at(name)
        if created is None or now - created < grace_seconds:
            continue
        runner.remove(name)
        removed.append(name)
    return removed
