"""``POST /v1/responses``: the pipeline every transport calls, as chat's is for chat.

One call: the stored conversation of ``previous_response_id`` is fetched, the capture is opened
(the same :class:`~auditgate.audit.capture.Auditor` as chat: force logging, sampling, redaction,
integrity, durable commits, header capture), the engine answers, and the capture gets the
request as received and the final ``response`` object the client saw; ``finish`` runs in
``finally``, so an engine failure or a client that went away still yields one record.

Engines: by default the request is translated to a chat completion
(:func:`~auditgate.endpoints.responses.translate.to_chat_body`) and the engine's chat output
becomes the Responses events and object (:class:`~auditgate.endpoints.responses.events.
ResponseStreamWriter`) — the mock too: it then serves the Responses API through exactly the code
that runs in front of vLLM or llama.cpp, so everything it can do (tools, reasoning, logprobs,
structured output, length limits) is exercised on that path.  With ``AUDITGATE_RESPONSES=
passthrough`` and an upstream, :mod:`.passthrough` forwards to the upstream's own
``/v1/responses``.  Either way the conversation is rebuilt from the gateway's store, so
``previous_response_id`` works in front of any backend, and the ids the client sees are the
gateway's (``resp_<request_id>``).

The record: ``endpoint: "responses"``; ``request`` the body as received; ``response`` the final
``response`` object (a stream's, as its terminal event carried it; a cut stream's, as far as it
went: status ``cancelled`` or ``failed``); ``usage`` in chat terms (``prompt_tokens``,
``completion_tokens``, ``total_tokens`` and their details), as every record has it, so stats and
exports read every endpoint alike; ``status`` as for chat: ``completed`` (the ``response`` says
whether it was ``completed`` or ``incomplete``), ``error`` (``failed``), ``cancelled``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from auditgate.audit.capture import AuditCapture, Auditor, outcome
from auditgate.audit.commit import committed
from auditgate.endpoints.responses.events import ResponseStreamWriter
from auditgate.endpoints.responses.history import context_items
from auditgate.endpoints.responses.objects import response_id as response_id_of
from auditgate.endpoints.responses.protocol import ResponsesRequest
from auditgate.endpoints.responses.sse import encode_events
from auditgate.endpoints.responses.stored import StoredResponses
from auditgate.endpoints.responses.translate import to_chat_body, to_response
from auditgate.engines.base import Engine, EngineRequest
from auditgate.errors import APIError, InvalidRequestError, NotFoundError
from auditgate.pipeline.chat import aclose

if TYPE_CHECKING:
    from auditgate.endpoints.responses.passthrough import ResponsesPassthrough

__all__ = ["ENDPOINT", "ResponsesCall", "ResponsesService", "ResponsesStream"]

ENDPOINT: Final = "responses"
Event = dict[str, Any]


@dataclasses.dataclass(slots=True, kw_only=True)
class ResponsesCall:
    """One validated Responses request, whatever transport brought it."""

    request: ResponsesRequest
    """The validated request (its ``body`` is the client's JSON, never mutated)."""
    request_id: str
    """Gateway-generated UUIDv7; the response id is ``resp_<request_id>``."""
    transport: str = "http"
    tenant: str | None = None
    """The caller's tenant: the record's ``tenant``."""
    scope: str | None = None
    """The tenant whose stored responses the caller may read (``None``: all of them)."""
    client_request_id: str | None = None
    headers: dict[str, str] | None = None
    """Request headers captured into the record (already filtered and redacted)."""
    authorization: str | None = dataclasses.field(default=None, repr=False)
    """The client's credential, only for upstream key passthrough."""
    credentials: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    """The gateway API key the request authenticated with (redacted wherever repeated)."""

    @property
    def response_id(self) -> str:
        return response_id_of(self.request_id)


class Source(Protocol):
    """What produces a response's events: the translation of a chat engine's output, or an
    upstream's own Responses stream."""

    def events(self) -> AsyncIterator[list[Event]]:
        """The events up to (not including) the terminal one, in batches."""
        ...

    def finish(self) -> list[Event]:
        """The closing events after :meth:`events` ended (the terminal event last)."""
        ...

    def cancel(self) -> None:
        """The client went away: :attr:`response` becomes the partial object."""
        ...

    async def aclose(self) -> None:
        """Release the engine's or upstream's stream."""
        ...

    @property
    def failure(self) -> APIError | None:
        """The engine failure that ended the stream as ``failed``, if any."""
        ...

    @property
    def response(self) -> dict[str, Any] | None:
        """The final ``response`` object, once finished or cancelled."""
        ...

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token usage in chat terms, once known."""
        ...


class ResponsesService:
    """Runs Responses requests through an engine with audit capture (see the module docstring).

    ``passthrough``: makes the source of a request for the upstream's own ``/v1/responses``
    (``None``: translate to chat completions).
    """

    def __init__(
        self,
        engine: Engine,
        auditor: Auditor,
        stored: StoredResponses,
        passthrough: ResponsesPassthrough | None = None,
    ) -> None:
        self.engine = engine
        self.auditor = auditor
        self.stored = stored
        self.passthrough = passthrough

    async def start(self) -> None:
        """Open the passthrough's connection pool (nothing to do when translating)."""
        if self.passthrough is not None:
            await self.passthrough.start()

    async def close(self) -> None:
        """Close the passthrough's connection pool."""
        if self.passthrough is not None:
            await self.passthrough.close()

    async def history(self, call: ResponsesCall) -> list[dict[str, Any]]:
        """The stored items the request continues (``[]`` without ``previous_response_id``)."""
        previous = call.request.params.previous_response_id
        if previous is None:
            return []
        if self.stored.store is None:
            raise InvalidRequestError(
                "'previous_response_id' needs stored responses, and this gateway has no store. "
                "Configure AUDITGATE_STORE_URL, or the sqlite or postgres audit sink.",
                param="previous_response_id",
                code="store_not_configured",
            )
        chain = await self.stored.chain(previous, call.scope)
        if chain is None:
            raise NotFoundError(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return context_items(chain)

    async def create(self, call: ResponsesCall) -> dict[str, Any]:
        """A non-stream ``response`` object; raises :class:`APIError` on failure."""
        history = await self.history(call)
        capture = self._open(call, streaming=False)
        with outcome(capture):
            if self.passthrough is not None:
                response, usage, engine_id = await self.passthrough.create(call, history)
            else:
                response, usage, engine_id = await self._translate(call, history)
            if capture is not None:
                capture.engine_response_id(engine_id)
                capture.response(response)
                if usage is not None:
                    capture.usage(usage)  # chat terms, over the response's own
        if capture is not None:
            self._remember(call, capture)
            if capture.commit is not None:
                await committed(capture.commit)
        return response

    async def stream(self, call: ResponsesCall) -> ResponsesStream:
        """Start a stream: returns once the engine produced its first output, so an error
        before any reaches the client as a plain HTTP error, not as a failed stream."""
        history = await self.history(call)
        capture = self._open(call, streaming=True)
        try:
            if self.passthrough is not None:
                source: Source = await self.passthrough.stream(call, history, capture)
            else:
                source = await _TranslatedStream.start(self.engine, call, history, capture)
        except BaseException as exc:
            if capture is not None:
                capture.raised(exc)
                capture.finish()
            raise
        return ResponsesStream(self, call, source, capture)

    async def _translate(
        self, call: ResponsesCall, history: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
        body = to_chat_body(call.request, history)
        request = EngineRequest(body, call.request_id, call.response_id, call.authorization)
        created_at = int(time.time())
        completion = await self.engine.complete(request)
        response = to_response(
            completion,
            call.request,
            request_id=call.request_id,
            created_at=created_at,
            completed_at=int(time.time()),
        )
        return response, completion.get("usage"), completion.get("id")

    def _open(self, call: ResponsesCall, streaming: bool) -> AuditCapture | None:
        request = call.request
        return self.auditor.open(
            request_id=call.request_id,
            body=request.body,
            model=request.params.model,
            streaming=streaming,
            store=request.store,
            transport=call.transport,
            endpoint=ENDPOINT,
            tenant=call.tenant,
            metadata=request.params.metadata,
            client_request_id=call.client_request_id,
            headers=call.headers,
            credentials=call.credentials,
            aggregator=_Unaggregated,
            refuse_unkept=True,
        )

    def _remember(self, call: ResponsesCall, capture: AuditCapture) -> None:
        """Bridge the store's lag for a stored response (see :mod:`.stored`)."""
        record = capture.record
        if (
            record is not None
            and call.request.store
            and record.mode == "full"
            and self.stored.store is not None
        ):
            self.stored.recent.add(call.response_id, record)


class ResponsesStream:
    """The SSE bytes of one streamed response; iterate once, then :meth:`end`, then
    :meth:`aclose` (in ``finally``).

    Iteration yields the events before the terminal one; engine failures do not escape it (they
    end the response as ``failed``, which :meth:`end` sends).  :meth:`end` publishes the record,
    waits for its durable commit, and returns the closing events.
    """

    def __init__(
        self,
        service: ResponsesService,
        call: ResponsesCall,
        source: Source,
        capture: AuditCapture | None,
    ) -> None:
        self._service = service
        self._call = call
        self._source = source
        self._capture = capture
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        capture = self._capture
        try:
            async for events in self._source.events():
                if events:
                    if capture is not None:
                        capture.output()
                    yield encode_events(events)
        except Exception as exc:
            # The source ends the response as ``failed`` on the engine's APIError; what else
            # escapes is a bug that breaks the client's response: ``error`` (not the
            # ``cancelled`` that :meth:`aclose` records for a client gone).
            if capture is not None:
                capture.raised(exc)
            raise

    async def end(self) -> bytes:
        """The closing events' bytes, once the record is published (and durable)."""
        self._ended = True
        events = self._source.finish()
        capture = self._capture
        commit = None
        if capture is not None:
            self._record(capture)
            failure = self._source.failure
            if failure is not None:
                capture.fail(failure)
            commit = capture.finish()
            self._service._remember(self._call, capture)
        if commit is not None:
            await committed(commit)
        return encode_events(events)

    async def aclose(self) -> None:
        """Stop early (client gone) or after the end; publishes the record if not yet done."""
        capture = self._capture
        if not self._ended:
            self._ended = True
            self._source.cancel()
            if capture is not None:
                self._record(capture)
                capture.cancel()
        await self._source.aclose()
        if capture is not None and not capture.finished:
            capture.finish()

    def _record(self, capture: AuditCapture) -> None:
        response = self._source.response
        if response is not None:
            capture.response(response)
        usage = self._source.usage
        if usage is not None:
            capture.usage(usage)


class _TranslatedStream:
    """A chat engine's stream, written as Responses events."""

    def __init__(
        self,
        writer: ResponseStreamWriter,
        first: list[dict[str, Any]],
        rest: AsyncIterator[list[dict[str, Any]]],
    ) -> None:
        self._writer = writer
        self._first = first
        self._rest = rest
        self._failure: APIError | None = None
        self._iterator: AsyncIterator[list[Event]] | None = None
        self._held: list[Event] = []
        """Events of the answer's last batch, sent with the closing ones."""

    @classmethod
    async def start(
        cls,
        engine: Engine,
        call: ResponsesCall,
        history: list[dict[str, Any]],
        capture: AuditCapture | None,
    ) -> _TranslatedStream:
        body = to_chat_body(call.request, history)  # streams ask for usage (stream_options)
        request = EngineRequest(body, call.request_id, call.response_id, call.authorization)
        writer = ResponseStreamWriter(
            call.request, request_id=call.request_id, created_at=int(time.time())
        )
        batches = engine.stream(request)
        try:
            first = await anext(batches, None)
        except BaseException:
            await aclose(batches)
            raise
        if capture is not None:
            engine_id = next((c.get("id") for c in first or () if c.get("id")), None)
            capture.engine_response_id(engine_id)
        return cls(writer, first or [], batches)

    def events(self) -> AsyncIterator[list[Event]]:
        if self._iterator is None:
            self._iterator = self._relay()
        return self._iterator

    async def _relay(self) -> AsyncIterator[list[Event]]:
        writer = self._writer
        first, self._first = self._first, []
        events = writer.feed(first)
        if _finishes(first):
            # The answer's last batch goes out with the closing events, in one write (the
            # engine sends at most a usage chunk after it, at once): a system call and a TCP
            # segment fewer per stream, and in durable mode it waits for the commit with them.
            self._held = events
        else:
            yield events
        try:
            async for batch in self._rest:
                events = writer.feed(batch)
                if self._held or _finishes(batch):
                    self._held += events
                    continue
                yield events
        except APIError as exc:
            self._failure = exc
        finally:
            await aclose(self._rest)

    def finish(self) -> list[Event]:
        held, self._held = self._held, []
        if self._failure is not None:
            return held + self._writer.fail(self._failure)
        return held + self._writer.finish(completed_at=int(time.time()))

    def cancel(self) -> None:
        if self._writer.response is None:
            self._writer.cancel()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await aclose(self._iterator)
        await aclose(self._rest)

    @property
    def failure(self) -> APIError | None:
        return self._failure

    @property
    def response(self) -> dict[str, Any] | None:
        return self._writer.response

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._writer.usage


class _Unaggregated:
    """The capture's aggregator of a Responses stream: none — the stream hands the capture its
    final object (:meth:`~auditgate.audit.capture.AuditCapture.response`), or nothing."""

    __slots__ = ()

    def feed(self, chunk: dict[str, Any]) -> None:
        """Never fed: the capture gets no chunks of a Responses stream."""

    def feed_all(self, chunks: Iterable[dict[str, Any]]) -> None:
        """Never fed: the capture gets no chunks of a Responses stream."""

    def finish(self) -> dict[str, Any] | None:
        return None


def _finishes(batch: list[dict[str, Any]]) -> bool:
    """Whether ``batch`` holds the finish reason of choice 0 (the end of the answer)."""
    for chunk in reversed(batch):
        choices = chunk.get("choices")
        if choices:
            return choices[0].get("finish_reason") is not None
    return False
