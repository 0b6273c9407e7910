"""Our records as ``dynamo.request.trace.v1`` rows, so a consumer written for Dynamo 1.4+ reads
auditgate's output unchanged (``auditgate.dynamo.formats`` describes the rows).

A ``full`` record becomes a ``request_payload`` row and a ``request_end`` row, a ``usage_only``
record only the ``request_end`` row; checkpoints (``mode: "checkpoint"``) have no Dynamo
equivalent and become none.  What Dynamo computes from its KV cache (``replay`` block hashes,
prefill times, worker ids) a gateway does not know, so those fields are left out, as Dynamo
leaves out any it has no value for.  A record Dynamo's own rows came from (``engine:
"dynamo"``) converts back to the rows it came from, minus those fields.

- ``payload_complete`` is the record's ``complete``; an incomplete record's
  ``payload_drop_reason`` is ``response_stream_dropped`` when it was cancelled (Dynamo's name for
  that case), the error's message when it was a dropped Dynamo payload, else
  ``<error type>: <message>``.
- ``endpoint``: ``openai.chat_completion`` for ``chat.completions`` (Dynamo's name), else ours.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from auditgate.audit.record import AuditRecord
from auditgate.dynamo.convert import DROPPED_TYPE
from auditgate.dynamo.formats import CHAT_ENDPOINT, STREAM_DROPPED, TRACE_SCHEMA

_ENDPOINTS: Final = {"chat.completions": CHAT_ENDPOINT, "completions": "openai.completion"}


def to_trace_rows(record: AuditRecord) -> list[dict[str, Any]]:
    """The ``dynamo.request.trace.v1`` rows of one record (payload row first)."""
    if record.mode == "checkpoint":
        return []
    rows = []
    if record.mode == "full":
        rows.append(payload_row(record))
    rows.append(end_row(record))
    return rows


def payload_row(record: AuditRecord) -> dict[str, Any]:
    """The ``request_payload`` row: the bodies, as Dynamo's ``RequestTracePayload``."""
    payload: dict[str, Any] = {
        "request_id": record.request_id,
        "endpoint": _ENDPOINTS.get(record.endpoint, record.endpoint),
        "model": record.model,
    }
    if record.request is not msgspec.UNSET:
        payload["request"] = record.request
    if record.response is not msgspec.UNSET:
        payload["response"] = record.response
    if record.http_request_headers is not msgspec.UNSET:
        payload["http_request_headers"] = record.http_request_headers
    payload["payload_complete"] = record.complete
    reason = drop_reason(record)
    if reason is not None:
        payload["payload_drop_reason"] = reason
    return {
        "schema": TRACE_SCHEMA,
        "event_type": "request_payload",
        "event_time_unix_ms": record.created_at,
        "event_source": "dynamo",
        "payload": payload,
    }


def end_row(record: AuditRecord) -> dict[str, Any]:
    """The ``request_end`` row: ids, token counts and timing, as ``RequestTraceMetrics``."""
    request: dict[str, Any] = {"request_id": record.request_id}
    if record.client_request_id is not msgspec.UNSET:
        request["x_request_id"] = record.client_request_id
    request["model"] = record.model
    usage = record.usage or {}
    # Chat usage says prompt/completion; the Responses API's already says input/output.
    for theirs, ours in (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens")):
        value = usage.get(ours, usage.get(theirs))
        if isinstance(value, int):
            request[theirs] = value
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if isinstance(cached, int):
        request["cached_tokens"] = cached
    request["request_received_ms"] = record.created_at
    if record.ttft_ms is not None:
        request["ttft_ms"] = record.ttft_ms
    request["total_time_ms"] = record.duration_ms
    return {
        "schema": TRACE_SCHEMA,
        "event_type": "request_end",
        "event_time_unix_ms": record.completed_at,
        "request": request,
    }


def drop_reason(record: AuditRecord) -> str | None:
    """Dynamo's ``payload_drop_reason`` for an incomplete record; None for a complete one."""
    if record.complete:
        return None
    if record.status == "cancelled":
        return STREAM_DROPPED
    error = record.error
    if error is msgspec.UNSET:
        return STREAM_DROPPED
    if error.type == DROPPED_TYPE:
        return error.message
    return f"{error.type}: {error.message}"
