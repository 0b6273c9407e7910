"""One timer for many deadlines: request bodies (``AUDITGATE_BODY_TIMEOUT``) and request heads
(``AUDITGATE_HEADER_TIMEOUT``) each get one per event loop, whatever the number of requests.

A timer per request (``asyncio.timeout``, ``loop.call_later``) cost ≈ 7 µs under uvloop; here
starting and stopping a deadline is a dict entry, and one timer ticks every :data:`SWEEP_S`
while any deadline is pending.  The price is precision: an item expires between ``timeout_s``
and a second after it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

SWEEP_S: Final = 1.0
"""How often pending deadlines are checked (while there are any)."""

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """Items that must be done within ``timeout_s``: ``expire(item)`` is called on the event
    loop for each that was started and not stopped in time (it is no longer pending then)."""

    def __init__(self, timeout_s: float, expire: Callable[[T], None]) -> None:
        self.timeout_s = timeout_s
        self._expire = expire
        self._ticks = math.ceil(timeout_s / SWEEP_S)
        self._tick = 0
        self._pending: dict[T, int] = {}
        """Each pending item with the tick it started at."""
        self._timer: asyncio.TimerHandle | None = None

    def start(self, item: T, loop: asyncio.AbstractEventLoop) -> None:
        """Start (or restart) ``item``'s deadline."""
        self._pending[item] = self._tick
        if self._timer is None:
            self._timer = loop.call_later(SWEEP_S, self._sweep, loop)

    def stop(self, item: T) -> None:
        """``item`` is done in time (or gone); nothing if it was not pending."""
        self._pending.pop(item, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick = tick = self._tick + 1
        late = tick - self._ticks
        for item in [item for item, start in self._pending.items() if start < late]:
            del self._pending[item]
            self._expire(item)
        self._timer = None
        if self._pending:
            self._timer = loop.call_later(SWEEP_S, self._sweep, loop)
