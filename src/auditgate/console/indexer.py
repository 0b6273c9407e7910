"""Keeps the full-text index caught up in the background, so searches never wait for it.

A search answers from what the index holds and never indexes first (after a bulk load of a
million rows that took minutes); the page says how many rows are not searchable yet
(:meth:`~auditgate.store.queries.Store.text_index_lag`).  This task indexes what was stored
since its last round every ``interval_s``, or at once when a search finds the index behind
(:meth:`TextIndexer.wake`); a search that finds only a few rows behind (normal traffic since
the last round) waits up to a couple of seconds for that round (:meth:`TextIndexer.catch_up`),
so a record just stored is found.  Each round indexes in short transactions until nothing is
left, so a backlog is worked off continuously.  The work is the database's (PostgreSQL computes the
words) or the store's own thread's (SQLite), never the event loop's.
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
    """One background task calling :meth:`Store.index_text` every ``interval_s`` and when
    woken; ``interval_s`` 0: only when woken."""

    def __init__(self, store: Store, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._rounds = asyncio.Condition()
        self._started = 0
        self._finished = 0
        self._warned = 0.0

    def start(self) -> None:
        """Start the task (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="console-text-index"
            )

    def wake(self) -> None:
        """Start a round now (a search found rows not yet indexed); never waits for it."""
        self._wake.set()

    async def catch_up(self, timeout_s: float) -> bool:
        """Wake the task and wait (at most ``timeout_s``) for a round that starts after this
        call to end; whether one did.  ``False`` at once when the task is not running."""
        if self._task is None or self._task.done():
            return False
        wanted = self._started + 1
        self.wake()
        try:
            async with asyncio.timeout(timeout_s), self._rounds:
                await self._rounds.wait_for(lambda: self._finished >= wanted)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop the task; a batch being indexed is rolled back and stays queued."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._started += 1
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
            async with self._rounds:
                self._finished = self._started
                self._rounds.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s or None)
