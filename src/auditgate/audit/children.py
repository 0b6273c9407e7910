"""Child processes of the audit core (the spool's writer, the audit process): how one is reaped."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("auditgate.audit")


async def reap(process: asyncio.subprocess.Process, timeout: float | None, name: str) -> None:
    """Wait for ``process`` to exit; after ``timeout`` seconds log, kill it and wait again.

    A child that exits just as the wait times out is not an error (``kill`` then finds no
    process)."""
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        log.error("%s did not exit; killing it", name)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
