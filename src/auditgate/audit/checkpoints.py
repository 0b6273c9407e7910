"""When checkpoints are published: the interval ticker, and the recovery seal of a dead writer.

Both run as tasks next to the gateway's audit bus (:class:`~auditgate.server.app.Gateway`); what a
checkpoint holds and how it is chained and signed is
:class:`~auditgate.audit.processors.IntegrityChain`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from auditgate.audit.record import AuditRecord

log = logging.getLogger("auditgate.audit")


async def checkpoint_ticker(
    checkpoint: Callable[[str], Awaitable[None] | None], interval_s: float
) -> None:
    """Call ``checkpoint("interval")`` every ``interval_s`` seconds until cancelled, awaiting
    each commit (durable mode) so a slow spool does not pile up checkpoints."""
    while True:
        await asyncio.sleep(interval_s)
        commit = checkpoint("interval")
        if commit is not None:
            try:
                await commit
            except Exception as exc:  # noqa: BLE001 - the next tick retries; logged, not silent
                log.error("audit: interval checkpoint not made durable: %s", exc)


SEAL_RETRY_S: Final = (0.5, 1.0, 2.0, 5.0)
"""Waits between tries of a recovery checkpoint that could not be made durable (then the last)."""


async def seal_until_durable(
    seal: Callable[[AuditRecord], Awaitable[None] | None],
    last: AuditRecord,
    *,
    retries: int | None = None,
) -> bool:
    """Publish the recovery checkpoint for the chain ending at ``last`` (``seal(last)``, e.g.
    :meth:`~auditgate.audit.capture.Auditor.seal_predecessor`) and await its commit, trying
    again while the spool fails (a full disk) — ``retries`` more times, or until cancelled.
    True once it is durable (or there is nothing to seal)."""
    attempt = 0
    while True:
        commit = seal(last)
        if commit is None:
            return True
        try:
            await commit
        except Exception as exc:  # noqa: BLE001 - retried below, logged
            if retries is not None and attempt >= retries:
                log.error(
                    "audit: the chain of writer %s (up to seq %d) is left unsealed: %s",
                    last.writer,
                    last.seq,
                    exc,
                )
                return False
            delay = SEAL_RETRY_S[min(attempt, len(SEAL_RETRY_S) - 1)]
            log.error(
                "audit: cannot seal the chain of writer %s yet (%s); retrying in %.1fs",
                last.writer,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            attempt += 1
        else:
            log.warning(
                "audit: writer %s stopped without sealing its chain (last seq %d); sealed it "
                "with a recovery checkpoint",
                last.writer,
                last.seq,
            )
            return True
