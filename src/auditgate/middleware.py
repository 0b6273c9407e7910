"""``AuditMiddleware``: auditgate's audit inside any ASGI OpenAI-compatible server.

Mount it on vLLM's or SGLang's FastAPI app (vLLM: ``vllm serve MODEL --middleware
auditgate.middleware.AuditMiddleware``, or the older path ``auditgate.asgi.AuditMiddleware``;
any Starlette/FastAPI app:
``app.add_middleware(AuditMiddleware)``) and every ``POST /v1/chat/completions``, ``POST
/v1/completions`` and ``POST /v1/responses`` yields the record the gateway would write: same
``DYN_AUDIT_*`` settings (read from the environment unless ``settings`` is given), built by the
same composition root
(:class:`~auditgate.audit.runtime.AuditRuntime`: sinks, best-effort or durable bus, redaction,
integrity chain and checkpoints), same capture code (:meth:`Auditor.open` /
:class:`AuditCapture`), transport ``http``, endpoint ``chat.completions``, ``completions``
(legacy streams aggregated per choice by
:class:`~auditgate.endpoints.completions.TextCompletionAggregator`) or ``responses`` (a
Responses stream's events aggregated by :class:`~auditgate.endpoints.responses.
ResponsesStreamAggregator` into the final ``response``, the terminal event's; ``store``
defaults to true there; ``usage`` in chat terms, as the gateway records it).

Contracts:

- **Bytes pass through untouched.**  ``receive`` is wrapped to copy the request body, ``send``
  to copy the response; nothing is added, removed or reordered, headers included.  JSON
  responses are decoded once complete; ``text/event-stream`` responses are parsed with the
  engines' :class:`~auditgate.engines.sse_decoder.SSEDecoder`, every chunk fed to the capture as the
  client receives it.  The record is published before the last byte (``[DONE]`` or the end of
  the JSON body) is handed on, as the gateway does; in durable mode that last byte waits until
  the record is in the spool (a commit that fails breaks the response: never an unaudited
  success).  Unlike the gateway, the middleware cannot refuse a request before the app answers
  it, so a full spool shows as broken responses, not as 503 ``audit_spool_full``.
- **Ids.**  The middleware cannot rewrite ids: the record's ``request_id`` is a fresh UUIDv7,
  while the client sees the server's own ``id`` (e.g. vLLM's ``chatcmpl-…``), kept in the
  record's ``response.id``; no ``X-Request-Id`` header is added.  A valid client
  ``X-Request-Id`` is kept as ``client_request_id``.
- **Usage.**  The gateway always asks its engine for usage; the middleware cannot change the
  request, so a stream's record has ``usage`` only when the client asked for it
  (``stream_options.include_usage``) or the server sends it anyway (vLLM's
  ``--enable-force-include-usage``).
- **What gets no record.**  Bodies the gateway itself would refuse (not JSON, invalid fields):
  the app answers those; a request the app answers without reading its body (e.g. a 401 from an
  auth layer inside this middleware).
- **Failures never reach the app.**  A bug or a parse error while tapping is logged (rate
  limited) and ends that request's record as ``error`` (type ``audit_tap_error``); the client's
  exchange goes on.  If the sinks cannot be opened at startup (best effort), the app keeps
  serving and the error is logged; every record that would have been stored is then counted as
  dropped for each sink (``auditgate_audit_dropped_total{reason="sink_unavailable"}``) and
  logged, rate-limited, so an unaudited answer is never silent.  In durable mode the same
  failure, or a spool it cannot use, fails the app's startup with one line.
- **Lifecycle.**  The bus starts when the app reports ``lifespan.startup.complete`` (or on the
  first chat request, for servers without lifespan) and drains when the app reports
  ``lifespan.shutdown.complete`` (sealing the integrity chain with its final checkpoint).
  :meth:`AuditMiddleware.flush` waits until every record so far is stored.  Metrics live on
  :attr:`AuditMiddleware.registry`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry

from auditgate.audit.aggregate import StreamAggregator
from auditgate.audit.capture import Aggregator, AuditCapture
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.runtime import AuditRuntime
from auditgate.audit.sink import Sink
from auditgate.config import Settings
from auditgate.endpoints.completions import TextCompletionAggregator, validate_completion
from auditgate.endpoints.responses.aggregate import ResponsesStreamAggregator
from auditgate.endpoints.responses.objects import chat_usage
from auditgate.endpoints.responses.protocol import validate_responses
from auditgate.engines.sse_decoder import SSEDecoder
from auditgate.errors import UNDECODABLE, APIError, ConfigError
from auditgate.logs import RateLimitedLog
from auditgate.pipeline.chat import CallParams
from auditgate.pipeline.request import (
    new_request_id,
    parse_body,
    validate_chat,
    validate_client_request_id,
)
from auditgate.server.headers import HeaderCapture
from auditgate.server.wire import ASGIApp, Message, Receive, Scope, Send, header

__all__ = ["AuditMiddleware"]

log = logging.getLogger("auditgate.asgi")
ENDPOINT: Final = "/v1/chat/completions"
COMPLETIONS_ENDPOINT: Final = "/v1/completions"
RESPONSES_ENDPOINT: Final = "/v1/responses"
_TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_MAX_RESPONSE_BYTES: Final = 64 << 20  # a JSON response larger than this is not decoded
_decode: Final = msgspec.json.Decoder().decode


class AuditMiddleware:
    """Audits ``POST /v1/chat/completions`` and ``POST /v1/completions`` of the wrapped ASGI
    app (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        engine: str = "asgi",
        path: str = ENDPOINT,
        completions_path: str = COMPLETIONS_ENDPOINT,
        responses_path: str = RESPONSES_ENDPOINT,
    ) -> None:
        """``settings`` default to the environment; ``sinks`` replace the configured ones;
        ``engine`` is the records' ``engine`` field (what serves behind this middleware);
        ``path`` / ``completions_path`` / ``responses_path``: the chat, legacy completions and
        Responses API routes."""
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env()
        self.path = path
        self.completions_path = completions_path
        self.responses_path = responses_path
        self.registry = CollectorRegistry()
        self.metrics = AuditMetrics(self.registry)
        audit = self.settings.audit
        # The same audit core as the gateway's: bus (durable too), processors, integrity.
        self.runtime = AuditRuntime(audit, self.metrics, engine=engine, sinks=sinks)
        self.auditor = self.runtime.auditor
        self.header_capture = HeaderCapture.build(audit.header_capture)
        self.max_body_bytes = self.settings.gateway.max_body_bytes
        self.problems = RateLimitedLog()
        self._state = "new"  # new -> running -> closed
        self._lock = asyncio.Lock()

    @property
    def auditing(self) -> bool:
        """True while records are being produced (stored, or counted as dropped while the
        sinks are unavailable)."""
        return self.auditor.enabled and self._state != "closed"

    async def start(self) -> None:
        """Start the audit runtime (opening the sinks); idempotent.  A sink that cannot be
        opened is logged, not raised: the app goes on serving and every record is counted as
        dropped.  A spool that cannot be used (durable mode) stops the app's startup."""
        async with self._lock:
            if self._state != "new":
                return
            await self.runtime.start(keep_serving=True)
            self._state = "running"

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far is in its sinks (see
        :meth:`~auditgate.audit.runtime.AuditRuntime.flush`)."""
        return await self.runtime.flush(timeout)

    async def close(self) -> None:
        """Seal the chain, drain the bus within ``AUDITGATE_DRAIN_TIMEOUT``, report losses."""
        async with self._lock:
            running, self._state = self._state == "running", "closed"
        if running:
            await self.runtime.stop(self.settings.gateway.drain_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        endpoint = self._endpoint(scope) if kind == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if self._state == "new":
            await self.start()
        if not self.auditing:
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, endpoint).run(receive, send)

    def _endpoint(self, scope: Scope) -> str | None:
        """``chat.completions`` or ``completions`` for an audited route, else ``None``."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path == self.path:
            return "chat.completions"
        if path == self.completions_path:
            return "completions"
        if path == self.responses_path:
            return "responses"
        return None

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                try:
                    await self.start()
                except ConfigError as exc:  # the operator's to fix: one line, no traceback
                    message = {"type": "lifespan.startup.failed", "message": f"auditgate: {exc}"}
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.close()
            await send(message)

        return wrapped


class _TapError(APIError):
    """The middleware could not follow the exchange; the record says so."""

    error_type = "audit_tap_error"


class _ObservedError(APIError):
    """An error the app sent its client, as the record should show it."""

    def __init__(self, message: str, error_type: str, status_code: int) -> None:
        super().__init__(message, status_code=status_code)
        self.error_type = error_type  # type: ignore[misc]


class _Exchange:
    """One audited request: taps its bytes both ways and finishes its capture exactly once."""

    __slots__ = (
        "_body",
        "_body_size",
        "_commit",
        "_decoder",
        "_ended",
        "_endpoint",
        "_off",
        "_request",
        "_request_size",
        "_status",
        "capture",
        "owner",
        "scope",
    )

    def __init__(self, owner: AuditMiddleware, scope: Scope, endpoint: str) -> None:
        self.owner = owner
        self.scope = scope
        self._endpoint = endpoint
        self.capture: AuditCapture | None = None
        self._request: list[bytes] = []
        self._request_size = 0
        self._status = 0
        self._decoder: SSEDecoder | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._ended = False
        self._off = False  # stop tapping: body too large, or the tap failed
        self._commit: Awaitable[None] | None = None
        """Durable mode: the record's commit, awaited before the final message goes out."""

    async def run(self, receive: Receive, send: Send) -> None:
        async def tapped_receive() -> Message:
            message = await receive()
            self._guard(self._on_receive, message)
            return message

        async def tapped_send(message: Message) -> None:
            self._guard(self._on_send, message)
            commit, self._commit = self._commit, None
            if commit is not None:
                # Durable mode: the end of the answer waits for its record.  Headers are gone
                # already, so a failed commit can only break the response (the exception
                # propagates into the app and the server closes the connection) — never an
                # unaudited success.
                await commit
            try:
                await send(message)
            except BaseException:
                self._stop(cancelled=True)  # the client went away under us
                raise

        try:
            await self.owner.app(self.scope, tapped_receive, tapped_send)
        except BaseException as exc:
            if self.capture is not None and not self._ended:
                # The server answers whatever leaves the app with a 500 (or cuts a started
                # response): an APIError's own status never reached the client.
                self.capture.raised(exc, told=False)
            raise
        finally:
            self._stop(cancelled=not self._ended)

    def _guard(self, tap: Any, message: Message) -> None:
        """Run ``tap``; a failure ends the record as a tap error, never the exchange."""
        if self._off:
            return
        try:
            tap(message)
        except Exception as exc:  # noqa: BLE001 - auditing must never break the app: record, log
            self.owner.problems.warning("tap", "audit: cannot follow a chat exchange: %r", exc)
            capture, self.capture = self.capture, None
            self._off = True
            if capture is not None and not capture.finished:
                capture.fail(_TapError(f"auditgate could not follow the exchange: {exc}"))
                capture.finish()

    def _on_receive(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.disconnect":
            self._stop(cancelled=not self._ended)
            return
        if kind != "http.request" or self.capture is not None:
            return
        chunk = message.get("body", b"")
        self._request_size += len(chunk)
        if self._request_size > self.owner.max_body_bytes:
            self._off = True  # the gateway would refuse it (413): no record
            self._request = []
            return
        if chunk:
            self._request.append(bytes(chunk))
        if not message.get("more_body", False):
            raw = b"".join(self._request)
            self._request = []
            self._open(raw)

    def _open(self, raw: bytes) -> None:
        aggregator: type[Aggregator] = StreamAggregator
        try:
            body = parse_body(raw)
            if self._endpoint == "responses":
                self._open_responses(body)
                return
            if self._endpoint == "completions":
                params: CallParams = validate_completion(body)
                aggregator = TextCompletionAggregator
            else:
                params = validate_chat(body)
        except APIError:
            return  # the gateway would answer 400 before capturing; so will the app
        client_request_id = None
        client_id = header(self.scope, b"x-request-id")
        if client_id is not None:
            try:
                client_request_id = validate_client_request_id(client_id.decode("latin-1"))
            except APIError:
                client_request_id = None  # not ours to refuse: the app decides
        owner = self.owner
        self.capture = owner.auditor.open(
            request_id=new_request_id(),
            body=body,
            model=params.model,
            streaming=params.stream is True,
            store=params.store is True,
            endpoint=self._endpoint,
            metadata=params.metadata,
            client_request_id=client_request_id,
            headers=owner.header_capture(self.scope) if owner.header_capture else None,
            aggregator=aggregator,
        )

    def _open_responses(self, body: dict[str, Any]) -> None:
        """Open the capture of a Responses request (``store`` defaults to true)."""
        try:
            request = validate_responses(body)
        except APIError:
            return  # the gateway would answer 400 before capturing; so will the app
        owner = self.owner
        params = request.params
        client_request_id = None
        client_id = header(self.scope, b"x-request-id")
        if client_id is not None:
            try:
                client_request_id = validate_client_request_id(client_id.decode("latin-1"))
            except APIError:
                client_request_id = None  # not ours to refuse: the app decides
        self.capture = owner.auditor.open(
            request_id=new_request_id(),
            body=body,
            model=params.model,
            streaming=params.stream is True,
            store=request.store,
            endpoint="responses",
            metadata=params.metadata,
            client_request_id=client_request_id,
            headers=owner.header_capture(self.scope) if owner.header_capture else None,
            aggregator=ResponsesStreamAggregator,
        )

    def _on_send(self, message: Message) -> None:
        capture = self.capture
        if capture is None or capture.finished:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self._status = int(message["status"])
            ctype = _response_header(message, b"content-type") or b""
            if self._status < 400 and ctype.startswith(b"text/event-stream"):
                self._decoder = SSEDecoder()
            return
        if kind != "http.response.body":
            return
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self._decoder is not None:
            for event in self._decoder.feed(data):
                self._on_event(capture, event.data)
                if capture.finished:
                    return
        else:
            self._body_size += len(data)
            if self._body_size > _MAX_RESPONSE_BYTES:
                raise _TapError(f"the response is larger than {_MAX_RESPONSE_BYTES} bytes")
            self._body.append(data)
            if not more:
                self._on_json(capture, b"".join(self._body))
        if not more:
            self._end(capture)

    def _on_event(self, capture: AuditCapture, data: bytes) -> None:
        if data == b"[DONE]":
            self._end(capture)  # published before [DONE] reaches the client, as the gateway does
            return
        chunk = _decode(data)
        if not isinstance(chunk, dict):
            raise _TapError("a stream event is not a JSON object")
        if self._endpoint == "responses":
            self._on_responses_event(capture, chunk)
            return
        error = _error_of(chunk, 500)
        if error is not None:
            capture.fail(error)
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            capture.usage(usage)
        capture.chunk(chunk)

    def _on_responses_event(self, capture: AuditCapture, event: dict[str, Any]) -> None:
        """A Responses stream: every event to the aggregator; the terminal one publishes the
        record before it reaches the client (there is no ``[DONE]``)."""
        kind = event.get("type")
        if kind == "error":
            message = str(event.get("message") or "the stream failed")
            capture.fail(_ObservedError(message, "api_error", 500))
            return
        capture.chunk(event)
        if kind in _TERMINAL:
            response = event.get("response")
            usage = chat_usage(response.get("usage") if isinstance(response, dict) else None)
            if usage is not None:
                capture.usage(usage)
            if kind == "response.failed":
                error = response.get("error") if isinstance(response, dict) else None
                said = error.get("message") if isinstance(error, dict) else None
                capture.fail(_ObservedError(str(said or "failed"), "api_error", 500))
            self._end(capture)

    def _on_json(self, capture: AuditCapture, raw: bytes) -> None:
        if self._status >= 400:
            try:
                value = _decode(raw)
            except UNDECODABLE:
                value = None
            error = _error_of(value, self._status) if isinstance(value, dict) else None
            capture.fail(error or _ObservedError(f"HTTP {self._status}", "api_error", self._status))
            return
        completion = _decode(raw)
        if not isinstance(completion, dict):
            raise _TapError("the response is not a JSON object")
        capture.response(completion)
        if self._endpoint == "responses":
            usage = chat_usage(completion.get("usage"))
            if usage is not None:
                capture.usage(usage)  # chat terms, as the gateway records them

    def _end(self, capture: AuditCapture) -> None:
        self._ended = True
        self._commit = capture.finish()

    def _stop(self, *, cancelled: bool) -> None:
        capture = self.capture
        if capture is None or capture.finished:
            return
        if cancelled:
            capture.cancel()
        capture.finish()


def _error_of(value: dict[str, Any], default_status: int) -> _ObservedError | None:
    """OpenAI's ``{"error": {...}}`` or vLLM's ``{"object": "error", ...}``, else None."""
    error = value.get("error")
    if not isinstance(error, dict):
        if value.get("object") != "error":
            return None
        error = value
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else default_status
    return _ObservedError(
        str(error.get("message", "")), str(error.get("type") or "api_error"), status
    )


def _response_header(message: Message, name: bytes) -> bytes | None:
    for key, value in message.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value)
    return None
