"""Audit records as OpenTelemetry LogRecords (``opentelemetry-proto``'s generated classes).

One LogRecord per record:

- ``body``: the record's JSON line as a string — exactly the bytes every other sink stores.  Not
  an AnyValue kvlist, because a kvlist cannot carry the record losslessly (no null, no integers
  beyond 64 bits, no key order, no difference between an absent field and an empty one), would
  cost a conversion of every field, and would break the integrity chain, whose SHA-256 is over
  these bytes: a log backend can still verify a record it received.  Backends that index JSON
  bodies (Loki, Elasticsearch, ClickHouse) parse it as it is.
- ``attributes``: the GenAI semantic conventions' names where they apply —
  ``gen_ai.operation.name`` (``chat``, ``text_completion``, ``embeddings``),
  ``gen_ai.provider.name`` (the record's ``engine``; also as the deprecated ``gen_ai.system``
  for backends on older conventions), ``gen_ai.request.model``, ``gen_ai.request.stream``,
  ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p`` / ``seed`` /
  ``choice.count``, ``gen_ai.response.id``, ``gen_ai.response.model``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.response.time_to_first_chunk`` (seconds),
  ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type`` — and ``auditgate.*`` for
  the rest (``request_id``, ``endpoint``, ``transport``, ``mode``, ``status``, ``complete``,
  ``tenant``, ``writer``, ``seq``, ``duration_ms``, ``client_request_id``,
  ``payload_complete``, ``payload_drop_reason``).
- ``time_unix_nano``: when the request arrived (``created_at``); ``observed_time_unix_nano``:
  when it was encoded; severity INFO (completed), WARN (cancelled), ERROR (error);
  ``event_name``: ``auditgate.audit.record``.

Dynamo's max-payload rule (``request_trace/otel_sink.rs``): a record whose JSON is longer than
``max_payload_bytes`` is sent as an incomplete marker instead — the record without ``request``,
``response`` and ``http_request_headers`` (and, if still too long, without ``metadata`` too),
``complete: false``, and ``auditgate.payload_drop_reason`` =
``otel_payload_too_large:max_bytes=<N>:actual_bytes=<M>``, Dynamo's wording.

With ``DYN_AUDIT_FORMAT=dynamo-request-trace`` the sink writes Dynamo's own layout instead
(:func:`dynamo_log_records`), so a pipeline built for Dynamo's otel sink reads it unchanged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from auditgate.audit.record import AuditRecord, Envelope, encode_record

if TYPE_CHECKING:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

EVENT_NAME: Final = "auditgate.audit.record"
_BODIES: Final = ("request", "response", "http_request_headers")
TOO_LARGE: Final = "otel_payload_too_large"
_OPERATIONS: Final = {
    "chat.completions": "chat",
    "responses": "chat",
    "kserve.infer": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
_SEVERITY: Final = {"completed": (9, "INFO"), "cancelled": (13, "WARN"), "error": (17, "ERROR")}
_REQUEST_NUMBERS: Final = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)


def log_record(envelope: Envelope, max_payload_bytes: int) -> tuple[LogRecord, str | None]:
    """The LogRecord of one record, and the drop reason when it had to be sent as a marker."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    record, body, reason = envelope.record, envelope.json, None
    if len(body) > max_payload_bytes:
        reason = f"{TOO_LARGE}:max_bytes={max_payload_bytes}:actual_bytes={len(body)}"
        record, body = marker(record, max_payload_bytes)
    severity, severity_text = _SEVERITY.get(record.status, (9, "INFO"))
    attributes = [_kv(k, v) for k, v in attributes_of(record).items()]
    attributes.append(_kv("auditgate.payload_complete", reason is None))
    if reason is not None:
        attributes.append(_kv("auditgate.payload_drop_reason", reason))
    return (
        LogRecord(
            time_unix_nano=record.created_at * 1_000_000,
            observed_time_unix_nano=time.time_ns(),
            severity_number=severity,  # type: ignore[arg-type]
            severity_text=severity_text,
            body=AnyValue(string_value=body.decode()),
            attributes=attributes,
            event_name=EVENT_NAME,
        ),
        reason,
    )


def dynamo_log_records(
    envelope: Envelope, max_payload_bytes: int
) -> list[tuple[str, LogRecord, str | None]]:
    """``DYN_AUDIT_FORMAT=dynamo-request-trace``: the record's ``dynamo.request.trace.v1`` rows
    as Dynamo's own otel sink writes them (``request_trace/otel_sink.rs``): body = the event
    type, the row in the ``payload`` attribute beside ``schema``, ``event_type``, ``rid``,
    ``model``, ``endpoint``, ``payload_complete`` and ``payload_drop_reason``; a payload row over
    ``max_payload_bytes`` replaced by Dynamo's marker.  (key, LogRecord, drop reason) per row."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from auditgate.dynamo.envelope import to_trace_rows

    out = []
    for row in to_trace_rows(envelope.record):
        body, reason = msgspec.json.encode(row), None
        payload = row.get("payload")
        if len(body) > max_payload_bytes and payload is not None:
            reason = f"{TOO_LARGE}:max_bytes={max_payload_bytes}:actual_bytes={len(body)}"
            small = {k: v for k, v in payload.items() if k not in _BODIES}
            small |= {"payload_complete": False, "payload_drop_reason": reason}
            body = msgspec.json.encode({**row, "payload": small})
        event = row["event_type"]
        attributes: dict[str, Any] = {
            "schema": row["schema"],
            "event_type": event,
            "rid": envelope.record.request_id,
            "model": envelope.record.model,
        }
        if payload is not None:
            attributes["endpoint"] = payload["endpoint"]
            attributes["payload_complete"] = reason is None and bool(payload["payload_complete"])
            drop = reason or payload.get("payload_drop_reason")
            if drop:
                attributes["payload_drop_reason"] = drop
        else:
            attributes["payload_complete"] = True
        attributes["payload"] = body.decode()
        log_record = LogRecord(
            time_unix_nano=row["event_time_unix_ms"] * 1_000_000,
            observed_time_unix_nano=time.time_ns(),
            severity_number=9,  # type: ignore[arg-type]
            severity_text="INFO",
            body=AnyValue(string_value=event),
            attributes=[_kv(k, v) for k, v in attributes.items()],
        )
        out.append((f"{envelope.record.request_id}:{event}", log_record, reason))
    return out


def marker(record: AuditRecord, max_payload_bytes: int) -> tuple[AuditRecord, bytes]:
    """The incomplete marker of an oversize record, and its JSON."""
    small = msgspec.structs.replace(
        record,
        request=msgspec.UNSET,
        response=msgspec.UNSET,
        http_request_headers=msgspec.UNSET,
        complete=False,
    )
    body = encode_record(small)
    if len(body) > max_payload_bytes:  # metadata is the only other unbounded-ish part
        small = msgspec.structs.replace(small, metadata={})
        body = encode_record(small)
    return small, body


def attributes_of(record: AuditRecord) -> dict[str, Any]:
    """The record's attributes (GenAI semantic conventions, then ``auditgate.*``), values
    omitted when the record has none."""
    request = record.request if record.request is not msgspec.UNSET else {}
    response = record.response if record.response is not msgspec.UNSET else {}
    usage = record.usage or {}
    found: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATIONS.get(record.endpoint),
        "gen_ai.provider.name": record.engine,
        "gen_ai.system": record.engine,
        "gen_ai.request.model": _text(request.get("model")) or record.model,
        "gen_ai.request.stream": record.requested_streaming,
    }
    for field, name in _REQUEST_NUMBERS:
        value = request.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.setdefault(name, value)
    reasons = [c.get("finish_reason") for c in response.get("choices") or [] if isinstance(c, dict)]
    found |= {
        "gen_ai.response.id": _text(response.get("id")),
        "gen_ai.response.model": _text(response.get("model")),
        "gen_ai.response.finish_reasons": [r for r in reasons if isinstance(r, str)] or None,
        "gen_ai.response.time_to_first_chunk": None
        if record.ttft_ms is None
        else record.ttft_ms / 1000.0,
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens", usage.get("input_tokens")),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens", usage.get("output_tokens")),
        "error.type": record.error.type if record.error is not msgspec.UNSET else None,
        "auditgate.request_id": record.request_id,
        "auditgate.endpoint": record.endpoint,
        "auditgate.transport": record.transport,
        "auditgate.mode": record.mode,
        "auditgate.status": record.status,
        "auditgate.complete": record.complete,
        "auditgate.tenant": record.tenant,
        "auditgate.writer": record.writer,
        "auditgate.seq": record.seq,
        "auditgate.duration_ms": record.duration_ms,
        "auditgate.client_request_id": record.client_request_id
        if record.client_request_id is not msgspec.UNSET
        else None,
    }
    return {k: v for k, v in found.items() if v is not None}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _kv(key: str, value: Any) -> KeyValue:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return KeyValue(key=key, value=_any(value))


def _any(value: Any) -> AnyValue:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    return AnyValue(string_value=str(value))
