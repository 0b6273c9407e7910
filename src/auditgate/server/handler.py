"""The HTTP handler of ``POST /v1/chat/completions`` (and, subclassed in
:mod:`auditgate.server.legacy`, of completions and embeddings): parse, call the pipeline, write
JSON or SSE.  (The pipeline it calls is :mod:`auditgate.pipeline.chat`.)

A thin transport: everything audit-related happens in :mod:`auditgate.pipeline.chat`.  The one
thing only the transport can know is that the client went away; it learns it from an
``http.disconnect`` message and cancels the request's task, which the pipeline records as
``cancelled``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Final

from auditgate.auth.keys import presented_key
from auditgate.errors import APIError
from auditgate.pipeline.chat import CallParams, ChatCall, ChatPipeline
from auditgate.pipeline.request import (
    new_request_id,
    parse_body,
    validate_chat,
    validate_client_request_id,
)
from auditgate.server import sse_frames
from auditgate.server.disconnect import watching
from auditgate.server.headers import HeaderCapture
from auditgate.server.metrics import HttpMetrics
from auditgate.server.wire import (
    BodyDeadlines,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    encode_json,
    header,
    read_body,
    send_error,
    send_json,
)

ENDPOINT: Final = "/v1/chat/completions"


class ChatHandler:
    """Serves chat completions through a pipeline.

    Endpoints of the same shape (legacy completions, embeddings) subclass it: they name their
    path, record endpoint and id prefix, validate their own body, and bring their pipeline.
    """

    path: ClassVar[str] = ENDPOINT
    """The route, and the ``endpoint`` label of the HTTP metrics."""
    endpoint: ClassVar[str] = "chat.completions"
    """The record's ``endpoint``."""
    id_prefix: ClassVar[str] = "chatcmpl-"
    """The client's response id is this and the request id."""

    def __init__(
        self,
        pipeline: ChatPipeline,
        *,
        max_body_bytes: int,
        deadlines: BodyDeadlines,
        capture_headers: HeaderCapture | None,
        metrics: HttpMetrics,
    ) -> None:
        """``max_body_bytes``: larger bodies get 413; ``deadlines``: the body's arrival clock;
        ``capture_headers``: headers copied into records (None: none); ``metrics``: the HTTP
        request and time-to-first-token metrics."""
        self.pipeline = pipeline
        self.limit = max_body_bytes
        self.deadlines = deadlines
        self.capture_headers = capture_headers
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        rid_header = [(b"x-request-id", request_id.encode())]
        metrics = self.metrics
        status = 200
        try:
            call = await self._parse(scope, receive, request_id)
            principal = scope.get("auditgate.principal")
            if principal is not None:
                call.tenant = principal.tenant
                call.credentials = presented_key(call.authorization)
            if call.params.stream:
                status = await self._stream(call, receive, send, rid_header)
            else:
                status = await self._complete(call, receive, send, rid_header)
        except APIError as exc:
            status = exc.status_code
            await send_error(send, exc, rid_header)
        except ClientGone:
            status = 499
        finally:
            metrics.observe(self.path, status, time.perf_counter() - started)

    async def _parse(self, scope: Scope, receive: Receive, request_id: str) -> ChatCall:
        raw = await read_body(scope, receive, self.limit, self.deadlines)
        body = parse_body(raw)
        params = self.validate(body)
        client_id = header(scope, b"x-request-id")
        client_request_id = None
        if client_id is not None:
            client_request_id = validate_client_request_id(client_id.decode("latin-1"))
        auth = header(scope, b"authorization")
        return ChatCall(
            body=body,
            body_bytes=raw,
            params=params,
            request_id=request_id,
            client_request_id=client_request_id,
            headers=self.capture_headers(scope) if self.capture_headers else None,
            authorization=auth.decode("latin-1") if auth is not None else None,
            endpoint=self.endpoint,
            id_prefix=self.id_prefix,
        )

    def validate(self, body: dict[str, Any]) -> CallParams:
        """The validated fields of ``body``; raises :class:`InvalidRequestError` (400)."""
        return validate_chat(body)

    async def _complete(
        self, call: ChatCall, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> int:
        async with watching(receive) as watch:
            body = await self.pipeline.complete_json(call, encode_json)
            await send_json(send, 200, body, headers)
            watch.active = False
            return 200
        return 499

    async def _stream(
        self, call: ChatCall, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> int:
        stream = None
        ttft = self.metrics.ttft
        try:
            async with watching(receive) as watch:
                started = time.perf_counter()
                stream = await self.pipeline.stream(call)
                # The response starts with its first body bytes, not before.  A stream whose
                # whole answer is one batch then goes out in one piece after its commit in durable
                # mode (headers sent ahead and the rest after the commit cost the client a wake-up
                # and the gateway ~40 us per stream: 11 % of durable stream throughput in
                # bench.durable), and if that commit fails the client gets a real 503, not a 200
                # and an error event.  No token waits for it: the first batch is already here
                # when the headers would go.
                start: Message | None = {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*sse_frames.HEADERS, *headers],
                }
                first = True
                # The batch that finishes the answer (and anything after it) goes out together
                # with [DONE], in one write: a system call and a TCP segment fewer per stream
                # (bench: +3 % stream req/s at c=64), and in durable mode it waits for the commit
                # with [DONE].  The engine sends at most a usage chunk after it, at once.
                tail = b""
                try:
                    async for batch in stream:
                        if first:
                            ttft.observe(time.perf_counter() - started)
                            first = False
                        frames = sse_frames.frames(batch)
                        stream.sent(frames)
                        if tail or stream.finishes(batch):
                            tail += frames
                            continue
                        if start is not None:
                            await send(start)
                            start = None
                        await send(
                            {"type": "http.response.body", "body": frames, "more_body": True}
                        )
                    # Durable mode: [DONE] only once the record is spooled.  Drop the last
                    # batch first: what a waiting stream holds stays small (64 streams' chunks
                    # held for the commit spill the CPU caches and cost more than the commit).
                    batch = []
                    await stream.committed()
                except APIError as exc:
                    if start is not None:
                        raise  # nothing sent yet: a plain HTTP error with its status
                    # Headers are gone already: report in-stream, as OpenAI does, and end the
                    # body.
                    await send(
                        {"type": "http.response.body", "body": tail + sse_frames.error_frame(exc)}
                    )
                    watch.active = False
                    return exc.status_code
                if start is not None:
                    await send(start)
                await send({"type": "http.response.body", "body": tail + sse_frames.DONE})
                watch.active = False
                return 200
            return 499
        finally:
            if stream is not None:
                await stream.aclose()
