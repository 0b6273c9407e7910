"""A real OTLP logs receiver for tests, built on the official ``opentelemetry-proto`` service
definitions: a ``grpc.aio`` ``LogsService`` server and an aiohttp http/protobuf endpoint
(``POST /v1/logs``), both on loopback, in a thread of their own so sync tests can use them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from tests.support.gateway import free_port


def plain(value: AnyValue) -> Any:
    """An AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


class Received:
    """One LogRecord as the receiver got it."""

    def __init__(self, resource: dict[str, Any], scope: str, record: LogRecord) -> None:
        self.resource = resource
        self.scope = scope
        self.record = record
        self.attributes = {kv.key: plain(kv.value) for kv in record.attributes}
        self.body = plain(record.body)

    @property
    def json(self) -> Any:
        """The body decoded as the record's JSON."""
        return json.loads(self.body)


class OtlpReceiver:
    """Collects every exported LogRecord; the headers of each export request are kept too
    (names in lower case).

    ``reject`` > 0 makes the next export answer a partial success rejecting that many records;
    ``accept`` (None: no limit) is how many more exports succeed; after them every export fails
    (HTTP 503, gRPC UNAVAILABLE) until it is set back to None.
    """

    def __init__(self, *, grpc_port: int = 0, http_port: int = 0) -> None:
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.received: list[Received] = []
        self.headers: list[dict[str, str]] = []
        self.reject = 0
        self.accept: int | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/logs"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def records(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The received records once there are at least ``count`` (AssertionError after
        ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if len(records) >= count:
                return records
            time.sleep(0.05)
        raise AssertionError(f"{len(self.records())} of {count} log records arrived")

    def _admit(self) -> bool:
        with self._lock:
            if self.accept is None:
                return True
            if self.accept == 0:
                return False
            self.accept -= 1
            return True

    def _take(self, request: ExportLogsServiceRequest, headers: dict[str, str]) -> bytes:
        got = []
        for resource_logs in request.resource_logs:
            resource = {kv.key: plain(kv.value) for kv in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    got.append(Received(resource, scope_logs.scope.name, record))
        with self._lock:
            self.received += got
            self.headers.append({k.lower(): v for k, v in headers.items()})
            rejected, self.reject = self.reject, 0
        partial = ExportLogsPartialSuccess(
            rejected_log_records=rejected, error_message="rejected by the test" if rejected else ""
        )
        return ExportLogsServiceResponse(partial_success=partial).SerializeToString()

    async def _start(self) -> None:
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
            async def Export(  # the generated service names it so
                self, request: ExportLogsServiceRequest, context: grpc.aio.ServicerContext
            ) -> ExportLogsServiceResponse:
                if not receiver._admit():
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
                headers = {k: str(v) for k, v in context.invocation_metadata() or ()}
                data = receiver._take(request, headers)
                return ExportLogsServiceResponse.FromString(data)

        server = grpc.aio.server()
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        await server.start()
        self._grpc = server

        async def export(request: web.Request) -> web.Response:
            if not self._admit():
                return web.Response(status=503, text="failing on purpose")
            if request.content_type != "application/x-protobuf":
                return web.Response(status=415, text=request.content_type)
            body = await request.read()  # aiohttp undoes a Content-Encoding: gzip itself
            data = self._take(ExportLogsServiceRequest.FromString(body), dict(request.headers))
            return web.Response(body=data, content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/logs", export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.http_port).start()

    async def _stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(None)
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.contextmanager
def otlp_receiver(*, grpc_port: int = 0, http_port: int = 0) -> Iterator[OtlpReceiver]:
    """A running receiver for the duration of a ``with`` block."""
    receiver = OtlpReceiver(grpc_port=grpc_port, http_port=http_port).start()
    try:
        yield receiver
    finally:
        receiver.stop()
