"""An OpenAI-compatible upstream: its URL, and what its failures become for the client.

:func:`parse_upstream` checks a base URL once (http(s), a host, no credentials in it) and keeps
only ``host:port`` for messages and logs.  The other functions turn what can go wrong with an
upstream into :class:`~auditgate.errors.APIError`: an OpenAI-style 4xx body is relayed as an
:class:`UpstreamRejection` with the upstream's own status, type, param and code; everything else
becomes a 502 (or a 504 for a timeout) whose ``code`` says what happened.  No message here ever
holds more of the URL than ``host:port``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Final

import aiohttp
import msgspec
from yarl import URL

from auditgate.errors import UNDECODABLE, APIError, ConfigError, UpstreamError

MAX_ERROR_BODY: Final = 1 << 20
"""An error body is read up to about this many bytes."""

_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class UpstreamRejection(APIError):
    """A 4xx the upstream returned, relayed with its own status, type, param and code."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, status_code=status_code)
        self.error_type = error_type  # type: ignore[misc]  # per instance, like status_code


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream base URL, parsed once."""

    chat_url: URL
    """``{base}/chat/completions``."""
    completions_url: URL
    """``{base}/completions`` (legacy text completions)."""
    embeddings_url: URL
    """``{base}/embeddings``."""
    models_url: URL
    """``{base}/models``."""
    label: str
    """``host:port`` for messages and logs: never the path, the query or credentials."""


def parse_upstream(base: str) -> Upstream:
    """``base`` (``http(s)://host[:port]/path``) checked and parsed; ConfigError otherwise."""
    url = URL(base.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"upstream URL {url.with_user(None)!s} must be http(s)://host[:port]/path"
        )
    if url.user is not None or url.password is not None:
        raise ConfigError(f"upstream URL for {url.host}: credentials in the URL are not allowed")
    return Upstream(
        chat_url=URL(f"{url}/chat/completions"),
        completions_url=URL(f"{url}/completions"),
        embeddings_url=URL(f"{url}/embeddings"),
        models_url=URL(f"{url}/models"),
        label=f"{url.host}:{url.port}",
    )


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """An error body, at most about ``MAX_ERROR_BODY`` bytes (a longer one is cut)."""
    parts: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        part = await response.content.readany()
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def unreachable(upstream: Upstream, exc: aiohttp.ClientError) -> UpstreamError:
    """502 ``upstream_unreachable``: refused, reset, unresolvable, closed before answering."""
    # os.strerror gives the same words whichever event loop made the error ("Connection refused").
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "connection closed before a response"
    elif isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        reason = os.strerror(exc.errno)
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror  # e.g. a resolver error: "Name or service not known"
    else:
        reason = type(exc).__name__
    return UpstreamError(
        f"upstream unreachable: {upstream.label}: {reason}", code="upstream_unreachable"
    )


def incomplete(upstream: Upstream, exc: aiohttp.ClientError) -> UpstreamError:
    """502 ``upstream_incomplete``: the connection was lost in the middle of a response."""
    return UpstreamError(
        f"upstream {upstream.label} connection lost mid-response ({type(exc).__name__})",
        code="upstream_incomplete",
    )


def invalid(upstream: Upstream, what: str) -> UpstreamError:
    """502 ``upstream_invalid_response``: ``what`` the upstream sent instead of the API's shape."""
    return UpstreamError(f"upstream {upstream.label} sent {what}", code="upstream_invalid_response")


def message_of(error: object) -> str:
    """The ``message`` of an error object, or the object as text."""
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) else str(error)
    return str(error)


def error_fields(body: bytes) -> tuple[str, str | None, str | None, str | None] | None:
    """``(message, type, param, code)`` of an OpenAI-style error body; ``None`` if it is not one.

    Accepts OpenAI's ``{"error": {...}}``, vLLM's flat ``{"object": "error", "message", ...}`` and
    FastAPI's ``{"detail": "..."}``.
    """
    try:
        decoded = _decode_object(body)
    except UNDECODABLE:
        return None
    error = decoded.get("error")
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        if decoded.get("object") == "error":
            error = decoded
        elif isinstance(decoded.get("detail"), str):
            return decoded["detail"], None, None, None
        else:
            return None
    message = error.get("message")
    if not isinstance(message, str):
        return None
    error_type, param, code = error.get("type"), error.get("param"), error.get("code")
    return (
        message,
        error_type if isinstance(error_type, str) else None,
        param if isinstance(param, str) else None,
        None if code is None else str(code),
    )
