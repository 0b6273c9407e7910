"""The otel sink against a real OTLP receiver (opentelemetry-proto's service definitions), over
gRPC and http/protobuf."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.config import Secret
from auditgate.config_otlp import OtlpSettings
from auditgate.dynamo.envelope import to_trace_rows
from auditgate.errors import SinkError
from auditgate.sinks.otel import OtelSink, grpc_target
from tests.server.test_lifecycle import metric
from tests.support.gateway import free_port
from tests.support.otlp import OtlpReceiver, otlp_receiver

PROTOCOLS = ("http/protobuf", "grpc")


def make_record(i: int, content: str = "hello", **overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "request_id": f"req-{i}",
        "requested_streaming": True,
        "mode": "full",
        "model": "mock",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        "request": {
            "model": "mock",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 16,
            "temperature": 0.5,
            "store": True,
        },
        "response": {
            "id": f"chatcmpl-req-{i}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "mock-1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
        },
        "engine": "mock",
        "status": "completed",
        "complete": True,
        "created_at": 1_700_000_000_000 + i,
        "completed_at": 1_700_000_000_050 + i,
        "ttft_ms": 12.5,
        "duration_ms": 50.0,
        "http_request_headers": {"x-team": "a"},
        "writer": "host:1:abc",
        "seq": i,
    }
    fields.update(overrides)
    return AuditRecord(**fields)


def settings(receiver: OtlpReceiver, protocol: str, **overrides: Any) -> OtlpSettings:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return OtlpSettings(protocol=protocol, endpoint=endpoint, **overrides)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_records_arrive_as_log_records_with_genai_attributes(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """Each record is one LogRecord: its JSON as the body, GenAI and auditgate attributes."""
    records = [make_record(i) for i in range(3)]
    sink = OtelSink(settings(receiver, protocol, resource=(("deployment.environment", "test"),)))
    await sink.open()
    try:
        await sink.write([Envelope(r) for r in records])
    finally:
        await sink.close()
    got = receiver.wait_for(3)
    assert [g.body for g in got] == [Envelope(r).json.decode() for r in records]
    assert {(g.scope, json.dumps(g.resource, sort_keys=True)) for g in got} == {
        (
            "auditgate.audit",
            json.dumps(
                {"service.name": "auditgate", "deployment.environment": "test"}, sort_keys=True
            ),
        )
    }
    first = got[0]
    assert (
        first.record.time_unix_nano,
        first.record.severity_text,
        first.record.event_name,
    ) == (1_700_000_000_000 * 1_000_000, "INFO", "auditgate.audit.record")
    assert first.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mock",
        "gen_ai.system": "mock",
        "gen_ai.request.model": "mock",
        "gen_ai.request.stream": True,
        "gen_ai.request.max_tokens": 16,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.response.id": "chatcmpl-req-0",
        "gen_ai.response.model": "mock-1",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.time_to_first_chunk": 0.0125,
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
        "auditgate.request_id": "req-0",
        "auditgate.endpoint": "chat.completions",
        "auditgate.transport": "http",
        "auditgate.mode": "full",
        "auditgate.status": "completed",
        "auditgate.complete": True,
        "auditgate.writer": "host:1:abc",
        "auditgate.seq": 0,
        "auditgate.duration_ms": 50.0,
        "auditgate.payload_complete": True,
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_headers_reach_the_receiver_and_never_a_repr(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """OTEL_EXPORTER_OTLP_HEADERS values are sent with each export, never shown."""
    secret = "sk-otlp-secret-value"
    sink = OtelSink(
        settings(receiver, protocol, headers=(("x-api-key", Secret(secret)),), compression="gzip")
    )
    assert secret not in repr(sink) and secret not in repr(sink.settings)
    await sink.open()
    try:
        await sink.write([Envelope(make_record(0))])
    finally:
        await sink.close()
    receiver.wait_for(1)
    headers = receiver.headers[0]
    assert headers["x-api-key"] == secret
    if protocol == "http/protobuf":  # gRPC's message encoding is not in the call's metadata
        assert headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_oversize_record_becomes_a_counted_incomplete_marker(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """Over the payload bound: the record without its bodies, complete false, counted once."""
    metrics = AuditMetrics()
    big = make_record(1, content="x" * 5000)
    small = make_record(2)
    sink = OtelSink(settings(receiver, protocol), max_payload_bytes=4000, metrics=metrics)
    await sink.open()
    try:
        await sink.write([Envelope(big), Envelope(small)])
    finally:
        await sink.close()
    marker, whole = receiver.wait_for(2)
    size = len(Envelope(big).json)
    want = msgspec.structs.replace(
        big,
        request=msgspec.UNSET,
        response=msgspec.UNSET,
        http_request_headers=msgspec.UNSET,
        complete=False,
    )
    assert marker.body == Envelope(want).json.decode()
    assert (
        marker.attributes["auditgate.payload_complete"],
        marker.attributes["auditgate.payload_drop_reason"],
        whole.attributes["auditgate.payload_complete"],
    ) == (False, f"otel_payload_too_large:max_bytes=4000:actual_bytes={size}", True)
    text = metrics_text(metrics)
    assert metric(
        text, "auditgate_audit_incomplete_total", sink="otel", reason="payload_too_large"
    ) == (1.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_retried_batch_sends_no_record_twice(receiver: OtlpReceiver, protocol: str) -> None:
    """A write that fails after its first request was accepted resends only the rest."""
    records = [make_record(i, content="y" * 300) for i in range(3)]
    sink = OtelSink(settings(receiver, protocol), max_request_bytes=1500)
    await sink.open()
    try:
        receiver.accept = 1
        with pytest.raises(SinkError):
            await sink.write([Envelope(r) for r in records])
        assert len(receiver.records()) == 1
        receiver.accept = None
        await sink.write([Envelope(r) for r in records])
    finally:
        await sink.close()
    got = receiver.wait_for(3)
    assert [g.attributes["auditgate.request_id"] for g in got] == ["req-0", "req-1", "req-2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_partial_success_is_counted_as_rejected(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """Records the receiver says it rejected are counted, not retried."""
    metrics = AuditMetrics()
    receiver.reject = 2
    sink = OtelSink(settings(receiver, protocol), metrics=metrics)
    await sink.open()
    try:
        await sink.write([Envelope(make_record(i)) for i in range(3)])
    finally:
        await sink.close()
    assert metric(metrics_text(metrics), "auditgate_audit_sink_rejected_total", sink="otel") == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_receiver_that_is_down_fails_the_write(protocol: str) -> None:
    """Nothing listening: open() succeeds (OTLP has no handshake), write() raises SinkError."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}" + ("" if protocol == "grpc" else "/v1/logs")
    sink = OtelSink(OtlpSettings(protocol=protocol, endpoint=endpoint, timeout_s=2.0))
    await sink.open()
    try:
        with pytest.raises(SinkError, match="export failed"):
            await sink.write([Envelope(make_record(0))])
    finally:
        await sink.close()


def test_grpc_targets_follow_the_specification() -> None:
    """https is TLS, http plaintext, no scheme TLS unless insecure."""
    assert [
        grpc_target("https://collector:4317", insecure=False),
        grpc_target("http://127.0.0.1:4317/", insecure=False),
        grpc_target("collector:4317", insecure=False),
        grpc_target("collector:4317", insecure=True),
        grpc_target("http://[::1]", insecure=False),
    ] == [
        ("collector:4317", True),
        ("127.0.0.1:4317", False),
        ("collector:4317", True),
        ("collector:4317", False),
        ("[::1]:4317", False),
    ]


def metrics_text(metrics: AuditMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_dynamo_format_writes_dynamo_otel_layout(
    receiver: OtlpReceiver, protocol: str
) -> None:
    """DYN_AUDIT_FORMAT=dynamo-request-trace: Dynamo's rows in Dynamo's otel layout, an oversize
    payload row as Dynamo's marker."""
    record = make_record(1)
    big = make_record(2, content="z" * 5000)
    sink = OtelSink(
        settings(receiver, protocol),
        max_payload_bytes=4000,
        output_format="dynamo-request-trace",
    )
    await sink.open()
    try:
        await sink.write([Envelope(record), Envelope(big)])
    finally:
        await sink.close()
    got = receiver.wait_for(4)
    rows = to_trace_rows(record)
    assert [(g.body, g.attributes) for g in got[:2]] == [
        (
            "request_payload",
            {
                "schema": "dynamo.request.trace.v1",
                "event_type": "request_payload",
                "rid": "req-1",
                "model": "mock",
                "endpoint": "openai.chat_completion",
                "payload_complete": True,
                "payload": json.dumps(rows[0], separators=(",", ":")),
            },
        ),
        (
            "request_end",
            {
                "schema": "dynamo.request.trace.v1",
                "event_type": "request_end",
                "rid": "req-1",
                "model": "mock",
                "payload_complete": True,
                "payload": json.dumps(rows[1], separators=(",", ":")),
            },
        ),
    ]
    marker = json.loads(got[2].attributes["payload"])
    assert (
        got[2].attributes["payload_complete"],
        sorted(marker["payload"]),
        marker["payload"]["payload_drop_reason"].startswith(
            "otel_payload_too_large:max_bytes=4000"
        ),
    ) == (
        False,
        ["endpoint", "model", "payload_complete", "payload_drop_reason", "request_id"],
        True,
    )
