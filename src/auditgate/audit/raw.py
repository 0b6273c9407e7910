"""A finished capture before it becomes a record: what crosses to the audit process.

:class:`RawCapture` holds exactly what :class:`~auditgate.audit.capture.AuditCapture` gathered —
the header (ids, model, tenant, timing, status...), the request body, and what the client
received: the whole response, or a stream's chunk batches as they were sent, not aggregated —
and :func:`build_record` turns it into the :class:`~auditgate.audit.record.AuditRecord`.  The
in-process path and the audit process (:mod:`auditgate.audit.process`) both build every record
through :func:`build_record`, so a record is the same whichever process built it.
"""

from __future__ import annotations

import functools
import importlib
import pickle
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol, cast

import msgspec

from auditgate.audit.record import AuditRecord, ErrorInfo, Mode, Status


class Aggregator(Protocol):
    """Builds the final object a stream of chunks amounts to (one per stored stream)."""

    def feed(self, chunk: dict[str, Any]) -> None: ...

    def feed_all(self, chunks: Iterable[dict[str, Any]]) -> None: ...

    def finish(self) -> dict[str, Any] | None: ...


class RawCapture(msgspec.Struct, array_like=True):
    """One finished capture, not yet a record (see the module doc)."""

    request_id: str
    streaming: bool
    mode: Mode
    model: str
    endpoint: str
    transport: str
    status: Status
    created_at: int
    """Unix milliseconds when the request arrived."""
    elapsed_us: int
    """Microseconds from arrival to the end of the response."""
    ttft_us: int | None
    """Microseconds to the first output; None when there was none."""
    tenant: str | None
    metadata: dict[str, str]
    usage: dict[str, Any] | None
    body: dict[str, Any] | bytes | None
    """The request body (``full`` records only): its object, or (audit process) the JSON bytes
    the gateway received, decoded where the record is built."""
    response: dict[str, Any] | bytes | None
    """The whole response as the client received it (``full`` records only): its object, or
    (audit process) the JSON bytes the client received, decoded where the record is built."""
    summary: dict[str, Any] | None
    batches: list[msgspec.Raw] | None
    """A stored stream's chunk batches as the client received them, when not aggregated yet:
    each encoded as soon as it was sent (:func:`encode_batch`), so the serving process holds
    bytes, not the chunks' objects, until the capture is handed over."""
    aggregator: str | None
    """``module:qualname`` of the factory of the aggregator that ``batches`` go through."""
    error: ErrorInfo | None = None
    client_request_id: str | None = None
    engine_response_id: str | None = None
    headers: dict[str, str] | None = None
    credentials: tuple[str, ...] = ()
    """The request's credentials, for the redaction processors only; never stored."""


@functools.cache
def path_of(factory: Callable[[], Aggregator]) -> str:
    """``module:qualname`` of an aggregator factory (a class or a module-level function)."""
    return f"{factory.__module__}:{factory.__qualname__}"


@functools.cache
def factory_at(path: str) -> Callable[[], Aggregator]:
    """The aggregator factory named by :func:`path_of` (imported once)."""
    module, _, name = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return cast(Callable[[], Aggregator], found)


_encode: Final = msgspec.msgpack.Encoder().encode
_decode: Final = msgspec.msgpack.Decoder().decode
_decode_json: Final = msgspec.json.Decoder().decode


def encode_batch(chunks: list[dict[str, Any]]) -> msgspec.Raw:
    """One batch of stream chunks as :attr:`RawCapture.batches` holds it: MessagePack, or (for
    what MessagePack cannot hold: a lone surrogate, an integer past 64 bits) a pickle in a
    MessagePack ``bin``."""
    try:
        return msgspec.Raw(_encode(chunks))
    except (TypeError, OverflowError, UnicodeEncodeError):
        return msgspec.Raw(_encode(pickle.dumps(chunks, protocol=pickle.HIGHEST_PROTOCOL)))


def frames_batch(frames: bytes) -> msgspec.Raw:
    """One batch of stream chunks as the client received them — server-sent events,
    ``data: {chunk}\\n\\n`` each — as :attr:`RawCapture.batches` holds it (a MessagePack
    ``bin``): no encoding of the chunks again."""
    return msgspec.Raw(_encode(frames))


def decode_batch(batch: msgspec.Raw) -> list[dict[str, Any]]:
    """The chunks :func:`encode_batch` or :func:`frames_batch` encoded."""
    chunks = _decode(batch)
    if type(chunks) is bytes:
        if chunks.startswith(b"data: "):
            # JSON holds no raw newline, so a blank line only ever ends an event.
            return [_decode_json(event[6:]) for event in chunks.split(b"\n\n") if event]
        chunks = pickle.loads(chunks)  # our own encode_batch's pickle
    return cast(list[dict[str, Any]], chunks)


def aggregate(raw: RawCapture) -> dict[str, Any] | None:
    """The capture's response: its stream batches through its aggregator, or as given (JSON
    bytes decoded)."""
    batches = raw.batches
    if batches is None or raw.aggregator is None:
        response = raw.response
        # JSON bytes: decoded as the gateway's request parser decodes (a plain msgspec decoder).
        return _decode_json(response) if isinstance(response, bytes) else response
    aggregator = factory_at(raw.aggregator)()
    for batch in batches:
        aggregator.feed_all(decode_batch(batch))
    return aggregator.finish()


def build_record(raw: RawCapture, engine: str, response: dict[str, Any] | None) -> AuditRecord:
    """The record of ``raw`` (``writer`` and ``seq`` not stamped yet); ``response``: the
    aggregated or whole response (:func:`aggregate`)."""
    ttft = raw.ttft_us
    record = AuditRecord(
        request_id=raw.request_id,
        requested_streaming=raw.streaming,
        mode=raw.mode,
        model=raw.model,
        usage=raw.usage,
        endpoint=raw.endpoint,
        transport=raw.transport,
        engine=engine,
        status=raw.status,
        complete=raw.status == "completed"
        and (response is not None or raw.summary is not None or raw.mode != "full"),
        created_at=raw.created_at,
        completed_at=raw.created_at + raw.elapsed_us // 1000,
        # Microseconds are all the clock gives meaningfully: an integer count of them divided
        # by 1000 is the double nearest to that decimal, so it prints with at most three
        # decimals (0.18, not 0.18011899999237357).
        ttft_ms=None if ttft is None else ttft / 1e3,
        duration_ms=raw.elapsed_us / 1e3,
        tenant=raw.tenant,
        metadata=raw.metadata,
        writer="",
        seq=-1,
    )
    if raw.mode == "full":
        body = raw.body
        if body is not None:
            record.request = _decode_json(body) if isinstance(body, bytes) else body
        if response is not None:
            record.response = response
    if raw.summary is not None:
        record.response = raw.summary
    if raw.error is not None:
        record.error = raw.error
    if raw.client_request_id is not None:
        record.client_request_id = raw.client_request_id
    if raw.engine_response_id is not None:
        record.engine_response_id = raw.engine_response_id
    if raw.headers:
        record.http_request_headers = raw.headers
    return record
