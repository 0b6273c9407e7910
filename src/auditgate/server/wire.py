"""Raw-ASGI wire helpers for the hot path: the ASGI types, reading a bounded body, sending JSON
and errors.

The chat endpoint speaks ASGI directly (no framework request/response objects per call) because
it is the path every audited request takes; everything else goes through Starlette.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import msgspec

from auditgate.errors import (
    APIError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from auditgate.server.deadlines import Deadlines

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE: Final = (b"content-type", b"application/json")
CLOSE: Final = (b"connection", b"close")
_encode: Final = msgspec.json.Encoder().encode


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BodyDeadlines:
    """Ends request-body reads that outlast ``timeout_s`` (``AUDITGATE_BODY_TIMEOUT``): a client
    that sends its headers and then stalls, or trickles its body, would otherwise hold a
    connection and a task for ever.  The reading task is cancelled and :func:`read_body` raises
    :class:`RequestTimeoutError` instead (a 408, and the connection is closed).  One timer for
    all reads (:class:`~auditgate.server.deadlines.Deadlines`): a read costs a dict entry."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadlines: Deadlines[asyncio.Task[Any]] = Deadlines(timeout_s, self._cancel)
        self._cancelled: set[asyncio.Task[Any]] = set()

    def watch(self) -> asyncio.Task[Any] | None:
        """Start the deadline of the current task's read (None outside a task)."""
        task = asyncio.current_task()
        if task is not None:
            self._deadlines.start(task, task.get_loop())
        return task

    def done(self, task: asyncio.Task[Any]) -> bool:
        """End ``task``'s read; True if its deadline cancelled it."""
        self._deadlines.stop(task)
        if task in self._cancelled:
            self._cancelled.remove(task)
            return True
        return False

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        self._cancelled.add(task)
        task.cancel()


async def read_body(
    scope: Scope, receive: Receive, limit: int, deadlines: BodyDeadlines | None = None
) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes with a 413, and (with
    ``deadlines``) one that takes too long to arrive with a 408."""
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
    task = deadlines.watch() if deadlines is not None else None
    try:
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
    except asyncio.CancelledError:
        if task is None or deadlines is None:
            raise
        mine, task = task, None  # its read ends here, not again below
        if not deadlines.done(mine):
            raise  # cancelled for another reason (shutdown)
        mine.uncancel()
        raise RequestTimeoutError(
            f"The request body did not arrive within {deadlines.timeout_s:g} seconds.",
            code="request_timeout",
        ) from None
    finally:
        if task is not None and deadlines is not None:
            deadlines.done(task)
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
    if error.close_connection:
        headers = [*(headers or []), CLOSE]
    await send_json(send, error.status_code, _encode(error.to_dict()), headers)


def encode_json(value: object) -> bytes:
    return _encode(value)
