"""OpenTelemetry sink: records as OTLP LogRecords, over gRPC or http/protobuf.

Built on ``opentelemetry-proto``'s generated classes and service definitions (extra ``otel``),
not on the OTel SDK's exporter: the SDK's batch processor swallows a failed export, and our bus
must see every failure to count it and retry (DESIGN §6).  How a record becomes a LogRecord:
:mod:`auditgate.sinks.otel_logs`.

- Settings: the standard ``OTEL_EXPORTER_OTLP_*`` variables (:class:`~auditgate.config.
  OtlpSettings`); header values are secrets and never appear in a repr or a log line.
- One ``write`` is one or more ``ExportLogsServiceRequest``\\ s of at most ``max_request_bytes``
  of bodies each (gRPC servers refuse messages over 4 MiB by default); it returns once each was
  accepted, or raises :class:`SinkError` (connection refused, timeout, a non-200 HTTP status, a
  gRPC error), and the bus retries it.  OTLP has no idempotency key: the records of a request
  already accepted are not sent again when the bus retries the rest of the batch, so a retry
  duplicates nothing; the ``auditgate.request_id`` attribute lets a backend deduplicate anything
  else.  A partial success (``rejected_log_records``) is logged and counted
  (``audit_sink_rejected_total``), not retried, as the protocol requires.
- A record over ``max_payload_bytes`` (Dynamo's 4 MiB) is sent as an incomplete marker, counted
  in ``audit_incomplete_total{sink="otel",reason="payload_too_large"}`` once it was accepted.
- A receiver that is down at start is not a startup error (OTLP has no handshake): writes fail,
  are counted and retried — in durable mode the spool keeps every record until it is back.
"""

from __future__ import annotations

import gzip
import logging
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.config_otlp import OtlpSettings
from auditgate.errors import ConfigError, SinkError
from auditgate.logs import RateLimitedLog
from auditgate.sinks.otel_logs import dynamo_log_records, log_record

if TYPE_CHECKING:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

log = logging.getLogger("auditgate.sinks.otel")

SCOPE: Final = "auditgate.audit"
MAX_REQUEST_BYTES: Final = 3 << 20
"""Bodies per export request: under gRPC's default 4 MiB message limit, with room for
attributes."""


class OtelSink:
    """Exports batches to an OTLP logs endpoint; ``write`` returns once every record is
    accepted."""

    name = "otel"

    def __init__(
        self,
        settings: OtlpSettings,
        *,
        max_payload_bytes: int = 4 << 20,
        metrics: AuditMetrics | None = None,
        max_records: int = 512,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        output_format: str = "auditgate",
    ) -> None:
        """``output_format``: ``auditgate`` (one LogRecord per record) or
        ``dynamo-request-trace`` (Dynamo's own layout, one LogRecord per row)."""
        self.settings = settings
        self.output_format = output_format
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.batching = BatchPolicy(max_records=max_records)
        self._transport: _Transport | None = None
        self._scope_version = "unknown"
        self._sent: set[str] = set()
        """Request ids of the current batch already accepted (a retry skips them)."""
        self._log = RateLimitedLog()

    def __repr__(self) -> str:
        return (
            f"OtelSink(protocol={self.settings.protocol!r}, "
            f"endpoint={redact_endpoint(self.settings.endpoint)!r})"
        )

    async def open(self) -> None:
        """Check the endpoint and build the transport (nothing is sent yet)."""
        settings = self.settings
        self._scope_version = _version()
        parsed = urllib.parse.urlsplit(settings.endpoint)
        if settings.protocol == "grpc":
            self._transport = _Grpc(settings)
        elif parsed.scheme in ("http", "https") and parsed.hostname:
            self._transport = _Http(settings)
        else:
            raise ConfigError(
                f"OTLP endpoint {redact_endpoint(settings.endpoint)!r}: expected "
                "http(s)://host[:port]/path for http/protobuf"
            )
        await self._transport.open()

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Export every record not yet accepted, in requests of bounded size, or raise."""
        transport = self._transport
        if transport is None:
            raise SinkError("otel sink used before open()")
        for chunk in self._chunks(batch):
            ids = [rid for rid, _, _ in chunk]
            response = await transport.export(self._request([lr for _, lr, _ in chunk]))
            self._sent.update(ids)
            self._count(chunk, response)
        self._sent.clear()

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    def _chunks(self, batch: Sequence[Envelope]) -> list[list[tuple[str, LogRecord, str | None]]]:
        chunks: list[list[tuple[str, LogRecord, str | None]]] = []
        size = self.max_request_bytes
        for envelope in batch:
            for key, record, reason in self._log_records(envelope):
                if key in self._sent:
                    continue
                cost = record.ByteSize()
                if not chunks or size + cost > self.max_request_bytes:
                    chunks.append([])
                    size = 0
                chunks[-1].append((key, record, reason))
                size += cost
        return chunks

    def _log_records(self, envelope: Envelope) -> list[tuple[str, LogRecord, str | None]]:
        if self.output_format == "dynamo-request-trace":
            return dynamo_log_records(envelope, self.max_payload_bytes)
        return [(envelope.request_id, *log_record(envelope, self.max_payload_bytes))]

    def _request(self, records: list[LogRecord]) -> ExportLogsServiceRequest:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )
        from opentelemetry.proto.common.v1.common_pb2 import (
            AnyValue,
            InstrumentationScope,
            KeyValue,
        )
        from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource

        resource = [("service.name", self.settings.service_name), *self.settings.resource]
        attributes = [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in resource]
        scope = InstrumentationScope(name=SCOPE, version=self._scope_version)
        return ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(
                    resource=Resource(attributes=attributes),
                    scope_logs=[ScopeLogs(scope=scope, log_records=records)],
                )
            ]
        )

    def _count(
        self, chunk: list[tuple[str, LogRecord, str | None]], response: ExportLogsServiceResponse
    ) -> None:
        markers = sum(1 for _, _, reason in chunk if reason is not None)
        rejected = response.partial_success.rejected_log_records
        if self.metrics is not None:
            if markers:
                self.metrics.incomplete.labels(self.name, "payload_too_large").inc(markers)
            if rejected:
                self.metrics.rejected.labels(self.name).inc(rejected)
        if markers:
            self._log.warning(
                "otel:marker",
                "audit sink otel: %d record(s) over %d bytes sent as incomplete markers",
                markers,
                self.max_payload_bytes,
            )
        if rejected:
            self._log.warning(
                "otel:rejected",
                "audit sink otel: the receiver rejected %d of %d record(s): %s",
                rejected,
                len(chunk),
                response.partial_success.error_message[:300],
            )


class _Transport(Protocol):
    """One way of sending an export request: ``export`` raises SinkError on any failure."""

    async def open(self) -> None: ...

    async def export(self, request: ExportLogsServiceRequest) -> ExportLogsServiceResponse: ...

    async def close(self) -> None: ...


class _Http:
    """OTLP/HTTP with binary protobuf bodies (``Content-Type: application/x-protobuf``)."""

    def __init__(self, settings: OtlpSettings) -> None:
        self.settings = settings
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
        )

    async def export(self, request: ExportLogsServiceRequest) -> ExportLogsServiceResponse:
        import aiohttp
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse,
        )

        headers = {k: v.reveal() for k, v in self.settings.headers}
        headers["Content-Type"] = "application/x-protobuf"
        body = request.SerializeToString()
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(
                self.settings.endpoint, data=body, headers=headers
            ) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkError(f"OTLP/HTTP export failed: {type(exc).__name__}: {exc}") from None
        if status != 200:
            text = data[:300].decode(errors="replace")
            raise SinkError(f"OTLP/HTTP export answered {status}: {text}")
        answer = ExportLogsServiceResponse()
        if data:
            answer.ParseFromString(data)
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Grpc:
    """OTLP/gRPC: ``LogsService.Export`` on a grpc.aio channel."""

    def __init__(self, settings: OtlpSettings) -> None:
        self.settings = settings
        self._channel: Any = None
        self._export: Any = None

    async def open(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

        target, secure = grpc_target(self.settings.endpoint, insecure=self.settings.insecure)
        # gRPC's own reconnect backoff grows to 2 minutes while a receiver is down; cap it at
        # the bus's retry backoff so records flow again within seconds of it coming back.
        options = [("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 5000)]
        if secure:
            credentials = grpc.ssl_channel_credentials()
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        stub = logs_service_pb2_grpc.LogsServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._export = stub.Export

    async def export(self, request: ExportLogsServiceRequest) -> ExportLogsServiceResponse:
        import grpc

        compression = grpc.Compression.Gzip if self.settings.compression == "gzip" else None
        try:
            response: ExportLogsServiceResponse = await self._export(
                request,
                timeout=self.settings.timeout_s,
                metadata=[(k, v.reveal()) for k, v in self.settings.headers],
                compression=compression,
            )
        except grpc.aio.AioRpcError as exc:
            details = (exc.details() or "")[:300]
            raise SinkError(f"OTLP/gRPC export failed: {exc.code().name}: {details}") from None
        return response

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def grpc_target(endpoint: str, *, insecure: bool) -> tuple[str, bool]:
    """(``host:port``, use TLS) for an OTLP/gRPC endpoint: ``https`` is TLS, ``http``
    plaintext, no scheme TLS unless ``insecure`` (the specification's rule)."""
    if "://" not in endpoint:
        return endpoint.rstrip("/"), not insecure
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"OTLP endpoint {redact_endpoint(endpoint)!r}: expected host:port")
    port = parsed.port or (443 if parsed.scheme == "https" else 4317)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{port}", parsed.scheme == "https"


def redact_endpoint(endpoint: str) -> str:
    """``endpoint`` without any user or password, for logs and errors."""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.username is None and parsed.password is None:
        return endpoint
    netloc = "<redacted>@" + parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("auditgate")
    except PackageNotFoundError:
        return "unknown"
