"""The interface every engine provider implements, and the values it passes around.

A provider administers one shared server with the admin credentials Berth keeps; tenants only
ever get the ``Credentials`` of their own database. Every identifier it sends is derived from
ids (``names.server_names``) and quoted by the engine's own rules; passwords travel as
parameters or as hashes, never pasted into a statement.

A MongoDB provider fits the same shape: ``create`` runs ``createUser`` on the database named
``names.database`` with ``roles: [{role: "readWrite", db: <that database>}]`` (plus ``dbAdmin``
for indexes) and no role on any other database, so isolation is MongoDB's own; ``drop`` is
``dropDatabase`` + ``dropUser``; ``rotate_password`` is ``updateUser`` with a new ``pwd``;
``usage`` is ``dbStats`` (``storageSize`` + ``indexSize``) and ``currentOp`` filtered on the
user for connections; ``set_write_allowed(False)`` is ``updateUser`` with only the ``read`` role
(``True`` restores ``readWrite``); ``check`` is ``ping`` + ``connectionStatus`` as the admin;
its ``Credentials.url`` is ``mongodb://user:password@host:port/<database>?authSource=<database>``
under ``MONGODB_URL``. What is missing is only a server to test it against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from berth.databases.names import Engine, ServerNames, server_names, validate_name


@dataclass(frozen=True)
class Account:
    """One tenant database as a provider sees it: the ids (which the server names derive from),
    the tenant's label (checked, never sent to a server) and the plan's limits."""

    tenant_id: str
    database_id: str
    name: str
    engine: Engine
    # Concurrent connections the plan allows (PostgreSQL CONNECTION LIMIT, MariaDB
    # MAX_USER_CONNECTIONS); Redis has no per-user limit and ignores it.
    connection_limit: int = 20
    # The plan's size in MB: a dedicated server's memory (Memcached's -m); shared servers'
    # providers measure against it elsewhere and ignore it here. None: the engine's default.
    size_mb: int | None = None
    # The login the URL names (PostgreSQL, MariaDB: berth.databases.rotation); empty: the
    # account's first (``names.user``), as before its first rotation.
    login: str = ""
    names: ServerNames = field(init=False)

    def __post_init__(self) -> None:
        validate_name(self.name, self.engine)
        if not isinstance(self.connection_limit, int) or not 1 <= self.connection_limit <= 10_000:
            raise ValueError("connection_limit is between 1 and 10000")
        object.__setattr__(self, "names", server_names(self.tenant_id, self.database_id))


_SCHEMES: dict[Engine, str] = {
    "postgres": "postgresql",
    "mariadb": "mysql",
    "redis": "redis",
    "memcached": "memcached",
}
ENV_VARS: dict[Engine, str] = {
    "postgres": "DATABASE_URL",
    "mariadb": "DATABASE_URL",
    "redis": "REDIS_URL",
    "memcached": "MEMCACHED_SERVERS",
}


@dataclass(frozen=True)
class Credentials:
    """What an app gets: the URL under ``env_var`` (and, for Redis, the key prefix it must put
    before every key). ``host``/``port`` are the address tenants' instances use, which may differ
    from the address Berth administers the server through."""

    engine: Engine
    host: str
    port: int
    database: str
    username: str
    password: str = field(repr=False)
    key_prefix: str = ""

    @property
    def env_var(self) -> str:
        return ENV_VARS[self.engine]

    @property
    def url(self) -> str:
        if self.engine == "memcached":
            # MEMCACHED_SERVERS is a list of host:port, as memcached clients take it: no user.
            return f"{self.host}:{self.port}"
        user = quote(self.username, safe="")
        password = quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "0" if self.engine == "redis" else quote(self.database, safe="")
        return f"{_SCHEMES[self.engine]}://{user}:{password}@{host}:{self.port}/{path}"

    def env(self) -> dict[str, str]:
        env = {self.env_var: self.url}
        if self.key_prefix:
            env["REDIS_KEY_PREFIX"] = self.key_prefix
        return env


@dataclass(frozen=True)
class Rotated:
    """A second credential, valid already, and what ``revoke_credential`` takes to refuse the
    one before it (the old login's name, or the old passwords' hashes for Redis)."""

    credentials: Credentials
    retiring: str


@dataclass(frozen=True)
class Usage:
    bytes_used: int
    connections: int


class Provider(Protocol):
    """One shared server of one engine, administered with Berth's admin credentials.

    Every method raises ``DatabaseServerUnavailable`` when the server cannot be reached and
    ``DatabaseServerError`` when it refuses a statement; nothing else escapes.
    """

    engine: Engine

    def check(self) -> None:
        """The server answers the admin, and is safe to place tenants on (no open default
        account); raises otherwise."""

    def prepare(self) -> None:
        """Make a newly registered server ready for tenants (idempotent): e.g. take from PUBLIC
        the right to connect to the server's own maintenance databases."""

    def exists(self, account: Account) -> bool:
        """Whether any of the account's server-side objects (database, user) exist."""

    def create(self, account: Account) -> Credentials:
        """Create the user and its database; ``DatabaseExists`` if either is already there.
        A failure half-way removes what was created."""

    def drop(self, account: Account) -> None:
        """Remove the database, its data and its user; dropping a missing one is a no-op.
        Sessions still connected are ended."""

    def rotate_password(self, account: Account) -> Credentials:
        """A new password for the account's current login, every other one refused at once
        (a delete closes a database with it); sessions already open keep running."""

    def add_credential(self, account: Account) -> Rotated:
        """A new password, valid at once, while the current one keeps working too (a lossless
        rotation: apps that open a connection per request go on with the old one until their
        new release serves). The old one goes with ``revoke_credential``."""

    def revoke_credential(self, account: Account, retiring: str) -> None:
        """The credential ``add_credential`` set aside is refused from now on (idempotent);
        sessions opened with it are ended where the engine can tell them apart."""

    def credentials(self, account: Account, password: str) -> Credentials:
        """The credentials for ``password`` (which Berth keeps; servers store only hashes)."""

    def usage(self, account: Account) -> Usage:
        """Bytes the database holds on the server, and its open connections."""

    def set_write_allowed(self, account: Account, allowed: bool) -> None:
        """The size quota's lever: ``False`` refuses writes that grow the database (reads keep
        working), ``True`` gives them back. Idempotent; effective for sessions already open."""
