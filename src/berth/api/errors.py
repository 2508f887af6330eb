"""The one place that maps errors to responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth.errors import BerthError, EngineError, EngineUnavailable

log = logging.getLogger(__name__)

# PostgreSQL's codes for "another transaction got there first": unique violation,
# serialization failure, deadlock detected, lock not available.
_PG_CONFLICTS = frozenset({"23505", "40001", "40P01", "55P03"})
_SQLITE_CONFLICTS = ("UNIQUE constraint failed", "database is locked", "database table is locked")
CONFLICT_MESSAGE = "another change to the same thing happened at the same time; retry"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def is_write_conflict(exc: IntegrityError | OperationalError) -> bool:
    """A concurrent write lost a race (a unique version taken, a lock not had in time): the
    request was fine and may simply be retried. Anything else (a NOT NULL or foreign key
    violation, a lost connection) is a fault of ours, not this."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_CONFLICTS:
        return True
    return any(text in str(orig) for text in _SQLITE_CONFLICTS)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BerthError)
    async def berth_error(_: Request, exc: BerthError) -> JSONResponse:
        # Engine errors (RuntimeFailure 502, EngineUnavailable 503) are BerthErrors too: an
        # engine that is down asks the client to come back, it is not a fault of the request.
        headers = {"Retry-After": "5"} if isinstance(exc, EngineUnavailable) else None
        if isinstance(exc, EngineError):
            log.warning("engine error answered %s: %s", exc.status, exc.message)
        return JSONResponse(
            error_body(exc.code, exc.message), status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid", _describe_validation(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(DataError)
    async def data_error(_: Request, exc: DataError) -> JSONResponse:
        # The store refused a value of the request as data (PostgreSQL: a NUL byte in text, a
        # number out of range): bad input, as the checks before it would have said.
        log.info("the store refused a value: %s", exc.orig)
        return JSONResponse(
            error_body("invalid", "a value in the request is not valid"), status_code=422
        )

    @app.exception_handler(IntegrityError)
    @app.exception_handler(OperationalError)
    async def write_conflict(_: Request, exc: IntegrityError | OperationalError) -> JSONResponse:
        if not is_write_conflict(exc):
            log.error("store error", exc_info=exc)
            return JSONResponse(
                error_body("internal", "internal error; the server log has the details"),
                status_code=500,
            )
        log.info("a concurrent write lost a race: %s", exc.orig)
        return JSONResponse(error_body("conflict", CONFLICT_MESSAGE), status_code=409)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            error_body("internal", "internal error; the server log has the details"),
            status_code=500,
        )
