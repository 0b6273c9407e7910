"""Small raw-ASGI helpers for the hot path: read a bounded body, send JSON, send errors.

The chat endpoint speaks ASGI directly (no framework request/response objects per call) because
it is the path every audited request takes; everything else goes through Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec

from auditgate.errors import APIError, InvalidRequestError, PayloadTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE: Final = (b"content-type", b"application/json")
_encode: Final = msgspec.json.Encoder().encode


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes with a 413."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequestError("Invalid Content-Length header.") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than the {limit}-byte limit of this gateway.",
        code="request_too_large",
    )


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON response in one body message."""
    out = [JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: APIError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """OpenAI's error JSON with the error's status code."""
    await send_json(send, error.status_code, _encode(error.to_dict()), headers)


def encode_json(value: object) -> bytes:
    return _encode(value)
