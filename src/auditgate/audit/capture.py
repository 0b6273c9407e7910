"""Capture: the one place that decides what a request's record holds, and publishes it.

Every transport (HTTP, gRPC, the ASGI middleware) goes through :class:`Auditor.open`, feeds the
:class:`AuditCapture` what the client received, and calls :meth:`AuditCapture.finish` in a
``finally`` block — so a client that goes away, an engine that fails, or a bug in the transport
still yields exactly one record.

Decision (DESIGN §2, §3):

- audit off → no capture at all;
- ``store: true`` or force logging → ``full``; ``store: true`` records are never sampled away;
- otherwise, with ``DYN_AUDIT_USAGE_RECORDS`` on → ``usage_only`` (no request, no response);
- ``usage_only`` and force-logged records are sampled by a hash of the request id.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol

import msgspec

from auditgate.audit import commit as commits
from auditgate.audit.aggregate import StreamAggregator
from auditgate.audit.bus import RecordBus
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.processors import Processors
from auditgate.audit.raw import (
    Aggregator,
    RawCapture,
    aggregate,
    build_record,
    encode_batch,
    frames_batch,
    path_of,
)
from auditgate.audit.record import AuditRecord, Envelope, ErrorInfo, Mode, Status
from auditgate.config import AuditSettings
from auditgate.errors import APIError, ServiceUnavailableError

__all__ = ["Aggregator", "AuditCapture", "Auditor", "Handoff", "new_writer_id"]

_UNIT: Final = float(1 << 64)
log = logging.getLogger("auditgate.audit")


class Handoff(Protocol):
    """Where finished captures go instead of the bus when the audit runs in its own process
    (:class:`~auditgate.audit.process.link.AuditProcess`): ``put`` never blocks or raises."""

    def put(self, raw: RawCapture) -> None: ...


def new_writer_id() -> str:
    """``host:pid:random`` — unique per process start, so two starts never share a sequence."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Auditor:
    """Opens captures and publishes their records with a gap-free per-writer ``seq``."""

    def __init__(
        self,
        settings: AuditSettings,
        bus: RecordBus | None,
        metrics: AuditMetrics,
        *,
        engine: str,
        writer: str | None = None,
        processors: Processors | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        """``handoff``: the audit process that builds and publishes the records instead of
        this process (``DYN_AUDIT_PROCESS``); then ``bus`` is None."""
        self.settings = settings
        self.processors = processors if processors is not None else Processors((), None)
        """Run on every record between stamping ``seq`` and the bus (redaction, integrity)."""
        self.bus = bus
        self.metrics = metrics
        self.engine = engine
        self.writer = writer or new_writer_id()
        self._seq = itertools.count()
        self.handoff = handoff
        self._enabled = settings.enabled and (bus is not None or handoff is not None)
        self._sample = settings.sample_rate
        self._records = {m: metrics.records.labels(m) for m in ("full", "usage_only", "checkpoint")}
        self._processing = metrics.processing_seconds
        self._pending: list[tuple[AuditRecord, asyncio.Future[None] | None, Sequence[str]]] = []
        """Records waiting for the processors' next batch, with their durable commits and
        their requests' credentials."""

    @property
    def enabled(self) -> bool:
        return self._enabled

    def mode_for(self, request_id: str, store: bool) -> Mode | None:
        """The record mode this request gets, or None for no record."""
        if not self._enabled:
            return None
        if store:
            return "full"
        if self.settings.force_logging:
            return "full" if self._sampled(request_id) else None
        if self.settings.usage_records:
            return "usage_only" if self._sampled(request_id) else None
        return None

    def open(
        self,
        *,
        request_id: str,
        body: dict[str, Any],
        model: str,
        streaming: bool,
        store: bool,
        body_bytes: bytes | None = None,
        transport: str = "http",
        endpoint: str = "chat.completions",
        tenant: str | None = None,
        metadata: dict[str, str] | None = None,
        client_request_id: str | None = None,
        headers: dict[str, str] | None = None,
        credentials: Sequence[str] = (),
        aggregator: Callable[[], Aggregator] = StreamAggregator,
        refuse_unkept: bool = False,
    ) -> AuditCapture | None:
        """Start capturing one request; None when it yields no record.

        ``body_bytes``: the JSON bytes ``body`` was parsed from (with a plain
        ``msgspec.json.Decoder``), when the transport has them: the audit process gets these
        instead of ``body`` encoded once more.
        ``credentials``: the API key the request authenticated with; never stored, only handed
        to the processors, which redact it wherever the record repeats it.  ``aggregator``:
        makes the endpoint's stream aggregator (chat's by default).

        ``refuse_unkept``: for a transport that can still refuse the request (its engine has
        not run): when the bus cannot keep its record now (the durable spool is full and the
        record is ``full``), raise a 503 ``audit_spool_full`` instead of answering unaudited."""
        mode = self.mode_for(request_id, store)
        if mode is None:
            return None
        if refuse_unkept and self.bus is not None and not self.bus.admit(mode):
            raise ServiceUnavailableError(
                "The audit spool is full, so this request, which asks to be stored, cannot "
                "be audited right now; retry later.",
                code="audit_spool_full",
            )
        return AuditCapture(
            self,
            mode=mode,
            request_id=request_id,
            body=body,
            body_bytes=body_bytes,
            model=model,
            streaming=streaming,
            transport=transport,
            endpoint=endpoint,
            tenant=tenant,
            metadata=metadata or {},
            client_request_id=client_request_id,
            headers=headers,
            credentials=credentials,
            aggregator=aggregator,
        )

    def publish(
        self, record: AuditRecord, credentials: Sequence[str] = ()
    ) -> Awaitable[None] | None:
        """Stamp ``writer``/``seq``, run the processors and hand the record to the bus; never
        blocks or raises.

        Returns the bus's commit: ``None`` in best effort; in durable mode an awaitable that
        completes once the record is in the spool (and raises if it could not get there).
        ``credentials``: see :meth:`open`.

        With processors (redaction, integrity), the record is queued and the queue is processed
        at the end of the current event-loop iteration, as one batch in publish order: under
        load that is one batch per burst of requests, and a batch runs the processors' code
        with its caches warm (about half the CPU per record of one at a time, measured with
        ``bench.integrity``), with no added wait.  Stamping happens there too, so ``seq``
        order, chain order and checkpoint placement stay one order.
        """
        if not self.processors:
            return self._publish_now(record)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): nothing to batch with
            return self._publish_now(record, credentials=credentials)
        commit: asyncio.Future[None] | None = None
        if self.bus is not None and self.bus.durable:
            commit = commits.pending()
        self._pending.append((record, commit, credentials))
        if len(self._pending) == 1:
            loop.call_soon(self._process)
        return commit

    def _process(self) -> None:
        """Publish every queued record, in order (see :meth:`publish`).

        Two passes: the seq-independent processors (redaction) over the whole batch, then
        stamping, chaining and publishing record by record — each pass keeps its own code hot.
        """
        pending, self._pending = self._pending, []
        started = time.perf_counter()
        failures: list[Exception | None] = []
        for record, _, credentials in pending:
            try:
                self.processors.prepare(record, credentials)
            except Exception as exc:  # noqa: BLE001 - counted and logged by _drop below
                failures.append(exc)
            else:
                failures.append(None)
        for (record, commit, _), failure in zip(pending, failures, strict=True):
            if failure is None:
                done = self._publish_now(record, prepared=True)
            else:
                self._stamp(record)
                done = self._drop(record, failure)
            if commit is not None:
                commits.forward(done, commit)
        # The whole batch, publishing included (about 1 us a record of it happens without
        # processors too): one clock read per batch, not per record.
        self._processing.inc(time.perf_counter() - started)

    def _stamp(self, record: AuditRecord) -> None:
        record.writer = self.writer
        record.seq = next(self._seq)  # taken even when the record is dropped: a visible gap

    def _publish_now(
        self, record: AuditRecord, *, prepared: bool = False, credentials: Sequence[str] = ()
    ) -> Awaitable[None] | None:
        """Stamp, process and publish one record now (``prepared``: redaction already ran)."""
        self._stamp(record)
        processors = self.processors
        if processors:
            try:
                if not prepared:
                    processors.prepare(record, credentials)
                envelope = processors.seal(record)
            except Exception as exc:  # noqa: BLE001 - never raise, never publish unprocessed
                return self._drop(record, exc)
        else:
            envelope = Envelope(record)
        self._records[record.mode].inc()
        assert self.bus is not None
        commit = self.bus.publish(envelope)
        if processors.checkpoint_due:
            commits.log_failure(self.checkpoint("count"), "checkpoint")
        return commit

    def _drop(self, record: AuditRecord, exc: Exception) -> Awaitable[None] | None:
        """A stamped record the processors failed on: counted, logged, not published; in
        durable mode its commit fails, so the transport withholds the success (503) instead of
        answering unaudited."""
        log.error("audit: processors failed, record %s dropped", record.request_id, exc_info=exc)
        self.metrics.dropped.labels("*", "processor_error").inc()
        if self.bus is not None and self.bus.durable:
            return commits.failed(commits.CommitError(f"audit processors failed: {exc}"))
        return None

    def pending(self) -> int:
        """Records waiting for the processors' next batch."""
        return len(self._pending)

    def flush(self) -> None:
        """Publish the records waiting for the processors' next batch now, so that a bus
        flush after it covers every record accepted so far."""
        if self._pending:
            self._process()

    def checkpoint(self, reason: str, *, final: bool = False) -> Awaitable[None] | None:
        """Publish an integrity checkpoint now, if integrity is on and one says anything new
        (see :meth:`~auditgate.audit.processors.IntegrityChain.checkpoint`); returns its commit.
        Queued records are published first, so the checkpoint seals them too."""
        if self._pending:
            self._process()
        record = self.processors.checkpoint(reason, final=final) if self._enabled else None
        return None if record is None else self._publish_now(record)

    def seal_predecessor(self, last: AuditRecord) -> Awaitable[None] | None:
        """Publish the recovery checkpoint sealing the chain of the writer whose record ``last``
        is the newest in the durable spool at start (its process died without its final
        checkpoint), if integrity is on and that chain is not sealed; returns its commit.  The
        record is that writer's, already chained: it is not stamped with this writer's seq."""
        if not self._enabled:
            return None
        envelope = self.processors.seal_recovered(last, self.writer)
        if envelope is None:
            return None
        self._records["checkpoint"].inc()
        assert self.bus is not None
        return self.bus.publish(envelope)

    def _sampled(self, request_id: str) -> bool:
        if self._sample >= 1.0:
            return True
        if self._sample <= 0.0:
            return False
        digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / _UNIT < self._sample


class AuditCapture:
    """What one request produced, as the client received it; becomes one record."""

    __slots__ = (
        "_aggregator",
        "_auditor",
        "_batches",
        "_body",
        "_body_bytes",
        "_client_request_id",
        "_commit",
        "_created_at",
        "_credentials",
        "_endpoint",
        "_engine_response_id",
        "_error",
        "_factory",
        "_finished",
        "_first_at",
        "_headers",
        "_metadata",
        "_model",
        "_raw",
        "_record",
        "_response",
        "_response_bytes",
        "_started",
        "_status",
        "_streaming",
        "_summary",
        "_tenant",
        "_transport",
        "_unsent",
        "_usage",
        "mode",
        "request_id",
    )

    def __init__(
        self,
        auditor: Auditor,
        *,
        mode: Mode,
        request_id: str,
        body: dict[str, Any],
        model: str,
        streaming: bool,
        transport: str,
        body_bytes: bytes | None = None,
        endpoint: str,
        tenant: str | None,
        metadata: dict[str, str],
        client_request_id: str | None,
        headers: dict[str, str] | None,
        credentials: Sequence[str] = (),
        aggregator: Callable[[], Aggregator] = StreamAggregator,
    ) -> None:
        self._auditor = auditor
        self.mode = mode
        self.request_id = request_id
        self._body = body
        self._body_bytes = body_bytes
        self._model = model
        self._streaming = streaming
        self._transport = transport
        self._endpoint = endpoint
        self._tenant = tenant
        self._metadata = metadata
        self._client_request_id = client_request_id
        self._headers = headers
        self._credentials = credentials
        self._created_at = time.time_ns() // 1_000_000
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._factory = aggregator
        self._aggregator: Aggregator | None = None
        self._batches: list[msgspec.Raw] | None = None
        """Audit process: a stored stream's chunk batches, encoded (aggregated over there)."""
        self._unsent: list[dict[str, Any]] | None = None
        """Audit process: the last batch, until the transport hands over its bytes
        (:meth:`sent`) or the next batch comes (then it is encoded here)."""
        if streaming and mode == "full":
            if auditor.handoff is None:
                self._aggregator = aggregator()
            else:
                self._batches = []
        self._record: AuditRecord | None = None
        self._raw: RawCapture | None = None
        """What was handed to the audit process (the local :attr:`record` is built from it)."""
        self._response: dict[str, Any] | None = None
        self._response_bytes: bytes | None = None
        """Audit process: the JSON bytes the client received for :attr:`_response`."""
        self._summary: dict[str, Any] | None = None
        self._usage: dict[str, Any] | None = None
        self._engine_response_id: str | None = None
        self._status: Status = "completed"
        self._error: ErrorInfo | None = None
        self._finished = False
        self._commit: Awaitable[None] | None = None

    def __enter__(self) -> None:
        """See :func:`outcome`."""

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.raised(exc)
        self.finish()

    def engine_response_id(self, value: object) -> None:
        """Remember the id the engine gave its response (before the gateway replaced it)."""
        if self._engine_response_id is None and isinstance(value, str):
            self._engine_response_id = value

    def usage(self, usage: dict[str, Any]) -> None:
        """Token usage the engine reported, whether or not the client sees it."""
        self._usage = usage

    def chunk(self, chunk: dict[str, Any]) -> None:
        """One stream chunk exactly as the client receives it."""
        if self._first_at is None:
            self._first_at = time.perf_counter()
        if self._aggregator is not None:
            self._aggregator.feed(chunk)
        elif self._batches is not None:
            self._hold([chunk])

    def chunks(self, chunks: list[dict[str, Any]]) -> None:
        """Stream chunks exactly as the client receives them, in order: :meth:`chunk` for
        each, at less cost per chunk."""
        if chunks:
            if self._first_at is None:
                self._first_at = time.perf_counter()
            if self._aggregator is not None:
                self._aggregator.feed_all(chunks)
            elif self._batches is not None:
                self._hold(chunks)

    def _hold(self, chunks: list[dict[str, Any]]) -> None:
        """Keep a batch for :meth:`sent`; the one held before got no bytes: encode it."""
        assert self._batches is not None
        if self._unsent is not None:
            self._batches.append(encode_batch(self._unsent))
        self._unsent = chunks

    def sent(self, frames: bytes) -> None:
        """The bytes the client receives for the last batch given to :meth:`chunks`: a
        transport's server-sent events, one ``data: {chunk}`` event per chunk, nothing else.
        Optional: with the audit process they are kept as that batch, instead of encoding it
        once more (a transport that does not call this costs that encoding)."""
        if self._unsent is not None and self._batches is not None:
            self._batches.append(frames_batch(frames))
            self._unsent = None

    def output(self) -> None:
        """Output reached the client (a stream the transport aggregates itself): the time to
        first output is taken at the first call."""
        if self._first_at is None:
            self._first_at = time.perf_counter()

    def response(self, completion: dict[str, Any], sent: bytes | None = None) -> None:
        """The whole response exactly as the client received it: a non-stream response, or the
        final object of a stream the transport aggregated itself (the Responses API), which
        then replaces the capture's own aggregation.

        ``sent``: the JSON bytes the client receives for ``completion``, when the transport has
        encoded them already (the body of a non-stream answer).  Optional, as
        :meth:`sent` is for streams: with the audit process they are handed over instead of
        encoding ``completion`` once more."""
        if self._first_at is None:
            self._first_at = time.perf_counter()
        self._aggregator = self._batches = self._unsent = None
        usage = completion.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        if self.mode == "full":
            self._response = completion
            self._response_bytes = sent

    def summary(self, summary: dict[str, Any]) -> None:
        """A response summary that holds no client content (embeddings: how many vectors, how
        long), kept as the record's ``response`` in every mode, ``usage_only`` included."""
        self._first_at = time.perf_counter()
        usage = summary.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        self._summary = summary

    def fail(self, error: APIError) -> None:
        """The request ended in an error the client was told about."""
        self._status = "error"
        self._error = ErrorInfo(
            type=error.error_type, message=error.message, status_code=error.status_code
        )

    def cancel(self) -> None:
        """The client went away before the response ended."""
        if self._status == "completed":
            self._status = "cancelled"

    def raised(self, exc: BaseException, *, told: bool = True) -> None:
        """The request stopped with ``exc``; record what that means (the one place that decides):

        - an :class:`APIError`: the error the client was told about (:meth:`fail`), where the
          transport answers with it (``told``: the gateway's edge does).  An app under the ASGI
          middleware that raises one did not answer with it, and neither does its server:
          ``told=False`` records it as any other exception;
        - any other :class:`Exception` (a bug, an engine's unwrapped error): ``error``, as the
          500 ``server_error`` the client gets (or a response cut short); the record names the
          exception's type only — its text may hold secrets or be huge, and the log has the
          traceback;
        - anything else (``CancelledError``: the client went away while the engine worked,
          ``GeneratorExit``: the transport stopped reading, a shutdown): ``cancelled``.
        """
        if told and isinstance(exc, APIError):
            self.fail(exc)
        elif isinstance(exc, Exception):
            self._status = "error"
            self._error = ErrorInfo(
                type="server_error",
                message=f"The server raised {type(exc).__name__}.",
                status_code=500,
            )
        else:
            self.cancel()

    @property
    def ttft_s(self) -> float | None:
        """Seconds from request to first output, once there was output."""
        return None if self._first_at is None else self._first_at - self._started

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def commit(self) -> Awaitable[None] | None:
        """What :meth:`finish` returned the first time: the durable commit to await before the
        end of the response is released (``None`` in best effort, and before :meth:`finish`)."""
        return self._commit

    @property
    def record(self) -> AuditRecord | None:
        """The record :meth:`finish` published (``None`` before).  Read-only: the processors
        (redaction) change it in place until the end of the event-loop iteration.

        With the audit process, the record is built and redacted here on first use, the same
        as over there but without ``writer``, ``seq`` and ``integrity``."""
        raw = self._raw
        if self._record is None and raw is not None:
            record = build_record(raw, self._auditor.engine, aggregate(raw))
            self._auditor.processors.prepare(record, self._credentials)
            self._record = record
        return self._record

    def finish(self) -> Awaitable[None] | None:
        """Build and publish the record; only the first call does anything.

        Returns what :meth:`Auditor.publish` returned (the durable commit to await before the
        end of the response is released), ``None`` on later calls.  With the audit process
        on, the capture is handed over as it is (:class:`~auditgate.audit.raw.RawCapture`) and
        the record is built there; ``None`` then."""
        if self._finished:
            return None
        self._finished = True
        elapsed = time.perf_counter() - self._started
        first = self._first_at
        full = self.mode == "full"
        batches = self._batches
        if self._unsent is not None and batches is not None:
            batches.append(encode_batch(self._unsent))
            self._unsent = None
        auditor = self._auditor
        handoff = auditor.handoff
        body: dict[str, Any] | bytes | None = None
        sent: dict[str, Any] | bytes | None = self._response
        if full:
            body = self._body
            if handoff is not None:
                # What the gateway received and what the client received, as bytes: the audit
                # process decodes them; nothing is encoded again here.
                if self._body_bytes is not None:
                    body = self._body_bytes
                if self._response_bytes is not None:
                    sent = self._response_bytes
        raw = RawCapture(
            self.request_id,
            self._streaming,
            self.mode,
            self._model,
            self._endpoint,
            self._transport,
            self._status,
            self._created_at,
            int(elapsed * 1e6 + 0.5),
            None if first is None else int((first - self._started) * 1e6 + 0.5),
            self._tenant,
            self._metadata,
            self._usage,
            body,
            sent,
            self._summary,
            batches,
            None if batches is None else path_of(self._factory),
            self._error,
            self._client_request_id,
            self._engine_response_id,
            self._headers,
            tuple(self._credentials),
        )
        if handoff is not None:
            self._batches = None
            self._raw = raw
            handoff.put(raw)
            return None
        response = self._response
        if self._aggregator is not None:
            response = self._aggregator.finish()
            # The stream's state is garbage now; in durable mode the transport still waits for
            # the commit, and holding it that long across 64 streams spills the CPU caches.
            self._aggregator = None
        record = self._record = build_record(raw, auditor.engine, response)
        self._commit = commit = auditor.publish(record, self._credentials)
        return commit


class _NoCapture:
    """:func:`outcome` of no capture (audit off): does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pass


_NO_CAPTURE: Final = _NoCapture()


def outcome(capture: AuditCapture | None) -> AuditCapture | _NoCapture:
    """``with outcome(capture): ...`` runs a request's work and then records how it ended and
    publishes the record, whatever happened: completed, or what the exception that left the block
    means (:meth:`AuditCapture.raised`), then :meth:`AuditCapture.finish`.  The exception goes on;
    the commit to await is :attr:`AuditCapture.commit`.

    With no capture (audit off) it does nothing, and costs no allocation: the capture is its own
    context manager, and no capture shares one that does nothing."""
    return _NO_CAPTURE if capture is None else capture
