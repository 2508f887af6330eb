"""Dedicated PostgreSQL, MariaDB and Redis: a tenant's own server, on the tenant's network only.

The server is the one ``berth admin db-servers launch`` runs (the distro's packages in the
offline images of ``berth.images.db_server_images``), started the same way (``launch``'s
arguments, ``initdb``/``mariadb-install-db`` once on the new volume, the users file or init
file written into the volume before the first start), but as a ``DedicatedSpec``: on the
tenant's bridge under its alias instead of the host's network, listening on the container's
own addresses, with its data on a volume of its own.

Berth administers it as a shared server of one database: the ``DbServer`` row's admin URL has
the admin password made for it (``admin_url``), naming the alias; every admin call replaces the
alias by the container's current address on the bridge (``reachable``: the Berth machine holds
the bridge's gateway, so it reaches it; the address may change when the container restarts,
the alias never does), and hands the call to the engine's shared provider. The tenant gets an
ordinary account on it (a role and a database, a MariaDB user, a Redis ACL user), exactly as
on a shared server, and a URL naming the alias, which resolves on the tenant's network only.

Admin access is narrower than on a launched server: PostgreSQL's ``pg_hba.conf`` and MariaDB's
admin user accept Berth's admin only from the bridge's gateway (the Berth machine), never from
a tenant's container on the same network; Redis ACLs know no addresses, so there the admin's
32-character random password alone keeps the tenant's apps out of the admin user.

Limits (the plan's): the container's memory is fixed per SQL engine (``MEMORY_MB``), the size
being the storage quota the usage pass enforces as on a shared server; for Redis the size is
its memory (``maxmemory``, writes refused past it), the container a third more plus 32 MB for
the server itself and an append-only file rewrite's forked child.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from berth.databases import launch
from berth.databases.dedicated import (
    DedicatedNotAvailable,
    DedicatedRunner,
    DedicatedSpec,
    InitStep,
    server_name,
    volume_name,
)
from berth.databases.errors import DatabaseExists, DatabaseServerError, DatabaseServerUnavailable
from berth.databases.names import Engine
from berth.databases.provider import Account, Credentials, Provider, Usage
from berth.errors import InvalidInput
from berth.workloads.local import tenant_network

if TYPE_CHECKING:
    from berth.databases.provider import Rotated  # the rotation's (berth.databases.rotation)

ENGINES: Final[frozenset[Engine]] = frozenset({"postgres", "mariadb", "redis"})
PORTS: Final[dict[str, int]] = dict(launch.DEFAULT_PORTS)
USER: Final = "65534:65534"  # nobody: owns the volume (the image's /data), needs no capability
NANO_CPUS: Final = 1_000_000_000
TMPFS: Final = {"/tmp": "size=16m,mode=1777"}  # noqa: S108 (the container's own: socket, pid)
# The SQL servers' memory, whatever the size (the size is their storage quota). Measured here
# (the container's cgroup usage, page cache included): PostgreSQL 15 (shared_buffers a quarter
# of this) 35 MB idle, 181 MB after writing 200,000 rows (50 MB); MariaDB (a buffer pool of half
# of this) 79 MB idle, 146 MB after the same rows.
MEMORY_MB: Final[dict[str, int]] = {"postgres": 256, "mariadb": 384}
# Redis's size is its memory: what one machine's tenant may hold in a server of its own.
REDIS_MIN_MB, REDIS_MAX_MB, REDIS_DEFAULT_MB = 16, 4096, 64
REDIS_OVERHEAD_MB: Final = 32
READY_SECONDS: Final = 60.0
POLL_SECONDS: Final = 0.2


def validate_size_mb(engine: Engine, size_mb: int, *, shared_range: tuple[int, int]) -> int:
    """Redis: its memory, 16 MB-4 GB; PostgreSQL/MariaDB: the storage quota, the same range
    as on a shared server (``shared_range``)."""
    if isinstance(size_mb, bool) or not isinstance(size_mb, int):
        raise InvalidInput("size_mb is a number of MB", code="invalid_size")
    low, high = (REDIS_MIN_MB, REDIS_MAX_MB) if engine == "redis" else shared_range
    if not low <= size_mb <= high:
        what = "memory" if engine == "redis" else "size"
        raise InvalidInput(
            f"a dedicated {engine} database's {what} is between {low} MB and {high} MB",
            code="invalid_size",
        )
    return size_mb


def default_size_mb(engine: Engine, shared_default: int) -> int:
    return REDIS_DEFAULT_MB if engine == "redis" else shared_default


def container_memory_mb(engine: Engine, size_mb: int) -> int:
    """The container's hard limit in MB: what the tenant's memory quota counts for it."""
    if engine == "redis":
        return size_mb + size_mb // 3 + REDIS_OVERHEAD_MB
    return MEMORY_MB[engine]


def held_memory_mb(engine: str, size_mb: int) -> int:
    """What a dedicated database of any engine holds of the machine's memory (its container's
    limit), as the tenant's memory quota counts it."""
    if engine == "memcached":
        from berth.databases.memcached_dedicated import container_memory_mb as memcached_mb

        return memcached_mb(size_mb)
    if engine not in ENGINES:
        raise ValueError(f"{engine} has no dedicated server")
    return container_memory_mb(engine, size_mb)  # type: ignore[arg-type]


def pids_limit(engine: Engine, connections: int) -> int:
    """PostgreSQL runs a process per connection, MariaDB a thread; both about 30 of their own."""
    return 32 if engine == "redis" else connections + 64


def admin_url(engine: Engine, alias: str, password: str) -> str:
    """The row's admin URL: Berth's admin and its password at the alias (``reachable`` makes
    it the container's address for each call)."""
    return launch.admin_url(_shape(engine, alias, 0), password)


def admin_password(url: str) -> str:
    password = urlsplit(url).password
    if not password:
        raise ValueError("a dedicated server's admin URL has the admin's password")
    return unquote(password)


def reachable(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (an IPv4 address): user, password, port
    and path as they are."""
    ip = ipaddress.IPv4Address(address)
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{userinfo}@{ip}{port}" if userinfo else f"{ip}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _shape(engine: Engine, listen: str, memory_mb: int) -> launch.LaunchSpec:
    """The launch's own description of a server, for its argument and file makers."""
    return launch.LaunchSpec(
        name="dedicated", engine=engine, listen=listen, port=PORTS[engine], memory_mb=memory_mb
    )


def pg_hba(gateway: str) -> str:
    """Every connection by password (SCRAM); Berth's admin only from the gateway."""
    host = ipaddress.IPv4Address(gateway)
    admin = launch.ADMIN_USER
    return (
        "# Berth: the admin from the Berth machine only; everyone by password (SCRAM).\n"
        "local all all scram-sha-256\n"
        f"host all {admin} {host}/32 scram-sha-256\n"
        f"host all {admin} 0.0.0.0/0 reject\n"
        f"host all {admin} ::/0 reject\n"
        "host all all 0.0.0.0/0 scram-sha-256\n"
        "host all all ::/0 scram-sha-256\n"
    )


def spec_for(
    account: Account, image: str, network: str, password: str, gateway: str
) -> DedicatedSpec:
    """The server of ``account``'s database: pure (the runner makes it real)."""
    engine = account.engine
    if engine not in ENGINES:
        raise ValueError(f"{engine} has no dedicated server of this kind")
    size_mb = account.size_mb or default_size_mb(engine, 1024)
    memory_mb = container_memory_mb(engine, size_mb)
    shape = _shape(engine, "0.0.0.0", memory_mb)  # the container's own addresses only
    name = server_name(account.names.database)
    init: InitStep | None = None
    stop_signal = ""
    if engine == "postgres":
        command = launch.postgres_arguments(shape)
        init = InitStep(
            entrypoint=("/bin/sh", "-c", launch.postgres_initdb_script()),
            files={launch.PG_PASSWORD_FILE.rsplit("/", 1)[1]: password},
        )
        files = {launch.PG_DATA: {"pg_hba.conf": pg_hba(gateway)}}
        stop_signal = "SIGINT"  # fast shutdown: SIGTERM would wait for every client to leave
    elif engine == "mariadb":
        command = launch.mariadb_arguments(shape)
        init = InitStep(
            entrypoint=("/usr/bin/mariadb-install-db",),
            command=tuple(launch.mariadb_install_arguments()),
        )
        init_file = launch.MARIADB_INIT.rsplit("/", 1)[1]
        files = {launch.DATA_DIR: {init_file: launch.mariadb_admin_sql(gateway, password)}}
    else:
        command = launch.redis_arguments(shape, maxmemory_mb=size_mb)
        acl_file = launch.ACL_FILE.rsplit("/", 1)[1]
        files = {launch.DATA_DIR: {acl_file: launch.redis_acl_file(password)}}
    return DedicatedSpec(
        engine=engine,
        name=name,
        image=image,
        command=tuple(command),
        network=network,
        alias=name,
        port=PORTS[engine],
        memory_bytes=memory_mb * 1024 * 1024,
        pids_limit=pids_limit(engine, account.connection_limit),
        nano_cpus=NANO_CPUS,
        user=USER,
        tenant_id=account.tenant_id,
        database_id=account.database_id,
        volume=volume_name(name),
        data_dir=launch.DATA_DIR,
        tmpfs=TMPFS,
        init=init,
        files=files,
        stop_signal=stop_signal,
    )


# (engine, admin URL, tenants' host, tenants' port) -> the engine's shared provider.
SharedProvider = Callable[[Engine, str, str, int], Provider]


class DedicatedServerProvider:
    """``Provider`` of one dedicated server (``host`` is its alias, ``admin_url`` the row's):
    ``create`` starts it and puts the account on it, ``drop`` removes it with its volume, every
    other call is the engine's shared provider over the container's current address."""

    def __init__(
        self,
        engine: Engine,
        admin_url: str,
        host: str,
        port: int,
        *,
        runner: DedicatedRunner,
        image: Callable[[Engine], str],
        shared: SharedProvider,
        refuse_create: Callable[[], str] = lambda: "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        ready_seconds: float = READY_SECONDS,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"{engine} has no dedicated server of this kind")
        self.engine: Engine = engine
        self._admin_url, self.host, self.port = admin_url, host, port
        self.runner, self.image, self.shared = runner, image, shared
        self.refuse_create, self.clock, self.sleep = refuse_create, clock, sleep
        self.ready_seconds = ready_seconds

    def _over(self, address: str) -> Provider:
        url = reachable(self._admin_url, address)
        return self.shared(self.engine, url, self.host, self.port)

    def _admin(self) -> Provider:
        running = self.runner.find(self.host)
        if running is None:
            raise DatabaseServerUnavailable(f"{self.host} is not running")
        return self._over(running.address)

    def check(self) -> None:
        self._admin().check()

    def prepare(self) -> None:
        self._admin().prepare()

    def exists(self, account: Account) -> bool:
        return self.host in self.runner.names()

    def create(self, account: Account) -> Credentials:
        if server_name(account.names.database) != self.host:
            raise ValueError("the account is not this server's database")
        why = self.refuse_create()
        if why:
            raise DedicatedNotAvailable(why)
        image = self.image(self.engine)
        network = tenant_network(account.tenant_id)
        gateway = self.runner.network_gateway(network, account.tenant_id)
        spec = spec_for(account, image, network, admin_password(self._admin_url), gateway)
        try:
            running = self.runner.run(spec)
        except DatabaseExists:
            raise  # not ours to remove: a server of that name was there before
        except BaseException:
            self.runner.remove(spec.name)
            raise
        try:
            admin = self._wait_ready(running.address)
            admin.prepare()
            return admin.create(account)
        except BaseException:
            self.runner.remove(spec.name)
            raise

    def _wait_ready(self, address: str) -> Provider:
        """The server answers its admin (``check``): then it is ready for the account."""
        admin = self._over(address)
        deadline = self.clock() + self.ready_seconds
        while True:
            try:
                admin.check()
                return admin
            except DatabaseServerUnavailable as exc:
                if self.runner.exited(self.host):
                    raise DatabaseServerError(
                        f"{self.host} exited at its start: {self.runner.tail(self.host)}"
                    ) from exc
                if self.clock() > deadline:
                    raise DatabaseServerUnavailable(
                        f"{self.host} did not answer within {self.ready_seconds:.0f} s: {exc}"
                    ) from exc
            self.sleep(POLL_SECONDS)

    def drop(self, account: Account) -> None:
        self.runner.remove(self.host)

    def rotate_password(self, account: Account) -> Credentials:
        return self._admin().rotate_password(account)

    def add_credential(self, account: Account) -> Rotated:
        return self._admin().add_credential(account)

    def revoke_credential(self, account: Account, retiring: str) -> None:
        self._admin().revoke_credential(account, retiring)

    def credentials(self, account: Account, password: str) -> Credentials:
        # Pure: the shared provider's credentials name the alias and touch no server.
        return self.shared(self.engine, self._admin_url, self.host, self.port).credentials(
            account, password
        )

    def usage(self, account: Account) -> Usage:
        return self._admin().usage(account)

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        self._admin().set_write_allowed(account, allowed)
