"""One exception root for Berth. The API maps these to ``{"error": {"code", "message"}}``."""

from __future__ import annotations


class BerthError(Exception):
    """Base of every error Berth raises on purpose. ``status`` is the HTTP status to answer."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidInput(BerthError):
    status = 422
    code = "invalid"


class NotFound(BerthError):
    status = 404
    code = "not_found"


class Conflict(BerthError):
    status = 409
    code = "conflict"


class Unauthorized(BerthError):
    status = 401
    code = "unauthorized"


class Forbidden(BerthError):
    status = 403
    code = "forbidden"


class PayloadTooLarge(BerthError):
    status = 413
    code = "too_large"


class QuotaExceeded(BerthError):
    status = 403
    code = "quota_exceeded"


class TooManyRequests(BerthError):
    status = 429
    code = "too_many_requests"


class EngineError(BerthError):
    """The container engine refused or failed an operation."""

    status = 502
    code = "engine_error"


class RuntimeFailure(EngineError):
    """Raised by a runtime (berth.runtime) when the engine answers an operation with an error."""


class EngineUnavailable(RuntimeFailure):
    """The container engine cannot be reached (down, or its socket is missing): try again later.
    A RuntimeFailure too, so code that handles any engine failure handles this one."""

    status = 503
    code = "engine_unavailable"


class BuildFailed(BerthError):
    status = 422
    code = "build_failed"


class ProxyConfigError(BerthError):
    """nginx rejected a rendered configuration; the previous one stays live."""

    status = 500
    code = "proxy_config_invalid"
