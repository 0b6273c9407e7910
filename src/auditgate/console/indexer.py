"""Keeps the full-text index caught up in the background, so a search rarely has rows to index.

A search indexes the rows stored since the last one before it reads (the stores do), which after
a day of traffic can be many; this task does the same every ``interval_s`` while the console
runs, off any request.  The work is the database's (PostgreSQL computes the words) or the store's
own thread's (SQLite), never the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from auditgate.store.queries import Store

log = logging.getLogger("auditgate.console")

_LOG_EVERY_S = 60.0
"""At most one warning a minute while indexing keeps failing (a store that is down)."""


class TextIndexer:
    """One background task calling :meth:`Store.index_text` every ``interval_s``."""

    def __init__(self, store: Store, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._warned = 0.0

    def start(self) -> None:
        """Start the task (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="console-text-index"
            )

    async def stop(self) -> None:
        """Stop the task; a batch being indexed is rolled back and stays queued."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                added = await self.store.index_text()
            except Exception as exc:  # noqa: BLE001 - retried next round; logged (rate-limited)
                now = time.monotonic()
                if now - self._warned >= _LOG_EVERY_S:
                    self._warned = now
                    log.warning("console: full-text indexing failed, retrying: %s", exc)
            else:
                if added:
                    log.info("console: %d record(s) added to the full-text index", added)
            await asyncio.sleep(self.interval_s)
