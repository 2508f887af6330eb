"""Pure rules: a tenant's database name, and the server-side identifiers Berth derives.

A tenant's name is only a label in Berth's store. Everything that reaches a server (database,
role/user, Redis key prefix) is derived from the ids (tenant id, database id) through a hash,
so quotes, ``;``, ``%``, ``_`` (a MySQL grant wildcard), unicode or a reserved word in the
tenant's text can never reach a statement, and the names other tenants can list on a shared
server (``pg_database``, ``pg_roles``) say nothing about whose database it is.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from berth.databases.errors import InvalidDatabaseName, UnknownEngine

Engine = Literal["postgres", "mariadb", "redis", "memcached"]
ENGINES: Final[tuple[Engine, ...]] = ("postgres", "mariadb", "redis", "memcached")

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9-]{0,39}")
MAX_NAME_LENGTH: Final = 40

# Names that mean something on a server, or would read as the platform's own: refused even
# though they never reach a server, so no tenant can present a database as "mysql" or "postgres".
_COMMON_RESERVED: Final = frozenset({"admin", "berth", "default", "root", "system", "test"})
RESERVED: Final[dict[Engine, frozenset[str]]] = {
    "postgres": frozenset({"postgres", "template0", "template1", "pg-catalog", "public"}),
    "mariadb": frozenset({"mysql", "information-schema", "performance-schema", "sys", "mariadb"}),
    "redis": frozenset({"redis", "default"}),
    "memcached": frozenset({"memcached"}),
}
# Every engine's reserved words are refused on every engine: a tenant moving a database between
# engines keeps its name valid, and "mysql" is no better a PostgreSQL database name.
_ALL_RESERVED: Final = _COMMON_RESERVED.union(*RESERVED.values()) | {
    "information_schema",
    "performance_schema",
    "pg_catalog",
}
# Every reserved name, for the API's document (it states them as refused).
ALL_RESERVED: Final[frozenset[str]] = _ALL_RESERVED

_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9]{1,64}")


def parse_engine(value: object) -> Engine:
    if not isinstance(value, str) or value not in ENGINES:
        raise UnknownEngine(f"unknown database engine; choose one of {', '.join(ENGINES)}")
    return value


def validate_name(name: object, engine: object) -> str:
    """The tenant's database name, checked: ``^[a-z][a-z0-9-]{0,39}$`` and not reserved."""
    parse_engine(engine)
    if not isinstance(name, str) or not name:
        raise InvalidDatabaseName("a database name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidDatabaseName(f"a database name has at most {MAX_NAME_LENGTH} characters")
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidDatabaseName(
            "a database name starts with a lowercase letter and has only lowercase letters, "
            "digits and hyphens"
        )
    if name in _ALL_RESERVED:
        raise InvalidDatabaseName(f"{name!r} is a reserved name")
    return name


@dataclass(frozen=True)
class ServerNames:
    """The identifiers one tenant database has on its server: lowercase letters and digits only
    (no ``_`` or ``%``, which are wildcards in MySQL grants), 26 characters (within PostgreSQL's
    63, MariaDB's 64 for a database and 80 for a user)."""

    database: str
    user: str
    # PostgreSQL only: the NOLOGIN role that owns the database's objects while it is over quota.
    owner: str
    # Redis only: every key and channel of the database starts with it.
    key_prefix: str


def server_names(tenant_id: str, database_id: str) -> ServerNames:
    for value in (tenant_id, database_id):
        if not isinstance(value, str) or _ID_PATTERN.fullmatch(value) is None:
            # Ids are Berth's own (hex); anything else is a bug, never tenant input.
            raise ValueError("tenant and database ids are 1-64 ASCII letters or digits")
    digest = hashlib.blake2b(
        f"{tenant_id}/{database_id}".encode(), digest_size=12, person=b"berth-db"
    ).hexdigest()
    return ServerNames(
        database=f"bd{digest}",
        user=f"bu{digest}",
        owner=f"bo{digest}",
        key_prefix=f"bd{digest}:",
    )


def new_password() -> str:
    """32 random characters from ``[A-Za-z0-9]``: URL-safe as is, no quoting in any client."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(32))
