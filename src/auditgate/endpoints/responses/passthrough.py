"""``AUDITGATE_RESPONSES=passthrough``: the upstream's own ``/v1/responses`` answers.

The request goes to ``{upstream}/responses`` (the model's route, else the default upstream) as
the client sent it, except:

- a ``previous_response_id`` is resolved by the gateway, as in translate mode: the stored
  conversation's items go before ``input`` and the field is not sent — the client only ever
  sees the gateway's ids, which the upstream does not know;
- ``store: false``: the gateway is the store; a copy in the upstream would be one the gateway
  never reads (and, in vLLM, memory that is never freed).

What comes back is relayed as it came, but for the ids the client must see: every ``response``
object (the non-stream body, the lifecycle and terminal events' ``response``) gets ``id``
``resp_<request_id>``, the client's ``previous_response_id`` and ``store``; the upstream's id is
kept in the record as ``engine_response_id``.  Events are relayed in order with the upstream's
``sequence_number``; the record's ``response`` is the terminal event's (or, for a stream that
was cut, :class:`~.aggregate.ResponsesStreamAggregator`'s partial object).  A stream that ends
without a terminal event, or with an ``error`` event, ends with a ``response.failed`` event the
gateway writes.  Credentials and errors are handled as for chat (see
:mod:`auditgate.engines.openai_http`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import msgspec
from yarl import URL

from auditgate.config import GatewaySettings
from auditgate.endpoints.responses.aggregate import ResponsesStreamAggregator
from auditgate.endpoints.responses.history import turn_input_items
from auditgate.endpoints.responses.objects import chat_usage
from auditgate.engines.sse_decoder import SSEDecoder, SSEError
from auditgate.engines.upstream import (
    Upstream,
    UpstreamRejection,
    error_fields,
    incomplete,
    invalid,
    parse_upstream,
    read_bounded,
    unreachable,
)
from auditgate.errors import UNDECODABLE, APIError, NotFoundError, UpstreamError

if TYPE_CHECKING:
    from auditgate.audit.capture import AuditCapture
    from auditgate.endpoints.responses.service import ResponsesCall

__all__ = ["ResponsesPassthrough", "chat_usage"]

Event = dict[str, Any]
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode
_TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _Upstream:
    """One upstream: its ``/responses`` URL, and the parsed base its errors name."""

    __slots__ = ("base", "label", "url")

    def __init__(self, base: str) -> None:
        self.base: Upstream = parse_upstream(base)
        self.url = URL(str(self.base.chat_url).removesuffix("/chat/completions") + "/responses")
        self.label = self.base.label


class ResponsesPassthrough:
    """Relays Responses requests to the upstreams (see the module docstring)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._default = _Upstream(settings.upstream_url) if settings.upstream_url else None
        self._routes = {model: _Upstream(url) for model, url in settings.upstream_routes}
        key = settings.upstream_api_key
        self._passthrough_key = settings.upstream_key_passthrough
        auth = (
            {}
            if self._passthrough_key or key is None
            else {"Authorization": f"Bearer {key.reveal()}"}
        )
        self._secrets = tuple(v for v in (key.reveal() if key else None,) if v)
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **auth}
        self._timeout = aiohttp.ClientTimeout(
            total=settings.upstream_timeout_s, sock_connect=settings.upstream_connect_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        label = self._default.label if self._default else None
        return f"ResponsesPassthrough(default={label!r}, routes={len(self._routes)})"

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def create(
        self, call: ResponsesCall, history: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
        """The upstream's ``response`` with the gateway's ids, its usage in chat terms, and the
        upstream's own id."""
        upstream, response = await self._post(call, history, stream=False)
        try:
            try:
                body = await response.read()
            except aiohttp.ClientError as exc:
                raise incomplete(upstream.base, exc) from exc
        finally:
            response.release()
        try:
            answer = _decode_object(body)
        except UNDECODABLE as exc:
            raise invalid(upstream.base, "a response that is not a JSON object") from exc
        if answer.get("object") != "response":
            raise invalid(upstream.base, "a body that is not a response object")
        engine_id = answer.get("id")
        return _own(answer, call), chat_usage(answer.get("usage")), engine_id

    async def stream(
        self,
        call: ResponsesCall,
        history: Sequence[dict[str, Any]],
        capture: AuditCapture | None,
    ) -> _RelayedStream:
        """The upstream's stream, once its head arrived (an error before it is raised)."""
        upstream, response = await self._post(call, history, stream=True)
        if response.content_type == "application/json":
            error = await self._error(upstream, response, call)
            response.close()
            raise error
        return _RelayedStream(upstream, response, call, capture, self._scrub(call))

    async def _post(
        self, call: ResponsesCall, history: Sequence[dict[str, Any]], *, stream: bool
    ) -> tuple[_Upstream, aiohttp.ClientResponse]:
        upstream = self._route(call)
        session = self._session
        if session is None:
            raise UpstreamError("the responses passthrough is not started", code="not_started")
        headers = {**self._headers, "X-Request-Id": call.request_id}
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if self._passthrough_key and call.authorization:
            headers["Authorization"] = call.authorization
        send = functools.partial(
            session.post,
            upstream.url,
            data=_encode(_upstream_body(call, history)),
            headers=headers,
            allow_redirects=False,
        )
        try:
            try:
                response = await send()
            except aiohttp.ServerDisconnectedError:
                response = await send()  # a pooled connection closed under us: answered nothing
        except TimeoutError as exc:
            raise UpstreamError(
                f"upstream {upstream.label} timed out", code="upstream_timeout", status_code=504
            ) from exc
        except aiohttp.ClientError as exc:
            raise unreachable(upstream.base, exc) from exc
        if not 200 <= response.status < 300:
            error = await self._error(upstream, response, call)
            response.release()
            raise error
        return upstream, response

    def _route(self, call: ResponsesCall) -> _Upstream:
        upstream = self._routes.get(call.request.params.model) or self._default
        if upstream is None:
            raise NotFoundError(
                f"The model {call.request.params.model!r} does not exist or you do not have "
                "access to it.",
                param="model",
                code="model_not_found",
            )
        return upstream

    async def _error(
        self, upstream: _Upstream, response: aiohttp.ClientResponse, call: ResponsesCall
    ) -> APIError:
        status = response.status
        try:
            body = await read_bounded(response)
        except (TimeoutError, aiohttp.ClientError):
            body = b""
        fields = error_fields(body)
        scrub = self._scrub(call)
        if fields is not None and 400 <= status < 500:
            message, error_type, param, code = fields
            return UpstreamRejection(
                scrub(message),
                status_code=status,
                error_type=error_type or "invalid_request_error",
                param=param,
                code=code,
            )
        detail = f": {scrub(fields[0])}" if fields else ""
        return UpstreamError(
            f"upstream {upstream.label} returned HTTP {status}{detail}", code="upstream_error"
        )

    def _scrub(self, call: ResponsesCall) -> Any:
        secrets = [*self._secrets]
        if self._passthrough_key and call.authorization:
            secrets.append(call.authorization)
            secrets.append(call.authorization.removeprefix("Bearer ").strip())

        def scrub(message: str) -> str:
            for secret in secrets:
                if secret:
                    message = message.replace(secret, "<redacted>")
            return message

        return scrub


def _upstream_body(call: ResponsesCall, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    body = dict(call.request.body)
    body["store"] = False
    if "previous_response_id" in body:
        del body["previous_response_id"]
        own = turn_input_items(call.request.body, call.response_id)
        # The listed form of items is what the API takes as input, ids included.
        body["input"] = [*history, *own]
    return body


def _own(response: dict[str, Any], call: ResponsesCall) -> dict[str, Any]:
    """``response`` with the gateway's id, the client's ``previous_response_id`` and ``store``."""
    out = dict(response)
    out["id"] = call.response_id
    out["previous_response_id"] = call.request.params.previous_response_id
    out["store"] = call.request.store
    return out


class _RelayedStream:
    """An upstream's Responses stream, relayed (see the module docstring)."""

    def __init__(
        self,
        upstream: _Upstream,
        response: aiohttp.ClientResponse,
        call: ResponsesCall,
        capture: AuditCapture | None,
        scrub: Any,
    ) -> None:
        self._upstream = upstream
        self._http = response
        self._call = call
        self._capture = capture
        self._scrub = scrub
        self._aggregator = ResponsesStreamAggregator()
        self._terminal: Event | None = None
        self._failure: APIError | None = None
        self._last_seq = -1
        self._response: dict[str, Any] | None = None
        self._iterator: AsyncIterator[list[Event]] | None = None

    def events(self) -> AsyncIterator[list[Event]]:
        if self._iterator is None:
            self._iterator = self._relay()
        return self._iterator

    async def _relay(self) -> AsyncIterator[list[Event]]:
        decoder = SSEDecoder()
        content = self._http.content
        upstream = self._upstream
        try:
            while self._terminal is None and self._failure is None:
                try:
                    data = await content.readany()
                except TimeoutError:
                    self._failure = UpstreamError(
                        f"upstream {upstream.label} timed out", code="upstream_timeout"
                    )
                    break
                except aiohttp.ClientError as exc:
                    self._failure = incomplete(upstream.base, exc)
                    break
                if not data:
                    self._failure = UpstreamError(
                        f"upstream {upstream.label} ended the stream before its last event",
                        code="upstream_incomplete",
                    )
                    break
                try:
                    batch = self._batch(decoder.feed(data))
                except SSEError as exc:
                    self._failure = invalid(upstream.base, f"a malformed event stream ({exc})")
                    break
                if batch:
                    yield batch
        finally:
            self._http.close() if self._terminal is None else self._http.release()

    def _batch(self, raw: Sequence[Any]) -> list[Event]:
        batch: list[Event] = []
        for sse in raw:
            if not sse.data or sse.data == b"[DONE]":
                continue
            try:
                event = _decode_object(sse.data)
            except UNDECODABLE:
                self._failure = invalid(self._upstream.base, "an event that is not a JSON object")
                break
            kind = event.get("type")
            if kind == "error" or sse.event == "error":
                message = event.get("message") or str(event.get("error"))
                self._failure = UpstreamError(
                    self._scrub(f"upstream {self._upstream.label} error: {message}"),
                    code="upstream_error",
                )
                break
            response = event.get("response")
            if isinstance(response, dict):
                if self._capture is not None and kind == "response.created":
                    self._capture.engine_response_id(response.get("id"))
                event = {**event, "response": _own(response, self._call)}
            seq = event.get("sequence_number")
            if isinstance(seq, int):
                self._last_seq = seq
            self._aggregator.feed(event)
            if kind in _TERMINAL:
                self._terminal = event
                break
            batch.append(event)
        return batch

    def finish(self) -> list[Event]:
        if self._terminal is not None and self._failure is None:
            self._response = self._terminal["response"]
            if self._terminal["type"] == "response.failed":
                error = self._response.get("error") if self._response else None
                message = error.get("message") if isinstance(error, dict) else None
                self._failure = UpstreamError(str(message or "the response failed"))
            return [self._terminal]
        failure = self._failure or UpstreamError("the upstream stream ended early")
        self._failure = failure
        response = self._aggregator.finish(failure=failure)
        if response is None:  # not even response.created came: the gateway's own shell
            response = {"id": self._call.response_id, "object": "response", "output": []}
        response = {**response, "status": "failed"}
        self._response = response
        return [
            {
                "type": "response.failed",
                "sequence_number": self._last_seq + 1,
                "response": response,
            }
        ]

    def cancel(self) -> None:
        if self._response is None:
            self._response = self._aggregator.finish(cancelled=True)

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        self._http.close()

    @property
    def failure(self) -> APIError | None:
        return self._failure

    @property
    def response(self) -> dict[str, Any] | None:
        return self._response

    @property
    def usage(self) -> dict[str, Any] | None:
        return chat_usage((self._response or {}).get("usage"))
