"""How the database services reach a server: the provider for a stored server, the account of a
stored database, and the errors a server raises turned into what the caller may read.

Providers are the only I/O of managed databases; the services take a ``ProviderFactory`` so
tests hand them a fake one (tests/databases/fake_provider.py) and the API a real one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from berth.databases.errors import (
    DatabaseExists,
    DatabaseNotFound,
    DatabaseServerError,
    DatabaseServerUnavailable,
)
from berth.databases.names import Engine, parse_engine
from berth.databases.provider import Account, Provider
from berth.databases.providers import provider_for
from berth.errors import BerthError, InvalidInput
from berth.store.tables import DbServer, ManagedDatabase

log = logging.getLogger(__name__)

# The schemes each engine's client takes in an admin URL.
ADMIN_SCHEMES: Final[dict[Engine, frozenset[str]]] = {
    "postgres": frozenset({"postgresql", "postgres"}),
    "mariadb": frozenset({"mysql", "mariadb"}),
    "redis": frozenset({"redis", "rediss"}),
    "memcached": frozenset(),
}
DEFAULT_PORTS: Final[dict[Engine, int]] = {
    "postgres": 5432,
    "mariadb": 3306,
    "redis": 6379,
    "memcached": 11211,
}
MAX_URL_LENGTH: Final = 2000


@dataclass(frozen=True)
class ServerAddress:
    """Everything a provider needs: the admin URL (secret) and the address tenants use."""

    engine: Engine
    admin_url: str = field(repr=False)
    host: str
    port: int


ProviderFactory = Callable[[ServerAddress], Provider]


def real_provider(address: ServerAddress) -> Provider:
    return provider_for(
        address.engine, address.admin_url, tenant_host=address.host, tenant_port=address.port
    )


def address_of(server: DbServer) -> ServerAddress:
    return ServerAddress(parse_engine(server.engine), server.admin_url, server.host, server.port)


def account_of(db: ManagedDatabase) -> Account:
    return Account(
        tenant_id=db.tenant_id,
        database_id=db.id,
        name=db.name,
        engine=parse_engine(db.engine),
        connection_limit=db.connection_limit,
        size_mb=db.size_mb,
        login=db.login or "",
    )


def parse_admin_url(engine: Engine, url: object) -> tuple[str, int]:
    """The URL's host and port, once it is a well-formed admin URL of the engine. The URL is
    never echoed back in an error: it holds the admin's password."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(
            f"the admin URL is required (at most {MAX_URL_LENGTH} characters)", code="invalid_url"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidInput("the admin URL has spaces or control characters", code="invalid_url")
    schemes = ADMIN_SCHEMES[engine]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("the admin URL is not a valid URL", code="invalid_url") from None
    if parts.scheme not in schemes:
        raise InvalidInput(
            f"a {engine} admin URL starts with {' or '.join(s + '://' for s in sorted(schemes))}",
            code="invalid_url",
        )
    if not parts.hostname:
        raise InvalidInput("the admin URL names no host", code="invalid_url")
    if not parts.username:
        raise InvalidInput("the admin URL names no admin user", code="invalid_url")
    if parts.query or parts.fragment:
        # Client options in a query could turn off TLS checks or point at other files.
        raise InvalidInput("the admin URL takes no query or fragment", code="invalid_url")
    return parts.hostname, port or DEFAULT_PORTS[engine]


def scrub(text: str, admin_url: str) -> str:
    """``text`` without the admin URL or its password (a client's error may quote them)."""
    secrets = [admin_url]
    try:
        password = urlsplit(admin_url).password
    except ValueError:
        password = None
    if password:
        secrets += [password, unquote(password)]
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def provider(factory: ProviderFactory, address: ServerAddress) -> Provider:
    try:
        return factory(address)
    except ValueError:
        raise InvalidInput("the admin URL is not valid", code="invalid_url") from None


@contextmanager
def operator_call(address: ServerAddress) -> Iterator[None]:
    """The server's own words, for the operator, without the admin's password."""
    try:
        yield
    except BerthError as exc:
        message = scrub(exc.message, address.admin_url)
        raise type(exc)(message, code=exc.code, status=exc.status) from None


@contextmanager
def tenant_call(server: DbServer, what: str) -> Iterator[None]:
    """A server's failure as tenants see it: that it failed and what to do, not the server's
    words (which speak of the admin's statements). The details go to the log, scrubbed."""
    try:
        yield
    except DatabaseServerUnavailable as exc:
        log.warning(
            "database server %s unavailable during %s: %s",
            server.name,
            what,
            scrub(exc.message, server.admin_url),
        )
        raise DatabaseServerUnavailable(
            f"the database server cannot be reached right now to {what}; try again later"
        ) from None
    except (DatabaseServerError, DatabaseNotFound, DatabaseExists) as exc:
        log.error(
            "database server %s failed %s: %s",
            server.name,
            what,
            scrub(exc.message, server.admin_url),
        )
        raise DatabaseServerError(
            f"the database server failed to {what}; try again later or ask the operator"
        ) from None
