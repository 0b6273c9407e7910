"""Turning a stream of Dynamo messages into auditgate records: detection, conversion, and the
join of a request's ``request_payload`` and ``request_end`` rows.

Dynamo 1.x publishes a request's body (``request_payload``) and its timing (``request_end``) as
two rows, in either order, usually milliseconds apart.  :class:`DynamoReader` holds the first
of the two until the second arrives and then yields one record with both.  Its memory is
bounded: at most ``max_pending`` rows wait; past that the oldest is given up on.  A row whose
partner has not come within ``timeout_s`` (checked by :meth:`DynamoReader.expire`, which the
caller runs now and then) is converted alone — a payload row without timing, an end row as a
``usage_only`` record — and counted (:attr:`DynamoReader.counts`).  Once a request id was
emitted, a late partner row is dropped and counted (``late``): the store keeps the first record
of an id, so converting it would only be discarded there.

Every input carries an opaque ``token`` (e.g. the JetStream message) that comes back with the
record(s) it contributed to, so a consumer acknowledges a message only once what it became is
stored — also for a row held for its partner.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, Literal, TypeVar

import msgspec

from auditgate.audit.record import AuditRecord, decode_record
from auditgate.dynamo.convert import from_legacy, from_tool, from_trace
from auditgate.dynamo.formats import TOOL_EVENTS, FormatError, InputFormat, detect, unwrap

T = TypeVar("T")
How = Literal["auditgate", "legacy", "joined", "payload_only", "end_only", "tool"]
COUNTED: Final = ("joined", "payload_only", "end_only", "evicted", "late", "tool", "legacy")


@dataclasses.dataclass(slots=True)
class Converted(Generic[T]):
    """One record and the tokens of every input it was made from."""

    record: AuditRecord
    tokens: list[T]
    how: How
    """Which path made it: ``joined`` (both rows), ``payload_only`` / ``end_only`` (the partner
    did not come in time, or was evicted), ``tool``, ``legacy`` (0.x), ``auditgate``."""


@dataclasses.dataclass(slots=True)
class _Pending(Generic[T]):
    kind: Literal["payload", "end"]
    row: Mapping[str, Any]
    token: T
    since: float


class DynamoReader(Generic[T]):
    """Converts decoded messages of any known format into :class:`AuditRecord`\\ s."""

    def __init__(
        self,
        *,
        forced: InputFormat | None = None,
        max_pending: int = 10_000,
        timeout_s: float = 30.0,
        remember: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``forced``: accept only this format (``--input-format``); ``remember``: how many
        emitted request ids are kept to recognise a late partner row."""
        if max_pending < 1 or remember < 1:
            raise ValueError("max_pending and remember must be >= 1")
        self.forced = forced
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.clock = clock
        self.counts: dict[str, int] = dict.fromkeys(COUNTED, 0)
        """Records made per path, plus ``evicted`` (given up on past ``max_pending``) and
        ``late`` (a partner row that came after its request was emitted, dropped)."""
        self._pending: collections.OrderedDict[str, _Pending[T]] = collections.OrderedDict()
        self._emitted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember
        self._late: list[T] = []

    @property
    def pending(self) -> int:
        """Rows waiting for their partner."""
        return len(self._pending)

    def feed(self, value: Any, token: T, *, received_ms: int | None = None) -> list[Converted[T]]:
        """Convert one decoded message or line; ``received_ms``: when it was received (the time
        of a 0.x record, which has none).  Returns the records it completes: none while a row
        waits for its partner, none for a late partner (its token is then in
        :meth:`late_tokens`), else one.

        Raises :class:`FormatError` for a value of no known (or not the forced) format, and
        ``ValueError``/``KeyError``/``TypeError`` for one that is malformed.
        """
        row = unwrap(value)
        kind = detect(row)
        if self.forced is not None and kind is not self.forced:
            raise FormatError(f"a {kind.value} record; the input format is {self.forced.value}")
        if kind is InputFormat.AUDITGATE:
            record = decode_record(msgspec.json.encode(row))
            return [Converted(record, [token], "auditgate")]
        if kind is InputFormat.DYNAMO_AUDIT:
            self.counts["legacy"] += 1
            return [Converted(from_legacy(row, received_ms=received_ms), [token], "legacy")]
        return self._trace(row, token)

    def late_tokens(self) -> list[T]:
        """Tokens of late partner rows seen since the last call (to acknowledge them)."""
        late, self._late = self._late, []
        return late

    def expire(self) -> list[Converted[T]]:
        """Records of rows whose partner did not come within ``timeout_s``."""
        out: list[Converted[T]] = []
        deadline = self.clock() - self.timeout_s
        while self._pending:
            request_id, pending = next(iter(self._pending.items()))
            if pending.since > deadline:
                break
            del self._pending[request_id]
            out.append(self._alone(request_id, pending))
        return out

    def waiting_tokens(self) -> list[T]:
        """Tokens of the rows waiting for their partner (they stay waiting)."""
        return [p.token for p in self._pending.values()]

    def release(self) -> list[T]:
        """Forget every waiting row and return its token (at a stop: hand the messages back, so
        a later run joins them)."""
        tokens = [p.token for p in self._pending.values()]
        self._pending.clear()
        return tokens

    def drain(self) -> list[Converted[T]]:
        """Every waiting row as a record of its own (at shutdown, or at the end of a file)."""
        out = [self._alone(rid, p) for rid, p in self._pending.items()]
        self._pending.clear()
        return out

    def _trace(self, row: Mapping[str, Any], token: T) -> list[Converted[T]]:
        event = row.get("event_type")
        if event in TOOL_EVENTS:
            self.counts["tool"] += 1
            return [Converted(from_tool(row), [token], "tool")]
        if event == "request_payload":
            kind: Literal["payload", "end"] = "payload"
            request_id = str(row["payload"]["request_id"])
        elif event == "request_end":
            kind = "end"
            request_id = str(row["request"]["request_id"])
        else:
            raise FormatError(f"unknown request-trace event_type {event!r}")
        if request_id in self._emitted:
            self.counts["late"] += 1
            self._late.append(token)
            return []
        partner = self._pending.get(request_id)
        if partner is None or partner.kind == kind:
            return self._hold(request_id, _Pending(kind, row, token, self.clock()))
        del self._pending[request_id]
        payload, end = (row, partner.row) if kind == "payload" else (partner.row, row)
        self.counts["joined"] += 1
        self._remember_id(request_id)
        return [Converted(from_trace(payload, end), [partner.token, token], "joined")]

    def _hold(self, request_id: str, pending: _Pending[T]) -> list[Converted[T]]:
        out: list[Converted[T]] = []
        previous = self._pending.pop(request_id, None)
        if previous is not None:  # the same row kind twice (a redelivery): keep the newer
            self._late.append(previous.token)
            self.counts["late"] += 1
        self._pending[request_id] = pending
        while len(self._pending) > self.max_pending:
            oldest_id, oldest = self._pending.popitem(last=False)
            self.counts["evicted"] += 1
            out.append(self._alone(oldest_id, oldest))
        return out

    def _alone(self, request_id: str, pending: _Pending[T]) -> Converted[T]:
        self._remember_id(request_id)
        if pending.kind == "payload":
            self.counts["payload_only"] += 1
            return Converted(from_trace(pending.row, None), [pending.token], "payload_only")
        self.counts["end_only"] += 1
        return Converted(from_trace(None, pending.row), [pending.token], "end_only")

    def _remember_id(self, request_id: str) -> None:
        self._emitted[request_id] = None
        if len(self._emitted) > self._remember:
            self._emitted.popitem(last=False)
