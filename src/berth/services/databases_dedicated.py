"""How the services reach a dedicated database's server: the provider factory that knows both
kinds, shared servers (``real_provider``) and the servers Berth runs itself.

A dedicated server's ``DbServer`` row is in state ``dedicated``; its engine decides the
provider. Only Memcached is dedicated today, and only on the local backend: a Swarm runner is
the missing piece for many machines (``berth.databases.dedicated.SWARM_GAPS``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.databases.dedicated import DEDICATED, DedicatedNotAvailable, DedicatedRunner
from berth.databases.dedicated_local import LocalDedicatedRunner
from berth.databases.memcached_dedicated import MemcachedProvider
from berth.databases.provider import Provider
from berth.runtime.protocol import Runtime
from berth.services.databases_access import ProviderFactory, ServerAddress, real_provider
from berth.store.tables import DbServer

# A dedicated server younger than this with no row may be a create in flight.
LEFTOVER_GRACE_SECONDS = 600.0
SWARM_REFUSAL = "dedicated Memcached runs on the single-machine backend only for now"


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


def with_dedicated(
    runner: DedicatedRunner | None,
    image: Callable[[], str],
    shared: ProviderFactory = real_provider,
    refuse_create: Callable[[], str] = lambda: "",
) -> ProviderFactory:
    """``shared`` for the operator's servers; a dedicated server's provider through ``runner``
    (None: this installation has no engine to run them on). ``refuse_create``: why no new one
    may start now ("": it may); the ones there still answer and can be deleted."""

    def factory(address: ServerAddress) -> Provider:
        if address.engine != "memcached":
            return shared(address)
        if runner is None:
            raise DedicatedNotAvailable(SWARM_REFUSAL)
        return MemcachedProvider(runner, image, refuse_create=refuse_create)

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
    return with_dedicated(runner, image, refuse_create=refuse_create)


def sweep_leftovers(
    session: Session,
    runner: DedicatedRunner,
    now: float,
    grace_seconds: float = LEFTOVER_GRACE_SECONDS,
) -> list[str]:
    """Remove the dedicated servers on the engine that no store row names and that are older
    than ``grace_seconds``: what a Berth stopped between starting a container and storing its
    row left behind. A create in flight has its container before its row (for at most
    ``memcached_dedicated.READY_SECONDS`` and a commit), so a young one is left alone and the
    sweep may run at any time, on any server. Returns the names removed."""
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
