"""The operator's shared database servers: register (checked and prepared first), list, drain,
remove. Placement of tenants' databases (``least_loaded``) lives here too: it reads the servers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from berth.databases.dedicated import DEDICATED, NAME_PREFIX
from berth.databases.errors import (
    DatabaseNotFound,
    DatabaseServerError,
    DatabaseServerUnavailable,
)
from berth.databases.names import Engine, parse_engine
from berth.databases.provider import Usage
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.services.databases_access import (
    ProviderFactory,
    ServerAddress,
    account_of,
    address_of,
    operator_call,
    parse_admin_url,
    provider,
)
from berth.store.tables import DbServer, ManagedDatabase, new_id

SERVER_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,39}")
HOST: Final = re.compile(r"[A-Za-z0-9.:-]{1,253}")
MAX_CAPACITY: Final = 100_000
DEFAULT_CAPACITY: Final = 500
STATES: Final = ("active", "draining")


class NoDatabaseServer(Conflict):
    """No server can take a new database of the engine (none, all draining or full): the
    platform's state refuses it until the operator adds one, not a server that failed."""

    code = "no_database_server"


@dataclass(frozen=True)
class ServerLoad:
    server: DbServer
    databases: int  # every database it holds, deleted ones kept for retention included
    deleted: int


def validate_server_name(name: object) -> str:
    if not isinstance(name, str) or SERVER_NAME.fullmatch(name) is None:
        raise InvalidInput(
            "a server name is 1-40 lowercase letters, digits and hyphens, starting with a letter",
            code="invalid_name",
        )
    if name.startswith(NAME_PREFIX):
        # The names of the servers Berth runs for one database each (berth.databases.dedicated).
        raise InvalidInput(
            f"server names starting {NAME_PREFIX!r} are Berth's", code="invalid_name"
        )
    return name


def _validate_host(host: str) -> str:
    if HOST.fullmatch(host) is None or host.startswith("-"):
        raise InvalidInput("the host is a host name or an IP address", code="invalid_host")
    return host


def _validate_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput("the port is between 1 and 65535", code="invalid_port")
    return port


def _validate_capacity(capacity: int) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise InvalidInput("the capacity is a number of databases", code="invalid_capacity")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidInput(
            f"the capacity is between 1 and {MAX_CAPACITY} databases", code="invalid_capacity"
        )
    return capacity


def _shared_engine(engine: object) -> Engine:
    parsed = parse_engine(engine)
    if parsed == "memcached":
        raise InvalidInput(
            "Memcached has no users to isolate tenants with: it is never a shared server "
            "(dedicated Memcached is not available yet)",
            code="engine_not_shared",
        )
    return parsed


def add_server(
    session: Session,
    factory: ProviderFactory,
    name: str,
    engine: str,
    admin_url: str,
    host: str | None = None,
    port: int | None = None,
    capacity: int = DEFAULT_CAPACITY,
) -> DbServer:
    """Register a server once its provider's ``check()`` and ``prepare()`` pass; a server that
    fails them is refused with the reason (its own words, without the admin's password) and
    nothing is stored."""
    name = validate_server_name(name)
    kind = _shared_engine(engine)
    url_host, url_port = parse_admin_url(kind, admin_url)
    address = ServerAddress(
        kind,
        admin_url,
        _validate_host(host if host is not None else url_host),
        _validate_port(port if port is not None else url_port),
    )
    capacity = _validate_capacity(capacity)
    if session.scalar(select(DbServer.id).where(DbServer.name == name)) is not None:
        raise Conflict(f"a database server named {name!r} exists", code="db_server_exists")
    p = provider(factory, address)
    try:
        with operator_call(address):
            p.check()
            p.prepare()
    except DatabaseServerUnavailable:
        raise  # 503: down, or it refused the admin's login; the message says which
    except DatabaseServerError as exc:
        # It answered, and is not fit for tenants (unsafe, or the admin lacks rights): the
        # operator's request is what is refused, with the server's reason.
        raise InvalidInput(f"the server is refused: {exc.message}", code=exc.code) from None
    server = DbServer(
        id=new_id(),
        name=name,
        engine=kind,
        admin_url=admin_url,
        host=address.host,
        port=address.port,
        capacity=capacity,
        state="active",
    )
    session.add(server)
    session.commit()
    return server


def get_server(session: Session, name: str) -> DbServer:
    # A dedicated server is one tenant database's own, not the operator's to drain or remove.
    server = session.scalar(
        select(DbServer).where(DbServer.name == name, DbServer.state != DEDICATED)
    )
    if server is None:
        raise NotFound(f"database server {name!r} not found", code="db_server_not_found")
    return server


def _counts(session: Session) -> dict[str, tuple[int, int]]:
    rows = session.execute(
        select(
            ManagedDatabase.server_id,
            func.count(ManagedDatabase.id),
            func.count(ManagedDatabase.deleted_at),
        ).group_by(ManagedDatabase.server_id)
    )
    return {sid: (int(total), int(deleted)) for sid, total, deleted in rows}


def list_servers(session: Session) -> list[ServerLoad]:
    counts = _counts(session)
    servers = session.scalars(
        select(DbServer).where(DbServer.state != DEDICATED).order_by(DbServer.engine, DbServer.name)
    )
    return [ServerLoad(s, *counts.get(s.id, (0, 0))) for s in servers]


def server_load(session: Session, server: DbServer) -> ServerLoad:
    return ServerLoad(server, *_counts(session).get(server.id, (0, 0)))


@dataclass(frozen=True)
class ServerUsage:
    reachable: bool
    message: str
    bytes_used: int
    connections: int


def measure(session: Session, factory: ProviderFactory, server: DbServer) -> ServerUsage:
    """What its databases hold and how many connections they have open, asked of the server
    now; a server that does not answer says so (``reachable`` false, its reason)."""
    address = address_of(server)
    total = Usage(0, 0)
    try:
        p = provider(factory, address)
        with operator_call(address):
            p.check()
            dbs = session.scalars(
                select(ManagedDatabase).where(ManagedDatabase.server_id == server.id)
            )
            for db in dbs:
                try:
                    used = p.usage(account_of(db))
                except DatabaseNotFound:
                    continue  # gone from the server (by hand): nothing of it to count
                total = Usage(
                    total.bytes_used + used.bytes_used, total.connections + used.connections
                )
    except BerthError as exc:
        return ServerUsage(False, exc.message, 0, 0)
    return ServerUsage(True, "", total.bytes_used, total.connections)


def set_state(session: Session, name: str, state: str) -> DbServer:
    """``draining``: no new database goes there (its databases stay and keep working);
    ``active``: it takes new ones again."""
    if state not in STATES:
        raise InvalidInput(f"a server is one of {', '.join(STATES)}", code="invalid_state")
    server = get_server(session, name)
    server.state = state
    session.commit()
    return server


def remove_server(session: Session, name: str) -> None:
    """Forget a server that holds no database, not even a deleted one still kept for its
    retention: a tenant's data is never lost to an operator's command, and a kept database is
    only dropped by the purge pass. There is no --force: drain it, and wait for its tenants'
    databases to be deleted and purged."""
    server = get_server(session, name)
    load = server_load(session, server)
    if load.databases:
        live = load.databases - load.deleted
        raise Conflict(
            f"database server {name!r} still holds {live} tenant databases and {load.deleted} "
            "deleted ones kept until their purge; drain it (no new ones go there) and remove "
            "it once it holds none",
            code="db_server_in_use",
        )
    session.delete(server)
    session.commit()


def least_loaded(session: Session, engine: Engine) -> DbServer:
    """The active server of the engine with the smallest share of its capacity used (ties: the
    fewest databases, then the name); none with room is a 409 that says why."""
    servers = list(session.scalars(select(DbServer).where(DbServer.engine == engine)))
    counts = _counts(session)
    active = [s for s in servers if s.state == "active"]
    room = [s for s in active if counts.get(s.id, (0, 0))[0] < s.capacity]
    if not room:
        if not servers:
            why = f"no {engine} database server is registered"
        elif not active:
            why = f"every {engine} database server is draining"
        else:
            why = f"every active {engine} database server is full"
        raise NoDatabaseServer(f"{why}; the platform operator has to add one")

    def load(s: DbServer) -> tuple[float, int, str]:
        used = counts.get(s.id, (0, 0))[0]
        return (used / s.capacity, used, s.name)

    return min(room, key=load)
