"""Commits: what a bus's ``publish`` returns, and how the rest of the code waits for one.

Every :class:`~auditgate.audit.bus.RecordBus` returns from ``publish`` either ``None`` (nothing
to wait for: best effort) or a *commit*, an awaitable that completes once the record is durable
and raises :class:`CommitError` when it could not be made durable.  A bus says which it does with
its ``durable`` capability; callers never ask which bus they hold.

This module is the one place that creates, chains and reports commits:

- :func:`failed` — a commit that already failed (nothing queued, or the processors refused);
- :func:`forward` — complete a commit the auditor handed out early with the bus's own;
- :func:`log_failure` — a commit nobody awaits (a checkpoint) still reports its failure;
- :func:`committed` — what a transport awaits before it releases the end of a response: a failed
  commit becomes a 503 ``audit_spool_unavailable`` for the client, never an unaudited success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from auditgate.errors import AuditgateError, ServiceUnavailableError

log = logging.getLogger("auditgate.audit")

Commit = Awaitable[None]
"""Completes once a record is durable; raises :class:`CommitError` if it cannot be."""


class CommitError(AuditgateError):
    """A record could not be made durable (the spool's disk, a processor's failure, shutdown)."""


def failed(error: BaseException) -> asyncio.Future[None]:
    """A commit that never succeeds: awaiting it raises ``error``.  Marked retrieved, so a
    transport that never awaits it (its client left) leaves no "never retrieved" noise."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    future.exception()
    return future


def pending() -> asyncio.Future[None]:
    """A commit to hand out before the record reaches the bus (see :func:`forward`)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_retrieved)
    return future


def forward(source: Commit | None, target: asyncio.Future[None]) -> None:
    """Complete ``target`` as ``source`` (a bus's commit, or None: nothing to wait for) does."""
    if source is None:
        target.set_result(None)
        return
    future = asyncio.ensure_future(source)

    def copy(done: asyncio.Future[None]) -> None:
        if target.done():
            return
        if done.cancelled():
            target.cancel()
        elif (error := done.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(None)

    future.add_done_callback(copy)


def log_failure(commit: Commit | None, what: str) -> None:
    """Nobody awaits ``commit`` (e.g. a checkpoint published on the way): log if it fails."""
    if isinstance(commit, asyncio.Future):

        def report(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("audit: %s not made durable: %s", what, future.exception())

        commit.add_done_callback(report)


async def committed(commit: Commit | None) -> None:
    """Wait for a record's commit (returns at once for None); a failed one becomes a 503
    ``audit_spool_unavailable`` for the client, whose response is then withheld."""
    if commit is None:
        return
    try:
        await commit
    except CommitError as exc:
        raise ServiceUnavailableError(
            "The audit record of this response could not be written to the audit spool, so the "
            "response is withheld; retry later.",
            code="audit_spool_unavailable",
        ) from exc


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a commit's outcome retrieved: a transport whose client left never awaits it."""
    if not future.cancelled():
        future.exception()
