"""One exception tree for the whole gateway.

Code raises these; only the edge (``server/``) turns an :class:`APIError` into OpenAI's error
JSON ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import ClassVar, Final

import msgspec

UNDECODABLE: Final = (msgspec.DecodeError, RecursionError)
"""What decoding untrusted JSON with msgspec raises: malformed input, or containers nested
deeper than the interpreter's recursion limit (a ``RecursionError``, not a ``DecodeError``)."""


class AuditgateError(Exception):
    """Base of every error auditgate raises on purpose."""


class ConfigError(AuditgateError):
    """A setting is missing or invalid; raised at startup and names the variable."""


class SinkError(AuditgateError):
    """A sink failed to write a batch; the bus retries it."""


class APIError(AuditgateError):
    """An error a client sees, with OpenAI's fields."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    close_connection: ClassVar[bool] = False
    """Close the connection after this error (the request was not read to its end)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code  # type: ignore[misc]

    def to_dict(self) -> dict[str, object]:
        """OpenAI's error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError):
    """The request is malformed or names something that does not exist (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    """Missing or invalid API key (401)."""

    status_code = 401
    error_type = "invalid_request_error"


class NotFoundError(APIError):
    """The resource does not exist, or is not visible to this caller (404)."""

    status_code = 404
    error_type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    """The request body is over the configured limit (413)."""

    status_code = 413
    error_type = "invalid_request_error"


class RequestTimeoutError(APIError):
    """The request's head or body did not arrive in time (408); the connection is closed."""

    status_code = 408
    error_type = "invalid_request_error"
    close_connection = True


class HeaderFieldsTooLargeError(APIError):
    """The request line and headers are over the limit (431); the connection is closed."""

    status_code = 431
    error_type = "invalid_request_error"
    close_connection = True


class UpstreamError(APIError):
    """The engine failed: bad gateway, timeout, or an error the upstream returned."""

    status_code = 502
    error_type = "api_error"


class ServiceUnavailableError(APIError):
    """The gateway cannot take this request now (503): e.g. the durable spool is full."""

    status_code = 503
    error_type = "server_error"
