"""The KServe v2 ``GRPCInferenceService`` over the gateway's chat pipeline.

A thin transport, like the HTTP one: it translates tensors into a chat body
(:mod:`auditgate.grpc.tensors`), builds a :class:`~auditgate.pipeline.chat.ChatCall` with
``transport="grpc"`` and ``endpoint="kserve.infer"``, and lets the pipeline capture — so a gRPC
request yields the same record an HTTP one would.

- ``ModelInfer``: one non-stream completion; ``stream=true`` is refused (``INVALID_ARGUMENT``), as
  Triton refuses decoupled models on unary calls.
- ``ModelStreamInfer``: a bidirectional stream carrying any number of requests, served
  concurrently; with ``stream=true`` each chunk of choice 0 becomes one response (its content
  delta in ``text_output``, ``finish_reason`` empty until the chunk that ends the choice),
  otherwise one response per request.  Errors of one request are sent as that request's
  ``error_message`` (Triton's convention) and the stream goes on; the client cancelling the call
  cancels every request in flight, which the pipeline records as ``cancelled``.
- Errors: :class:`~auditgate.errors.APIError` maps onto a gRPC status by its HTTP status
  (:func:`status_code_for`); an engine failure is also an ``error`` record.
- With API keys configured, every RPC but ``ServerLive``/``ServerReady`` needs an
  ``authorization: Bearer <key>`` metadata entry, and records carry the key's tenant.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from auditgate.auth.keys import KeyRing, Principal, presented_key
from auditgate.errors import APIError, InvalidRequestError
from auditgate.grpc.tensors import (
    InferCall,
    empty_final_response,
    infer_response,
    parse_infer_request,
)
from auditgate.pipeline.chat import ChatCall, ChatPipeline
from auditgate.pipeline.request import new_request_id, validate_chat, validate_client_request_id

Context = grpc.aio.ServicerContext[Any, Any]
CaptureHeaders = Callable[[dict[str, Any]], dict[str, str] | None]
"""Request headers (an ASGI scope's ``headers`` pairs) -> what a record keeps of them."""
Emit = Callable[[service_pb2.ModelStreamInferResponse], Awaitable[None]]

log = logging.getLogger("auditgate.grpc")

ENDPOINT: Final = "kserve.infer"
TRANSPORT: Final = "grpc"
_QUEUE: Final = 256  # responses buffered per stream before the engine waits for the client
_CODES: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code_for(error: APIError) -> grpc.StatusCode:
    """The gRPC status for an error of the given HTTP status (gRPC's own HTTP mapping)."""
    code = _CODES.get(error.status_code)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if error.status_code < 500 else grpc.StatusCode.INTERNAL


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """KServe v2 inference over a chat pipeline."""

    def __init__(
        self,
        pipeline: ChatPipeline,
        *,
        keys: KeyRing | None,
        models: Callable[[], list[dict[str, Any]]],
        capture_headers: CaptureHeaders | None,
    ) -> None:
        """``keys``: None is open mode; ``models``: the engine's model list (``/v1/models``);
        ``capture_headers``: ``DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST`` applied to the call's
        metadata (given as an ASGI scope's ``headers``), None when nothing is captured."""
        self.pipeline = pipeline
        self.keys = keys
        self.models = models
        self.capture_headers = capture_headers

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: Context
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: Context
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: Context
    ) -> service_pb2.ServerMetadataResponse:
        await self._authenticate(context)
        return service_pb2.ServerMetadataResponse(name="auditgate", version=_version())

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: Context
    ) -> service_pb2.ModelReadyResponse:
        await self._authenticate(context)
        return service_pb2.ModelReadyResponse(ready=request.name in self._model_ids())

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: Context
    ) -> service_pb2.ModelMetadataResponse:
        await self._authenticate(context)
        if request.name not in self._model_ids():
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"The model '{request.name}' does not exist"
            )
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform="auditgate",
            inputs=[
                tensor(name="text_input", datatype="BYTES", shape=[1]),
                tensor(name="max_tokens", datatype="INT32", shape=[1]),
                tensor(name="stream", datatype="BOOL", shape=[1]),
            ],
            outputs=[
                tensor(name="text_output", datatype="BYTES", shape=[1]),
                tensor(name="finish_reason", datatype="BYTES", shape=[1]),
            ],
        )

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Context
    ) -> service_pb2.ModelInferResponse:
        principal = await self._authenticate(context)
        try:
            infer, call = self._call(request, context, principal)
            if infer.stream:
                raise InvalidRequestError(
                    "stream=true needs the streaming RPC ModelStreamInfer; "
                    "ModelInfer returns one whole response."
                )
            completion = await self.pipeline.complete(call)
        except APIError as exc:
            await context.abort(status_code_for(exc), exc.message)
        text, reason = _text_and_reason(completion)
        return infer_response(
            request, infer, text=text, finish_reason=reason, request_id=call.request_id
        )

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
        context: Context,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        principal = await self._authenticate(context)
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue(_QUEUE)
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(self._serve_one(request, context, principal, out.put))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            # The client half-closed: answer what is in flight, then end the call.
            while tasks:
                await asyncio.wait(set(tasks))
            await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await out.get()) is not None:
                yield response
            await reader
        finally:
            # Client gone (the call was cancelled) or the reader failed: stop every request;
            # each one's pipeline records itself as cancelled.
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _serve_one(
        self,
        request: service_pb2.ModelInferRequest,
        context: Context,
        principal: Principal | None,
        emit: Emit,
    ) -> None:
        """Answer one request of a stream; its errors become its ``error_message``."""
        try:
            infer, call = self._call(request, context, principal)
            if infer.stream:
                await self._stream(request, infer, call, emit)
            else:
                completion = await self.pipeline.complete(call)
                text, reason = _text_and_reason(completion)
                final = True if infer.empty_final else None
                response = infer_response(
                    request,
                    infer,
                    text=text,
                    finish_reason=reason,
                    request_id=call.request_id,
                    final=final,
                )
                await emit(service_pb2.ModelStreamInferResponse(infer_response=response))
        except APIError as exc:
            await emit(_stream_error(request, f"{status_code_for(exc).name}: {exc.message}"))
        except Exception:
            # A bug here must not leave the client waiting for an answer that never comes.
            log.exception("gRPC: request %r failed", request.id)
            await emit(_stream_error(request, "INTERNAL: the gateway failed on this request"))

    async def _stream(
        self, request: service_pb2.ModelInferRequest, infer: InferCall, call: ChatCall, emit: Emit
    ) -> None:
        flag = False if infer.empty_final else None
        stream = await self.pipeline.stream(call)
        # The last response is held back until the record is committed (durable mode: the end
        # of an answer is never sent before its record is in the spool; a failed commit
        # reaches the client as this request's error instead).
        held: service_pb2.ModelStreamInferResponse | None = None
        try:
            async for batch in stream:
                for chunk in batch:
                    delta = _chunk_delta(chunk)
                    if delta is None:
                        continue
                    text, reason = delta
                    response = infer_response(
                        request,
                        infer,
                        text=text,
                        finish_reason=reason,
                        request_id=call.request_id,
                        final=flag,
                    )
                    if held is not None:
                        await emit(held)
                    held = service_pb2.ModelStreamInferResponse(infer_response=response)
            await stream.committed()
        finally:
            await stream.aclose()
        if held is not None:
            await emit(held)
        if infer.empty_final:
            response = empty_final_response(request, call.request_id)
            await emit(service_pb2.ModelStreamInferResponse(infer_response=response))

    def _call(
        self,
        request: service_pb2.ModelInferRequest,
        context: Context,
        principal: Principal | None,
    ) -> tuple[InferCall, ChatCall]:
        infer = parse_infer_request(request)
        params = validate_chat(infer.body)
        client_request_id = None
        if request.id:
            try:
                client_request_id = validate_client_request_id(request.id)
            except InvalidRequestError:
                raise InvalidRequestError(
                    "Invalid request 'id': expected 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                    param="id",
                    code="invalid_value",
                ) from None
        metadata = _metadata(context)
        authorization = _authorization(metadata)
        return infer, ChatCall(
            body=infer.body,
            params=params,
            request_id=new_request_id(),
            transport=TRANSPORT,
            endpoint=ENDPOINT,
            tenant=principal.tenant if principal is not None else None,
            client_request_id=client_request_id,
            headers=self.capture_headers({"headers": metadata}) if self.capture_headers else None,
            authorization=authorization,
            credentials=presented_key(authorization) if principal is not None else (),
        )

    async def _authenticate(self, context: Context) -> Principal | None:
        keys = self.keys
        if keys is None:
            return None
        auth = None
        for key, value in _metadata(context):
            if key == b"authorization":
                auth = value
                break
        try:
            return await keys.authenticate(auth)
        except APIError as exc:
            await context.abort(status_code_for(exc), exc.message)

    def _model_ids(self) -> set[str]:
        return {str(m.get("id")) for m in self.models()}


def _stream_error(
    request: service_pb2.ModelInferRequest, message: str
) -> service_pb2.ModelStreamInferResponse:
    """Triton's per-request stream error; the response names the request it belongs to."""
    failed = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=failed)


def _version() -> str:
    try:
        return importlib.metadata.version("auditgate")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _metadata(context: Context) -> list[tuple[bytes, bytes]]:
    """Invocation metadata as ASGI-style header pairs (lower-case names, latin-1 bytes)."""
    pairs: list[tuple[bytes, bytes]] = []
    for key, value in context.invocation_metadata() or ():
        data = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
        pairs.append((key.lower().encode("latin-1"), data))
    return pairs


def _authorization(metadata: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in metadata:
        if key == b"authorization":
            return value.decode("latin-1")
    return None


def _text_and_reason(completion: dict[str, Any]) -> tuple[str, str]:
    """Choice 0's content and finish reason (tool calls and reasoning are only in the record)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    return message.get("content") or "", choice.get("finish_reason") or ""


def _chunk_delta(chunk: dict[str, Any]) -> tuple[str, str] | None:
    """Choice 0's content delta and finish reason in ``chunk``; None when it has neither."""
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        text = (choice.get("delta") or {}).get("content") or ""
        reason = choice.get("finish_reason") or ""
        if text or reason:
            return text, reason
    return None
