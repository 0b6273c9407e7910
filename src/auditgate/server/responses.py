"""The Responses API over HTTP: ``POST /v1/responses`` and the stored responses' routes.

Thin: parse, authenticate (the app did), call :class:`~.service.ResponsesService` or
:class:`~.stored.StoredResponses`, write JSON or SSE.  Routes, as OpenAI defines them
(openai-python ``resources/responses``):

- ``POST /v1/responses``: a ``response`` object, or (``stream: true``) its typed events as
  server-sent events; the gateway's request id in ``X-Request-Id``.
- ``GET /v1/responses/{id}``: a stored response (``include`` / ``stream`` query parameters are
  accepted; the stored object is returned as it was sent).
- ``DELETE /v1/responses/{id}``: ``{"id", "object": "response", "deleted": true}``; a 404 after.
- ``GET /v1/responses/{id}/input_items``: ``after`` / ``before`` (item ids), ``limit`` (1-100,
  default 20), ``order`` (``desc`` default, ``asc``); OpenAI's list object.

A stored response another tenant owns is a 404, exactly like an unknown id.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auditgate.auth.keys import presented_key
from auditgate.endpoints.responses.history import input_items, page
from auditgate.endpoints.responses.protocol import validate_responses
from auditgate.endpoints.responses.service import ResponsesCall, ResponsesService
from auditgate.endpoints.responses.sse import HEADERS
from auditgate.endpoints.responses.stored import StoredResponses
from auditgate.errors import APIError, InvalidRequestError, NotFoundError
from auditgate.pipeline.request import new_request_id, parse_body, validate_client_request_id
from auditgate.server.completions import tenant_scope
from auditgate.server.disconnect import watching
from auditgate.server.params import parse_limit, storable
from auditgate.server.wire import (
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

if TYPE_CHECKING:
    from auditgate.server.app import Gateway

PATH: Final = "/v1/responses"


class ResponsesHandler:
    """Serves ``POST /v1/responses`` for one gateway (raw ASGI, like chat)."""

    def __init__(self, gateway: Gateway, service: ResponsesService) -> None:
        self.gateway = gateway
        self.service = service
        self.limit = gateway.settings.gateway.max_body_bytes
        self.capture_headers = gateway.header_capture

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        rid_header = [(b"x-request-id", request_id.encode())]
        status = 200
        try:
            call = await self._parse(scope, receive, request_id)
            if call.request.params.stream:
                status = await self._stream(call, receive, send, rid_header)
            else:
                status = await self._create(call, receive, send, rid_header)
        except APIError as exc:
            status = exc.status_code
            await send_error(send, exc, rid_header)
        except ClientGone:
            status = 499
        finally:
            self.gateway.http_metrics.observe(PATH, status, time.perf_counter() - started)

    async def _parse(self, scope: Scope, receive: Receive, request_id: str) -> ResponsesCall:
        raw = await read_body(scope, receive, self.limit, self.gateway.body_deadlines)
        request = validate_responses(parse_body(raw))
        if request.params.stream_options is not None and not request.params.stream:
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        client_id = header(scope, b"x-request-id")
        auth = header(scope, b"authorization")
        principal = scope.get("auditgate.principal")
        call = ResponsesCall(
            request=request,
            request_id=request_id,
            client_request_id=(
                validate_client_request_id(client_id.decode("latin-1"))
                if client_id is not None
                else None
            ),
            headers=self.capture_headers(scope) if self.capture_headers else None,
            authorization=auth.decode("latin-1") if auth is not None else None,
            scope=tenant_scope(principal),
        )
        if principal is not None:
            call.tenant = principal.tenant
            call.credentials = presented_key(call.authorization)
        return call

    async def _create(
        self, call: ResponsesCall, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> int:
        async with watching(receive):
            response = await self.service.create(call)
            await send_json(send, 200, encode_json(response), headers)
            return 200
        return 499

    async def _stream(
        self, call: ResponsesCall, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> int:
        stream = None
        try:
            async with watching(receive):
                stream = await self.service.stream(call)
                # The head goes out with the first events, so an error before them (none after:
                # the stream reports failures as events) is a plain HTTP error.
                start: Message | None = {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*HEADERS, *headers],
                }
                async for data in stream:
                    if start is not None:
                        await send(start)
                        start = None
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                try:
                    tail = await stream.end()  # durable mode: after the record's commit
                except APIError as exc:
                    if start is not None:
                        raise
                    await send({"type": "http.response.body", "body": _error_event(exc)})
                    return exc.status_code
                if start is not None:
                    await send(start)
                await send({"type": "http.response.body", "body": tail})
                return 200
            return 499
        finally:
            if stream is not None:
                await stream.aclose()


def _error_event(error: APIError) -> bytes:
    """OpenAI's stream ``error`` event, for an error after the head was sent."""
    event = {
        "type": "error",
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "sequence_number": 0,
    }
    return b"event: error\ndata: " + encode_json(event) + b"\n\n"


class ResponsesAPI:
    """The stored responses' route handlers (Starlette)."""

    def __init__(self, stored: StoredResponses, principal_of: Any) -> None:
        self.stored = stored
        self._principal_of = principal_of

    def _scope(self, request: Request) -> tuple[str, str | None]:
        if self.stored.store is None:
            raise InvalidRequestError(
                "Stored responses are not available: this gateway has no store. Configure "
                "AUDITGATE_STORE_URL, or the sqlite or postgres audit sink.",
                code="store_not_configured",
            )
        response_id = request.path_params["response_id"]
        if not storable(response_id):
            raise _not_found(response_id)
        return response_id, tenant_scope(self._principal_of(request.scope))

    async def retrieve(self, request: Request) -> Response:
        response_id, tenant = self._scope(request)
        record = await self.stored.get(response_id, tenant)
        if record is None:
            raise _not_found(response_id)
        return JSONResponse(record["response"])

    async def delete(self, request: Request) -> Response:
        response_id, tenant = self._scope(request)
        if not await self.stored.delete(response_id, tenant):
            raise _not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        response_id, tenant = self._scope(request)
        query = request.query_params
        limit = parse_limit(query.get("limit"))
        order = query.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequestError(
                f"Invalid 'order': expected one of 'asc' or 'desc', got {order[:80]!r}.",
                param="order",
                code="invalid_value",
            )
        chain = await self.stored.chain(response_id, tenant)
        if chain is None:
            raise _not_found(response_id)
        listed = page(
            input_items(chain),
            order="asc" if order == "asc" else "desc",
            after=query.get("after") or None,
            before=query.get("before") or None,
            limit=limit,
        )
        return JSONResponse(listed)


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found.", param="response_id", code=None
    )
