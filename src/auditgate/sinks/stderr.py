"""The ``stderr`` sink: one bare record per line on the process's standard error.

Each batch is written with one ``write`` of whole lines and one ``flush``, from a worker thread
(``asyncio.to_thread``).  Why a thread: stderr is usually a pipe to a log collector (journald,
a container runtime), and a pipe whose reader falls behind blocks ``write`` once its 64 KiB buffer
is full.  Audit records are by far the largest thing the gateway writes there, so on the event
loop that back-pressure would stall every request; in a thread it only stalls this sink's lane,
which the bus bounds and counts.  The thread hop costs a few tens of microseconds per batch, not
per record.

A reader that never drains the pipe blocks the thread for good; the bus's shutdown deadline then
cancels the lane, counts its records as undelivered, and the process's own logging to stderr is
stuck just the same — that is a broken deployment, not something a sink can repair.

Idempotency: a byte stream cannot take back what it wrote.  A write that fails part-way (the pipe
closed) may have emitted some lines, and the bus's retry may print them again; consumers of
stderr records should de-duplicate on ``request_id``, as every reader may.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import BinaryIO

from auditgate.audit.record import Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.errors import SinkError


class StderrSink:
    """Writes each record as one JSON line to ``stream`` (default: ``sys.stderr``'s bytes)."""

    name = "stderr"
    batching = BatchPolicy(max_records=512)

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream

    async def open(self) -> None:
        """Nothing to open: the stream is the process's (or the caller's)."""

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Write every record of ``batch`` as one line; raises :class:`SinkError` on failure."""
        if not batch:
            return
        # Joined here, on the loop: Envelope.json encodes once and is cached for every sink.
        data = b"".join([envelope.json + b"\n" for envelope in batch])
        try:
            await asyncio.to_thread(self._write_sync, data)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            raise SinkError(f"stderr sink: write failed: {exc}") from exc

    async def close(self) -> None:
        """Flush the stream; it is not ours to close."""
        stream = self._current()
        if stream is not None:
            try:
                await asyncio.to_thread(stream.flush)
            except (OSError, ValueError) as exc:
                raise SinkError(f"stderr sink: flush failed: {exc}") from exc

    def _current(self) -> BinaryIO | None:
        # Resolved on every use, not at construction: sys.stderr may be replaced after the sink
        # is built (pytest's capture, an embedding application redirecting output).
        if self._stream is not None:
            return self._stream
        buffer: BinaryIO | None = getattr(sys.stderr, "buffer", None)
        return buffer

    def _write_sync(self, data: bytes) -> None:
        stream = self._current()
        if stream is not None:
            stream.write(data)
            stream.flush()
            return
        text = sys.stderr
        if text is None:
            raise SinkError("stderr sink: the process has no stderr")
        # A text-only replacement of sys.stderr (no .buffer): the lines are valid UTF-8 JSON.
        text.write(data.decode("utf-8"))
        text.flush()
