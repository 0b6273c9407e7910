"""Logging helpers shared by every long-running part (bus, spool, sinks, consumer, middleware).

:class:`RateLimitedLog` keeps a failure that repeats per request (a full queue, a sink that is
down) to one line per interval per key, with the count of what it held back: a drop is never
silent, and never floods the log either.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("auditgate.audit")


class RateLimitedLog:
    """Logs at most once per ``interval_s`` per key, with the count of what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} similar messages suppressed)" if held else ""
        log.warning(message + suffix, *args)
