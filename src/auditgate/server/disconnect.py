"""How a raw-ASGI handler learns that its client went away (chat, legacy completions,
embeddings, Responses, pass-through): :class:`Watch` reads ``http.disconnect`` while the handler
works and cancels the request's task; :func:`uncancel` then swallows that cancellation, so the
handler can record ``cancelled`` and answer 499 instead of dying with it."""

from __future__ import annotations

import asyncio

from auditgate.server.wire import Receive


class Watch:
    """Cancels the request's task when the client disconnects while ``active``."""

    __slots__ = ("active", "gone", "task")

    def __init__(self) -> None:
        self.active = True
        self.gone = False
        self.task = asyncio.current_task()

    async def run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self.active and self.task is not None:
                    self.task.cancel()
                return


def uncancel() -> None:
    """Swallow the cancellation the client's disconnect caused (the current task's)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
