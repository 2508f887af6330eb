"""The errors of the database providers: each a BerthError with a status and a code."""

from __future__ import annotations

from berth.errors import BerthError, Conflict, InvalidInput, NotFound


class InvalidDatabaseName(InvalidInput):
    code = "invalid_database_name"


class UnknownEngine(InvalidInput):
    code = "unknown_engine"


class DatabaseExists(Conflict):
    code = "database_exists"


class DatabaseNotFound(NotFound):
    code = "database_not_found"


class DatabaseServerError(BerthError):
    """The database server refused or failed an administrative statement."""

    status = 502
    code = "database_server_error"


class DatabaseServerUnavailable(DatabaseServerError):
    """The database server cannot be reached (down, wrong address or admin credentials)."""

    status = 503
    code = "database_server_unavailable"


class DatabaseServerUnsafe(DatabaseServerError):
    """The server is configured so that tenants' accounts would not be isolated (e.g. an open
    default user): Berth refuses to place tenants on it."""

    code = "database_server_unsafe"
