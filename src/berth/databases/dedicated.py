"""Dedicated databases: a server Berth runs for exactly one tenant database.

Shared databases are accounts on a server the operator registered (``db-servers add``); a
dedicated one is its own server, which Berth starts on the tenant's own network and nowhere
else. The seam has two halves:

- ``DedicatedSpec`` (pure): what the server is, from the image to the limits and the labels. It
  is the same whatever runs it.
- ``DedicatedRunner``: what runs it. ``berth.databases.dedicated_local.LocalDedicatedRunner``
  runs it as one hardened container on the tenant's bridge (the local backend). A Swarm runner
  would run the same spec as a one-replica service on the tenant's overlay (``berth-o-<tenant>``,
  the alias as the service's network alias, the spec's limits as the task's resources,
  ``cap_drop``/read-only/``no-new-privileges`` in the task template, placement on any node);
  what it still lacks is listed in ``SWARM_GAPS``.

In the store a dedicated database is a ``DbServer`` row in state ``dedicated`` (capacity one,
never chosen for shared placement, not listed among the operator's servers) and its
``ManagedDatabase`` row on it. So every path that reaches "the database's server" works
unchanged, and the engine's ``Provider`` for that server is what differs:

- Memcached (``memcached_dedicated.MemcachedProvider``): it has no users, so the provider's
  ``create`` is the runner starting the container and ``drop`` removing it.
- PostgreSQL, MariaDB and Redis (``dedicated_servers.DedicatedServerProvider``): a spec of the
  distro's server image (the ones ``db-servers launch`` runs, started the same way), a volume
  for the data and an admin password generated into the ``DbServer`` row's admin URL, which
  names the alias; the provider's ``create`` runs the spec, waits until it answers, then hands
  the account to the shared provider of the engine (``PostgresProvider`` and so on) over that
  admin URL with the alias replaced by the container's address (``RunningServer.address``, on
  the tenant's bridge, which the Berth machine reaches and nothing of another tenant's does).
  Backups, rotation, quotas and usage then work as on a shared server; ``drop`` removes the
  container and its volume.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from berth.databases.names import Engine
from berth.errors import Conflict

# Server state of a DbServer row that is one database's own server.
DEDICATED: Final = "dedicated"
NAME_PREFIX: Final = "berth-db-"
LABEL_DATABASE_SERVER: Final = "berth.database-server"  # the engine, e.g. "memcached"
LABEL_DATABASE: Final = "berth.database"  # the ManagedDatabase id
_NAME: Final = re.compile(r"berth-db-[0-9a-f]{24}")


class DedicatedNotAvailable(Conflict):
    """The request is fine; this installation cannot start the server now (409, as when no
    shared server of an engine is registered)."""

    code = "dedicated_not_available"


SWARM_GAPS: Final = (
    "a SwarmDedicatedRunner creating the spec as a service on the tenant's overlay",
    "an address the Berth server reaches the service at for check(), usage(), backups and "
    "the admin's statements (the overlay is not attachable from the host: an admin-side "
    "attachable network, or the statements run through a task)",
    "the service's own memory reservation counted by the Swarm scheduler",
    "a volume that follows the server's task to another node (a local volume stays on the "
    "node it was made on: the service pinned to that node, or a volume driver shared by the "
    "nodes) and the one-shot init step (initdb, install-db) run as a task before the service",
    "MariaDB's admin host: the Berth server reaches the service from an address of the "
    "admin network, not the bridge's gateway",
)


def server_name(server_database: str) -> str:
    """The container (and alias) name from the database's hashed server name (``bd<hex>``):
    nothing of the tenant's text, the same on every node."""
    digest = server_database.removeprefix("bd")
    name = f"{NAME_PREFIX}{digest}"
    if _NAME.fullmatch(name) is None:
        raise ValueError("a server database name is bd and 24 hex digits")
    return name


def is_server_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def volume_name(name: str) -> str:
    """The named volume of a dedicated server's data (labelled as its container is)."""
    if not is_server_name(name):
        raise ValueError(f"{name!r} is not a dedicated server's name")
    return f"{name}-data"


def server_of_volume(volume: str) -> str | None:
    name = volume.removesuffix("-data")
    return name if volume.endswith("-data") and is_server_name(name) else None


@dataclass(frozen=True)
class InitStep:
    """A one-shot step on the new volume before the server's first start (``initdb``,
    ``mariadb-install-db``): a container of the same image, with no network, hardened as the
    server; ``files`` (name: text) are written into ``data_dir`` first. It must exit with 0."""

    entrypoint: tuple[str, ...]
    command: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DedicatedSpec:
    """A one-database server. ``memory_bytes`` is the container's hard limit (the engine's own
    limit sits below it); the server listens on ``port`` inside ``network`` only, reached by
    ``alias`` there; nothing is published on the host."""

    engine: Engine
    name: str
    image: str
    command: tuple[str, ...]
    network: str
    alias: str
    port: int
    memory_bytes: int
    pids_limit: int
    nano_cpus: int
    user: str
    tenant_id: str
    database_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # The data: a named volume (``volume_name``) mounted at ``data_dir``; "" for none (a cache).
    volume: str = ""
    data_dir: str = ""
    # Writable scratch on a read-only root (path: tmpfs options), e.g. the server's socket.
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    init: InitStep | None = None
    # Written into the volume before the first start: {directory: {name: text}}, each file
    # owned by nobody and readable by nobody else.
    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    stop_signal: str = ""  # "": the image's (SIGTERM)


@dataclass(frozen=True)
class RunningServer:
    name: str
    address: str  # where the Berth server reaches it (never handed to tenants)
    memory_limit: int  # bytes, as the engine reports it


class DedicatedRunner(Protocol):
    """Runs dedicated servers. Raises ``DatabaseServerUnavailable`` when its engine cannot be
    reached and ``DatabaseServerError`` when it refuses; nothing else escapes."""

    def network_gateway(self, network: str, tenant_id: str) -> str:
        """Make the tenant's network ready (as for its apps) and return its IPv4 gateway: the
        address the Berth machine's connections to a server on it come from."""
        ...

    def run(self, spec: DedicatedSpec) -> RunningServer:
        """Create and start the server (its volume, init step and files first);
        ``DatabaseExists`` if one of that name is there. A run that fails removes what it
        made."""
        ...

    def find(self, name: str) -> RunningServer | None:
        """The running server of that name, None when it is missing or stopped."""
        ...

    def remove(self, name: str) -> None:
        """Stop and remove it and its volume; a missing one is not an error."""
        ...

    def names(self) -> list[str]:
        """Every dedicated server of this installation, a container or only its volume (to
        find leftovers)."""
        ...

    def exited(self, name: str) -> bool:
        """Whether the server is missing or has stopped for good (not starting, not being
        restarted): it will not answer."""
        ...

    def tail(self, name: str) -> str:
        """The last lines it logged, for the operator's log (never a tenant's answer)."""
        ...

    def created_at(self, name: str) -> float | None:
        """When the server's container (or, with none, its volume) was created, unix seconds;
        None: missing."""
        ...
