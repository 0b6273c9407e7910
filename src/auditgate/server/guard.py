"""The last line of defence of the Starlette routes: an unexpected exception is OpenAI's 500.

Starlette answers an exception that no handler turned into a response with a plain-text
``Internal Server Error`` and re-raises it to the server, which logs it and closes the
connection.  :class:`ErrorGuard` sits inside that, just outside the exception handlers (which
answer :class:`~auditgate.errors.APIError` and Starlette's ``HTTPException``), so a client gets
OpenAI's error JSON like every other error and its connection stays usable.
"""

from __future__ import annotations

import logging
from typing import Final

from auditgate.errors import APIError
from auditgate.server.wire import ASGIApp, Message, Receive, Scope, Send, send_error

log = logging.getLogger("auditgate")

INTERNAL_ERROR: Final = APIError("The server had an error while processing your request.")
"""What a client is told (500, ``server_error``): the exception's text stays in the log, since it
may hold details of the store that are not the client's business."""


class ErrorGuard:
    """ASGI middleware: every exception from ``app`` is logged with its traceback and, when the
    response has not started, answered with :data:`INTERNAL_ERROR`.

    A response that has started cannot be turned into an error: the exception goes on to the
    server, which logs it and closes the connection, so the client sees a broken response rather
    than a truncated one that looks whole.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            # repr: the path is the client's text (it may hold line breaks).
            log.exception("unexpected error answering %s %r", scope["method"], scope["path"])
            await send_error(send, INTERNAL_ERROR)
