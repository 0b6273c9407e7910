"""The chat completion pipeline: the single integration point every transport calls.

It opens the audit capture, asks the engine, rewrites what the client will see (the response id
is always ``chatcmpl-<request_id>``; usage the client did not ask for is stripped), taps exactly
those bytes into the capture, and finishes the capture in ``finally`` — so completion, engine
failure and client disconnect all yield one record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Protocol

from auditgate.audit.aggregate import StreamAggregator
from auditgate.audit.capture import Aggregator, AuditCapture, Auditor, outcome
from auditgate.audit.commit import committed
from auditgate.engines.base import Engine, EngineRequest

Chunk = dict[str, Any]


class CallParams(Protocol):
    """The validated fields of a request that the pipeline and the transports read
    (:class:`ChatParams` for chat; legacy completions and embeddings have their own)."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool | None: ...

    @property
    def store(self) -> bool | None: ...

    @property
    def n(self) -> int | None: ...

    @property
    def metadata(self) -> dict[str, str] | None: ...


@dataclasses.dataclass(slots=True, kw_only=True)
class ChatCall:
    """One validated chat completion request, whatever transport brought it."""

    body: dict[str, Any]
    """The request body as received; never mutated."""
    body_bytes: bytes | None = dataclasses.field(default=None, repr=False)
    """The JSON bytes ``body`` was parsed from (a plain ``msgspec.json.Decoder``), when the
    transport has them: the audit process gets them instead of ``body`` encoded again."""
    params: CallParams
    """The validated fields of ``body``."""
    request_id: str
    """Gateway-generated UUIDv7."""
    transport: str = "http"
    endpoint: str = "chat.completions"
    tenant: str | None = None
    client_request_id: str | None = None
    headers: dict[str, str] | None = None
    """Request headers captured into the record (already filtered and redacted)."""
    authorization: str | None = dataclasses.field(default=None, repr=False)
    """The client's credential, only for upstream key passthrough."""
    credentials: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    """The gateway API key the request authenticated with: never stored, redacted wherever
    the record would repeat it."""
    id_prefix: str = "chatcmpl-"
    """What the client's response id is made of, with the request id (legacy: ``cmpl-``)."""

    @property
    def response_id(self) -> str:
        return self.id_prefix + self.request_id


class ChatPipeline:
    """Runs chat completions through an engine with audit capture.

    When the auditor's bus is durable, a request whose record would be ``full`` is refused with
    503 ``audit_spool_full`` before the engine runs while the bus cannot keep it (spool full),
    and a successful response ends only once its record is durable — ``complete`` returns after
    the commit, a stream's transport awaits :meth:`ChatStream.committed` before ``[DONE]``; a
    commit that fails becomes a 503 ``audit_spool_unavailable`` instead of the success.

    Another endpoint with chat's shape (choices, chunks, usage) runs through a subclass that
    names its aggregator and its engine methods (:meth:`produce`, :meth:`produce_stream`).
    """

    aggregator: ClassVar[type[Aggregator]] = StreamAggregator
    """Makes the aggregator of a stored stream."""

    def __init__(self, engine: Engine, auditor: Auditor) -> None:
        self.engine = engine
        self.auditor = auditor

    def _open(self, call: ChatCall, streaming: bool) -> AuditCapture | None:
        return self.auditor.open(
            request_id=call.request_id,
            body=call.body,
            body_bytes=call.body_bytes,
            model=call.params.model,
            streaming=streaming,
            store=call.params.store is True,
            transport=call.transport,
            endpoint=call.endpoint,
            tenant=call.tenant,
            metadata=call.params.metadata,
            client_request_id=call.client_request_id,
            headers=call.headers,
            credentials=call.credentials,
            aggregator=self.aggregator,
            refuse_unkept=True,
        )

    def produce(self, request: EngineRequest) -> Awaitable[dict[str, Any]]:
        """The engine's whole response."""
        return self.engine.complete(request)

    def produce_stream(self, request: EngineRequest) -> AsyncIterator[list[dict[str, Any]]]:
        """The engine's stream, in batches."""
        return self.engine.stream(request)

    async def complete(self, call: ChatCall) -> dict[str, Any]:
        """A non-stream ``chat.completion``; raises :class:`APIError` on failure."""
        capture = self._open(call, streaming=False)
        request = EngineRequest(call.body, call.request_id, call.response_id, call.authorization)
        with outcome(capture):
            completion = await self.produce(request)
            if capture is not None:
                capture.engine_response_id(completion.get("id"))
            completion["id"] = call.response_id
            if capture is not None:
                capture.response(completion)
        if capture is not None and capture.commit is not None:
            await committed(capture.commit)  # best effort: no coroutine to await per request
        return completion

    async def complete_json(
        self, call: ChatCall, encode: Callable[[dict[str, Any]], bytes]
    ) -> bytes:
        """:meth:`complete` as the bytes the client receives, ``encode`` (the transport's JSON
        encoder) of the answer.  The capture keeps these bytes, so that with the audit process
        the answer is not encoded once more to be handed over.  (:meth:`complete`'s steps, not
        a call to a shared coroutine: one coroutine fewer per request on the HTTP path.)"""
        capture = self._open(call, streaming=False)
        request = EngineRequest(call.body, call.request_id, call.response_id, call.authorization)
        with outcome(capture):
            completion = await self.produce(request)
            if capture is not None:
                capture.engine_response_id(completion.get("id"))
            completion["id"] = call.response_id
            sent = encode(completion)
            if capture is not None:
                capture.response(completion, sent)
        if capture is not None and capture.commit is not None:
            await committed(capture.commit)  # best effort: no coroutine to await per request
        return sent

    async def stream(self, call: ChatCall) -> ChatStream:
        """Start a stream: returns once the engine produced its first batch, so that errors
        before any output reach the client as a plain HTTP error, not as a broken stream."""
        capture = self._open(call, streaming=True)
        options = call.body.get("stream_options")
        client_usage = isinstance(options, dict) and options.get("include_usage") is True
        body = call.body
        if capture is not None and not client_usage:
            # Ask for usage so the record has it; strip it from what the client sees.  Without
            # a capture there is nothing to record, so the engine is asked for what the client
            # asked, no more.
            body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        request = EngineRequest(body, call.request_id, call.response_id, call.authorization)
        batches = self.produce_stream(request)
        try:
            first = await anext(batches, None)
        except BaseException as exc:
            if capture is not None:
                capture.raised(exc)
                capture.finish()
            await aclose(batches)
            raise
        return ChatStream(
            first or [],
            batches,
            capture,
            call.response_id,
            client_usage,
            single_choice=self.single_choice(call),
        )

    def single_choice(self, call: ChatCall) -> bool:
        """Whether the answer has one choice (its finish ends the answer, see
        :meth:`ChatStream.finishes`)."""
        return call.params.n is None or call.params.n == 1


class ChatStream:
    """The chunks a streaming client receives, in batches; iterate once, then ``aclose``.

    Raises :class:`APIError` from iteration when the engine fails mid-stream (the transport
    sends it as an in-stream error event).  The record is published when the stream ends,
    fails, or is closed early (client gone).
    """

    def __init__(
        self,
        first: list[Chunk],
        rest: AsyncIterator[list[Chunk]],
        capture: AuditCapture | None,
        response_id: str,
        client_usage: bool,
        *,
        single_choice: bool = True,
    ) -> None:
        self._first = first
        self._single_choice = single_choice
        self._rest = rest
        self._capture = capture
        self._response_id = response_id
        self._client_usage = client_usage
        self._iterator = self._relay()

    async def committed(self) -> None:
        """Wait until the record is durable: call after the last batch, before the end of the
        stream is sent.  Returns at once in best effort; raises :class:`ServiceUnavailableError`
        when the record could not be made durable."""
        capture = self._capture
        if capture is not None and capture.commit is not None:
            await committed(capture.commit)

    def finishes(self, batch: list[Chunk]) -> bool:
        """Whether ``batch`` ends the answer: it holds the finish_reason of the only choice
        (``n`` = 1), after which the engine sends at most a usage chunk."""
        if not self._single_choice:
            return False
        for chunk in reversed(batch):
            choices = chunk.get("choices")
            if choices:
                return choices[0].get("finish_reason") is not None
        return False

    def sent(self, frames: bytes) -> None:
        """The bytes the client receives for the batch just yielded (server-sent events, one
        ``data:`` event per chunk): the capture may keep them instead of encoding the batch."""
        if self._capture is not None:
            self._capture.sent(frames)

    def __aiter__(self) -> AsyncIterator[list[Chunk]]:
        return self._iterator

    async def aclose(self) -> None:
        """Stop early (client gone) or after the end; publishes the record if not yet done."""
        await aclose(self._iterator)
        await aclose(self._rest)
        if self._capture is not None and not self._capture.finished:
            self._capture.cancel()
            self._capture.finish()

    async def _relay(self) -> AsyncIterator[list[Chunk]]:
        # CancelledError (client gone while the engine worked) or GeneratorExit (the transport
        # stopped reading) leave the block as ``cancelled``: the client did not get the whole
        # answer.
        with outcome(self._capture):
            batch = self._rewrite(self._first)
            self._first = []  # not kept alive for the rest of the stream
            if batch:
                yield batch
            async for raw in self._rest:
                batch = self._rewrite(raw)
                if batch:
                    yield batch

    def _rewrite(self, raw: list[Chunk]) -> list[Chunk]:
        """Give every chunk the gateway's id, strip unrequested usage, tap into the capture."""
        response_id = self._response_id
        strip = not self._client_usage
        capture = self._capture
        if capture is None:
            out: list[Chunk] = []
            for chunk in raw:
                chunk["id"] = response_id
                if strip and "usage" in chunk:
                    del chunk["usage"]
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
                out.append(chunk)
            return out
        # The capture path runs per chunk of every stored stream: plain loops here, and the
        # capture is fed once per batch.
        out = []
        engine_id: str | None = None
        for chunk in raw:
            if engine_id is None:
                value = chunk.get("id")
                if type(value) is str:
                    engine_id = value
            chunk["id"] = response_id
            if "usage" in chunk:
                usage = chunk["usage"]
                if usage is not None:
                    capture.usage(usage)
                if strip:
                    del chunk["usage"]
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
            out.append(chunk)
        if engine_id is not None:
            capture.engine_response_id(engine_id)
        capture.chunks(out)
        return out


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (releasing what it holds); plain iterators have nothing to close."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
