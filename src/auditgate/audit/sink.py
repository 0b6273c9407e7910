"""The Sink protocol, and the in-memory sink that tests and embedders use.

A sink only writes batches: the bus owns queues, batching, retries and concurrency.  Contract:

- ``open()`` is awaited once before the first write; it may raise :class:`ConfigError` for a
  misconfiguration (bad URL), and should not fail merely because a server is down right now —
  the first ``write`` will fail instead and the bus retries.
- ``write(batch)`` stores every envelope of the batch or raises; it is never called concurrently
  on one sink.  It must be idempotent on ``request_id``: the bus may hand the same batch again
  after a failure, and a replay must not duplicate anything.
- ``close()`` flushes and releases resources; called once, after the last write.

A sink may carry a ``batching`` attribute (:class:`BatchPolicy`) to tell the bus how to group
records; without one it gets the default policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from auditgate.audit.record import AuditRecord, Envelope


@dataclasses.dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the bus groups records into one ``write`` call for a sink."""

    max_records: int = 512
    """Most records in one batch."""
    max_bytes: int = 8 << 20
    """Most JSON bytes in one batch (a batch holds at least one record, however large).  A
    sink's encodings of a batch (SQL rows, a COPY buffer, joined lines) are as large again as
    the batch: this bounds them when large records queued up behind an outage."""
    linger_s: float = 0.0
    """After the first record, wait this long for more before writing (file sinks batch)."""


@runtime_checkable
class Sink(Protocol):
    """A destination for audit records."""

    name: str
    """Sink name as in ``DYN_AUDIT_SINKS``; the ``sink`` label of every metric."""

    async def open(self) -> None: ...

    async def write(self, batch: Sequence[Envelope]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Syncable(Protocol):
    """A sink whose stored records survive a crash of the gateway at once, and a power loss
    once synced (files, SQLite at ``synchronous=NORMAL``).  In durable mode the spool forgets
    records (saves the sink's cursor, deletes passed segments) only after such a sink synced,
    so each commit need not be flushed to disk on its own."""

    async def sync(self) -> None:
        """Make everything written so far survive a power loss; raises ``SinkError``."""
        ...


class MemorySink:
    """Keeps every record it is given, in order; for tests and embedding.

    ``block`` makes every write wait until it is cleared, to stand in for a sink that never
    returns; ``fail`` makes writes raise, to stand in for a sink that is down.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.records: list[AuditRecord] = []
        self.lines: list[bytes] = []
        self.block = asyncio.Event()
        self.block.set()
        self.fail: Exception | None = None
        self.closed = False
        self._seen: set[str] = set()

    async def open(self) -> None:
        self.closed = False

    async def write(self, batch: Sequence[Envelope]) -> None:
        await self.block.wait()
        if self.fail is not None:
            raise self.fail
        for envelope in batch:
            if envelope.request_id in self._seen:
                continue
            self._seen.add(envelope.request_id)
            self.records.append(envelope.record)
            self.lines.append(envelope.json)

    async def close(self) -> None:
        self.closed = True
