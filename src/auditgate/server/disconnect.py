"""How a raw-ASGI handler learns that its client went away (chat, legacy completions,
embeddings, Responses, pass-through): a watcher reads ``http.disconnect`` while the handler
works and cancels the request's task; :class:`Watching` runs the handler's work under it and
turns that cancellation into a 499, so the handler can record ``cancelled`` and answer 499
instead of dying with it::

    async with watching(receive) as watch:
        ...  # the work; set ``watch.active = False`` once nothing is left to cancel
        return 200
    return 499  # reached only when the client went away
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from auditgate.server.wire import Receive


class Watcher(Protocol):
    """What :class:`Watching` needs of a watch: whether its watcher may still cancel the task,
    and whether the client went away."""

    active: bool
    gone: bool


W = TypeVar("W", bound=Watcher)


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


class Watching(Generic[W]):
    """``async with Watching(watch, watch_coroutine) as watch:`` runs the block while
    ``watch_coroutine`` (started now, as a task) watches for the client's disconnect.

    On leaving, whatever happened: ``watch.active`` is cleared and the watcher stopped.  A
    cancellation the disconnect caused (``watch.gone``) is swallowed (:func:`uncancel`), so the
    statement after the block runs: the handler answers 499 there.  Any other exception, and a
    cancellation from elsewhere, goes on."""

    __slots__ = ("_watcher", "watch")

    def __init__(self, watch: W, watching: Coroutine[Any, Any, None]) -> None:
        self.watch = watch
        self._watcher = asyncio.ensure_future(watching)

    async def __aenter__(self) -> W:
        return self.watch

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        watch = self.watch
        watch.active = False
        self._watcher.cancel()
        if isinstance(exc, asyncio.CancelledError) and watch.gone:
            uncancel()
            return True
        return False


def watching(receive: Receive) -> Watching[Watch]:
    """:class:`Watching` with a :class:`Watch` reading ``receive``."""
    watch = Watch()
    return Watching(watch, watch.run(receive))


def uncancel() -> None:
    """Swallow the cancellation the client's disconnect caused (the current task's)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
