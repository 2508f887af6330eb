"""Memcached, always dedicated: one small container per tenant database.

Memcached has no users (SASL is off in the distro's build as Berth runs it), so nothing on a
shared server could keep one tenant's keys from another's: each database is its own server, and
its network is its only protection. The container joins the tenant's own network only, under
an alias made from the database's hash; nothing is published on the host, so neither another
tenant's containers (other bridges, which Docker isolates from each other) nor the public
ingress (which routes to app instances' published ports only) can reach it.

Size: ``-m`` is the plan's size in MB (item memory); past it memcached evicts least recently
used items, it never grows. The container's memory limit sits above that
(``container_memory_bytes``) for memcached's own hash table, threads and connection buffers, so
a full cache evicts rather than being OOM-killed.

There is no password to rotate (``rotate_password`` is refused, see ``NothingToRotate``), no
backup (a cache is rebuilt by its app; ``db backup`` is refused) and no write quota: the size
is enforced by eviction, so ``set_write_allowed`` changes nothing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Final

from berth.databases.dedicated import (
    DedicatedNotAvailable,
    DedicatedRunner,
    DedicatedSpec,
    server_name,
)
from berth.databases.errors import DatabaseServerError, DatabaseServerUnavailable
from berth.databases.names import Engine
from berth.databases.provider import Account, Credentials, Rotated, Usage
from berth.errors import InvalidInput
from berth.workloads.local import tenant_network

PORT: Final = 11211
MIN_SIZE_MB: Final = 16
MAX_SIZE_MB: Final = 4096  # a cache bigger than this is a server of its own, not a plan
DEFAULT_SIZE_MB: Final = 64
USER: Final = "65534:65534"  # nobody
PIDS_LIMIT: Final = 32  # memcached runs about ten threads with -t 2
NANO_CPUS: Final = 500_000_000
THREADS: Final = 2
READY_SECONDS: Final = 10.0
IO_TIMEOUT_SECONDS: Final = 3.0
# Connections memcached keeps for itself (listening sockets, its own pipes) beyond the plan's.
_RESERVED_CONNECTIONS: Final = 10


class NothingToRotate(InvalidInput):
    status = 400
    code = "nothing_to_rotate"


def validate_size_mb(size_mb: int) -> int:
    if isinstance(size_mb, bool) or not isinstance(size_mb, int):
        raise InvalidInput("size_mb is a number of MB", code="invalid_size")
    if not MIN_SIZE_MB <= size_mb <= MAX_SIZE_MB:
        raise InvalidInput(
            f"a Memcached size is between {MIN_SIZE_MB} MB and {MAX_SIZE_MB} MB",
            code="invalid_size",
        )
    return size_mb


def container_memory_bytes(size_mb: int) -> int:
    """The container's hard limit: the item memory plus a quarter plus 32 MB. Beyond ``-m``
    memcached 1.6 needs threads and connection buffers (the 32 MB; an idle one uses 1.7 MB)
    and its hash table, 8 bytes a bucket: it doubles once the items outnumber the buckets by
    half, and the old table stays while the items move, so both together are under
    ``16 * items`` bytes; an item takes at least a 96-byte slab chunk, so that is under
    ``size / 6``. Measured peaks of a cache written to three times its size: 19.7 MB at
    ``-m 16``, 68 MB at 64, 261 MB at 256."""
    return (size_mb + size_mb // 4 + 32) * 1024 * 1024


def container_memory_mb(size_mb: int) -> int:
    """The same limit in MB: what the tenant's memory quota counts for the database."""
    return container_memory_bytes(size_mb) // (1024 * 1024)


def command(size_mb: int, connections: int) -> tuple[str, ...]:
    return (
        "-p", str(PORT),
        "-U", "0",  # no UDP: memcached's UDP is an amplification vector and nobody needs it
        "-l", "0.0.0.0",  # the container's own addresses: its tenant network and loopback
        "-m", str(size_mb),
        "-c", str(connections + _RESERVED_CONNECTIONS),
        "-t", str(THREADS),
    )  # fmt: skip


def spec_for(account: Account, image: str) -> DedicatedSpec:
    size_mb = validate_size_mb(account.size_mb or DEFAULT_SIZE_MB)
    name = server_name(account.names.database)
    return DedicatedSpec(
        engine="memcached",
        name=name,
        image=image,
        command=command(size_mb, account.connection_limit),
        network=tenant_network(account.tenant_id),
        alias=name,
        port=PORT,
        memory_bytes=container_memory_bytes(size_mb),
        pids_limit=PIDS_LIMIT,
        nano_cpus=NANO_CPUS,
        user=USER,
        tenant_id=account.tenant_id,
        database_id=account.database_id,
    )


def credentials_for(account: Account) -> Credentials:
    """``MEMCACHED_SERVERS`` is ``host:port``: no user, no password (the network is the only
    protection)."""
    return Credentials(
        engine="memcached",
        host=server_name(account.names.database),
        port=PORT,
        database="",
        username="",
        password="",
    )


def ask(address: str, request: bytes, timeout: float = IO_TIMEOUT_SECONDS) -> bytes:
    """One text-protocol request, its answer up to ``END``/the first line. Raises
    DatabaseServerUnavailable when the server does not answer."""
    try:
        with socket.create_connection((address, PORT), timeout=timeout) as conn:
            conn.sendall(request)
            answer = b""
            while not (answer.endswith(b"END\r\n") or _one_line(request, answer)):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if len(answer) > 1 << 20:
                    raise DatabaseServerError("memcached answered more than 1 MB of stats")
            return answer
    except OSError as exc:
        raise DatabaseServerUnavailable(f"memcached at {address} does not answer: {exc}") from exc


def _one_line(request: bytes, answer: bytes) -> bool:
    return not request.startswith(b"stats") and answer.endswith(b"\r\n")


def parse_stats(answer: bytes) -> dict[str, str]:
    stats = {}
    for line in answer.decode("ascii", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return stats


class MemcachedProvider:
    """``Provider`` for a tenant's own memcached: ``create`` starts its container through the
    runner, ``drop`` removes it. ``image`` gives the image reference (built on first use);
    ``refuse_create`` says why no new one may start now ("": it may), while the ones there
    still work and can be deleted (an installation moved onto a Swarm keeps them)."""

    engine: Engine = "memcached"

    def __init__(
        self,
        runner: DedicatedRunner,
        image: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
        refuse_create: Callable[[], str] = lambda: "",
    ) -> None:
        self.runner, self.image, self.clock = runner, image, clock
        self.refuse_create = refuse_create

    def check(self) -> None:
        """Nothing to check before a database exists: the runner's engine answers."""
        self.runner.names()

    def prepare(self) -> None:
        return None

    def exists(self, account: Account) -> bool:
        return server_name(account.names.database) in self.runner.names()

    def create(self, account: Account) -> Credentials:
        why = self.refuse_create()
        if why:
            raise DedicatedNotAvailable(why)
        spec = spec_for(account, self.image())
        running = self.runner.run(spec)
        try:
            self._wait_ready(running.address)
        except DatabaseServerError:
            self.runner.remove(spec.name)
            raise
        return credentials_for(account)

    def _wait_ready(self, address: str) -> None:
        deadline = self.clock() + READY_SECONDS
        while True:
            try:
                if ask(address, b"version\r\n", timeout=1.0).startswith(b"VERSION "):
                    return
            except DatabaseServerUnavailable:
                if self.clock() > deadline:
                    raise
            if self.clock() > deadline:
                raise DatabaseServerError(f"memcached at {address} answers, but not VERSION")
            time.sleep(0.05)

    def drop(self, account: Account) -> None:
        self.runner.remove(server_name(account.names.database))

    def rotate_password(self, account: Account) -> Credentials:
        raise NothingToRotate(
            "a Memcached database has no password to rotate: its only protection is the "
            "tenant's network (to empty it, delete it and create it again)"
        )

    def add_credential(self, account: Account) -> Rotated:
        return Rotated(self.rotate_password(account), retiring="")  # refused, as a rotate

    def revoke_credential(self, account: Account, retiring: str) -> None:
        return None  # nothing was ever added

    def credentials(self, account: Account, password: str) -> Credentials:
        return credentials_for(account)

    def usage(self, account: Account) -> Usage:
        name = server_name(account.names.database)
        running = self.runner.find(name)
        if running is None:
            raise DatabaseServerUnavailable(f"{name} is not running")
        stats = parse_stats(ask(running.address, b"stats\r\n"))
        try:
            # Our own stats connection is counted in curr_connections.
            return Usage(int(stats["bytes"]), max(int(stats["curr_connections"]) - 1, 0))
        except (KeyError, ValueError):
            raise DatabaseServerError("memcached's stats lack bytes or curr_connections") from None

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        """No-op: the size is enforced by eviction, so a full cache never refuses writes."""
        return None
