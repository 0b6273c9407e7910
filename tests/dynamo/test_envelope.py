"""auditgate records written as dynamo.request.trace.v1 rows."""

from __future__ import annotations

from auditgate.audit.record import AuditRecord, ErrorInfo
from auditgate.dynamo.envelope import to_trace_rows

REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "store": True}
RESPONSE = {
    "id": "chatcmpl-r1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def record(**overrides: object) -> AuditRecord:
    fields: dict[str, object] = {
        "request_id": "r1",
        "requested_streaming": False,
        "mode": "full",
        "model": "m",
        "usage": RESPONSE["usage"],
        "request": REQUEST,
        "response": RESPONSE,
        "engine": "mock",
        "status": "completed",
        "complete": True,
        "created_at": 1_700_000_000_100,
        "completed_at": 1_700_000_000_150,
        "ttft_ms": 12.5,
        "duration_ms": 50.0,
        "client_request_id": "cli-1",
        "http_request_headers": {"x-team": "a"},
        "writer": "host:1:abc",
        "seq": 7,
    }
    fields.update(overrides)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def test_a_full_record_is_a_payload_row_and_an_end_row() -> None:
    """A stored completion becomes Dynamo's request_payload row and its request_end row."""
    assert to_trace_rows(record()) == [
        {
            "schema": "dynamo.request.trace.v1",
            "event_type": "request_payload",
            "event_time_unix_ms": 1_700_000_000_100,
            "event_source": "dynamo",
            "payload": {
                "request_id": "r1",
                "endpoint": "openai.chat_completion",
                "model": "m",
                "request": REQUEST,
                "response": RESPONSE,
                "http_request_headers": {"x-team": "a"},
                "payload_complete": True,
            },
        },
        {
            "schema": "dynamo.request.trace.v1",
            "event_type": "request_end",
            "event_time_unix_ms": 1_700_000_000_150,
            "request": {
                "request_id": "r1",
                "x_request_id": "cli-1",
                "model": "m",
                "input_tokens": 3,
                "output_tokens": 1,
                "request_received_ms": 1_700_000_000_100,
                "ttft_ms": 12.5,
                "total_time_ms": 50.0,
            },
        },
    ]


def test_incomplete_records_say_why_as_dynamo_does() -> None:
    """Cancelled is Dynamo's response_stream_dropped; an error says its type and message."""
    cancelled = record(status="cancelled", complete=False)
    failed = record(
        status="error",
        complete=False,
        error=ErrorInfo(type="api_error", message="upstream 502", status_code=502),
    )
    reasons = [
        (rows[0]["payload"]["payload_complete"], rows[0]["payload"]["payload_drop_reason"])
        for rows in (to_trace_rows(cancelled), to_trace_rows(failed))
    ]
    assert reasons == [(False, "response_stream_dropped"), (False, "api_error: upstream 502")]


def test_usage_only_records_have_only_an_end_row_and_checkpoints_none() -> None:
    """A usage_only record is only a request_end row; a checkpoint has no Dynamo equivalent."""
    import msgspec

    usage_only = record(mode="usage_only", request=msgspec.UNSET, response=msgspec.UNSET)
    checkpoint = record(mode="checkpoint", request=msgspec.UNSET, response=msgspec.UNSET)
    assert [r["event_type"] for r in to_trace_rows(usage_only)] == ["request_end"]
    assert to_trace_rows(checkpoint) == []
