"""One error root for the whole appliance; narrow subclasses carry an HTTP status and a code."""

from __future__ import annotations


class ApplianceError(Exception):
    """Root of every error the appliance raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class ConfigError(ApplianceError, ValueError):
    """Settings that cannot be used; the process exits with status 2 before binding."""

    status = 400
    code = "config_error"
    type = "invalid_request_error"


class BadRequest(ApplianceError, ValueError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class Unauthorized(ApplianceError, PermissionError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"


class Forbidden(ApplianceError, PermissionError):
    status = 403
    code = "forbidden"
    type = "invalid_request_error"


class NotFound(ApplianceError, LookupError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class Conflict(ApplianceError, ValueError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class PayloadTooLarge(ApplianceError, ValueError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class RateLimited(ApplianceError):
    status = 429
    code = "rate_limit_exceeded"
    type = "requests"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UpstreamError(ApplianceError, ConnectionError):
    """A target failed (connect error, 5xx, bad response)."""

    status = 502
    code = "upstream_error"
    type = "server_error"


class Unavailable(ApplianceError):
    status = 503
    code = "service_unavailable"
    type = "server_error"


class UpstreamTimeout(ApplianceError, TimeoutError):
    status = 504
    code = "upstream_timeout"
    type = "server_error"
