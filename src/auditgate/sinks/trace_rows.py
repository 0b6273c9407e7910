"""``DYN_AUDIT_FORMAT=dynamo-request-trace``: line sinks write Dynamo 1.4+'s rows, not our records.

:class:`TraceRowsSink` wraps a sink that stores each envelope's JSON as a line or a message
(``stderr``, ``jsonl``, ``jsonl_gz``, ``nats``) and hands it, for each record, one envelope per
``dynamo.request.trace.v1`` row (:func:`auditgate.dynamo.envelope.to_trace_rows`: a
``request_payload`` row and a ``request_end`` row for a full record), so a consumer written for
Dynamo reads the output unchanged — one row per line or per NATS message.  Each row's envelope
has its own idempotency key (``<request_id>:request_payload`` / ``:request_end``), so the NATS
sink's ``Nats-Msg-Id`` drops a re-published row without dropping its sibling.  The database sinks
are not wrapped: they store our records, whose schema the stored-completions API reads.
Integrity: the chain covers our records; Dynamo's rows carry no ``integrity`` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import BatchPolicy, Sink, Syncable
from auditgate.dynamo.envelope import to_trace_rows

WRAPPED: Final = frozenset({"stderr", "jsonl", "jsonl_gz", "nats"})
_encoder: Final = msgspec.json.Encoder()


class RowEnvelope(Envelope):
    """One Dynamo row of a record: its JSON is the row, its key the record's id and row kind."""

    __slots__ = ("_key",)

    def __init__(self, record: AuditRecord, row: bytes, key: str) -> None:
        super().__init__(record, row)
        self._key = key

    @property
    def request_id(self) -> str:
        return self._key


def rows_of(envelope: Envelope) -> list[Envelope]:
    """The row envelopes of one record (none for a checkpoint)."""
    record = envelope.record
    return [
        RowEnvelope(record, _encoder.encode(row), f"{record.request_id}:{row['event_type']}")
        for row in to_trace_rows(record)
    ]


class TraceRowsSink:
    """Writes each batch to ``inner`` as Dynamo rows; the bus counts records, not rows."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        policy = getattr(inner, "batching", None)
        self.batching = policy if isinstance(policy, BatchPolicy) else BatchPolicy()

    def __repr__(self) -> str:
        return f"TraceRowsSink({self.inner!r})"

    async def open(self) -> None:
        await self.inner.open()

    async def write(self, batch: Sequence[Envelope]) -> None:
        await self.inner.write([row for envelope in batch for row in rows_of(envelope)])

    async def close(self) -> None:
        await self.inner.close()


class SyncableTraceRowsSink(TraceRowsSink):
    """The same for a sink the durable spool syncs (files)."""

    async def sync(self) -> None:
        inner = self.inner
        assert isinstance(inner, Syncable)  # trace_rows() wraps only such sinks in this class
        await inner.sync()


def trace_rows(sink: Sink) -> Sink:
    """``sink`` wrapped to write Dynamo rows if it is a line sink, else itself."""
    if sink.name not in WRAPPED:
        return sink
    return SyncableTraceRowsSink(sink) if isinstance(sink, Syncable) else TraceRowsSink(sink)
