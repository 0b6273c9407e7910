"""Dynamo's records as auditgate :class:`AuditRecord`\\ s (pure functions, no I/O).

What a converted record holds (``auditgate.dynamo.formats`` describes the inputs):

- ``engine: "dynamo"``, ``transport: "http"`` (Dynamo's OpenAI frontend), and Dynamo's own
  ``request_id`` — the idempotency key, so converting and storing a row twice stores it once.
  Tool rows get the key ``tool:<session_id>:<tool_call_id>:<event_type>``.
- No integrity, and no writer sequence: Dynamo has none.  Each record is its own writer
  (``writer: "dynamo:<request_id>"``, ``seq: 0``), so ``auditgate verify`` reports it
  ``unchained`` and never a false gap or conflict.
- ``status`` / ``complete`` / ``error``: a response with choices is ``completed``; a missing or
  empty one (0.x on a client cancel; 1.x with ``payload_drop_reason: response_stream_dropped``)
  is ``cancelled`` and incomplete (Dynamo cannot tell a client cancel from an aggregation error
  there; a cancel is what it names it).  Any other drop reason (``otel_payload_too_large:…``) is
  ``error`` with ``{"type": "dynamo_payload_dropped", "message": <reason>, "status_code": 0}``:
  the body is gone from the row, and ``status_code`` 0 means the row does not say what the
  client got.
- times: 1.x from the ``request_end`` row (``request_received_ms``, ``ttft_ms``,
  ``total_time_ms``) when it was joined, else the payload row's time with ``ttft_ms: null`` and
  ``duration_ms: 0``; 0.x records carry no time, so ``created_at`` is the response's ``created``
  (seconds) or the caller's ``received_ms`` (e.g. the JetStream message time).
- ``usage``: the record's own, else the response's, else from ``request_end``'s token counts.
- ``http_request_headers``: Dynamo captures values unredacted; credential headers become
  ``<redacted>`` here, as in the gateway's own capture.
- ``metadata``: the request's ``metadata`` when it is string pairs, as the gateway records it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from auditgate.audit.record import AuditRecord, ErrorInfo, Mode, Status
from auditgate.dynamo.formats import CHAT_ENDPOINT, STREAM_DROPPED
from auditgate.server.headers import REDACTED, is_credential

ENGINE: Final = "dynamo"
DROPPED_TYPE: Final = "dynamo_payload_dropped"
TOOL_ENDPOINT: Final = "dynamo.tool"
_ENDPOINTS: Final = {CHAT_ENDPOINT: "chat.completions", "openai.completion": "completions"}
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOOL_STATUS: Final[dict[str, Status]] = {"error": "error", "cancelled": "cancelled"}


def from_legacy(row: Mapping[str, Any], *, received_ms: int | None = None) -> AuditRecord:
    """A Dynamo 0.x legacy audit record; ``received_ms``: when it was received, the fallback for
    its missing time."""
    request_id = str(row["request_id"])
    request = _object(row.get("request"))
    response = _response(row.get("response"))
    created = _created_ms(response, received_ms)
    mode: Mode = "usage_only" if row.get("mode") == "usage_only" else "full"
    status, error = _outcome(response, None)
    return AuditRecord(
        request_id=request_id,
        requested_streaming=bool(row.get("requested_streaming", False)),
        mode=mode,
        model=str(row.get("model") or ""),
        usage=_usage(row.get("usage"), response, None),
        request=request if request is not None and mode == "full" else msgspec.UNSET,
        response=response if response is not None and mode == "full" else msgspec.UNSET,
        engine=ENGINE,
        status=status,
        complete=status == "completed",
        error=error,
        created_at=created,
        completed_at=created,
        ttft_ms=None,
        duration_ms=0.0,
        metadata=_metadata(request),
        writer=f"{ENGINE}:{request_id}",
        seq=0,
    )


def from_trace(
    payload_row: Mapping[str, Any] | None, end_row: Mapping[str, Any] | None
) -> AuditRecord:
    """One request from its ``request_payload`` row, its ``request_end`` row, or both."""
    if payload_row is None and end_row is None:
        raise ValueError("from_trace needs a request_payload or a request_end row")
    payload = _object(payload_row.get("payload")) if payload_row is not None else None
    end = _object(end_row.get("request")) if end_row is not None else None
    source = payload if payload is not None else end
    assert source is not None
    request_id = str(source["request_id"])
    request = _object(payload.get("request")) if payload is not None else None
    response = _response(payload.get("response")) if payload is not None else None
    created, completed, ttft, duration = _timing(payload_row, end_row, end)
    model = (payload or {}).get("model") or (end or {}).get("model") or ""
    status, error = _outcome(response, payload)
    headers = _headers(payload.get("http_request_headers")) if payload is not None else None
    client_id = (end or {}).get("x_request_id")
    return AuditRecord(
        request_id=request_id,
        requested_streaming=bool((request or {}).get("stream", False)),
        mode="full" if payload is not None else "usage_only",
        model=str(model),
        usage=_usage(None, response, end),
        request=request if request is not None else msgspec.UNSET,
        response=response if response is not None else msgspec.UNSET,
        endpoint=_ENDPOINTS.get(str((payload or {}).get("endpoint")), "chat.completions"),
        engine=ENGINE,
        status=status if payload is not None else "completed",
        complete=payload is None
        or (status == "completed" and bool(payload.get("payload_complete"))),
        error=error,
        created_at=created,
        completed_at=completed,
        ttft_ms=ttft,
        duration_ms=duration,
        metadata=_metadata(request),
        client_request_id=client_id
        if isinstance(client_id, str) and _CLIENT_ID.fullmatch(client_id)
        else msgspec.UNSET,
        http_request_headers=headers if headers is not None else msgspec.UNSET,
        writer=f"{ENGINE}:{request_id}",
        seq=0,
    )


def tool_request_id(row: Mapping[str, Any]) -> str:
    """The idempotency key of a tool row."""
    tool = _object(row.get("tool")) or {}
    context = _object(row.get("agent_context")) or {}
    session = context.get("session_id") or row.get("session_id") or ""
    return f"tool:{session}:{tool.get('tool_call_id', '')}:{row.get('event_type', '')}"


def from_tool(row: Mapping[str, Any]) -> AuditRecord:
    """A harness tool row, kept whole as the record's ``request`` (endpoint ``dynamo.tool``, no
    response, so the stored-completions API does not list it)."""
    tool = _object(row.get("tool")) or {}
    request_id = tool_request_id(row)
    when = _int(row.get("event_time_unix_ms"))
    started = _int(tool.get("started_at_unix_ms"), when)
    ended = _int(tool.get("ended_at_unix_ms"), when)
    duration = tool.get("duration_ms")
    status = _TOOL_STATUS.get(str(tool.get("status")), "completed")
    error: ErrorInfo | msgspec.UnsetType = msgspec.UNSET
    if status == "error":
        message = str(tool.get("error_type") or "tool error")
        error = ErrorInfo(type="tool_error", message=message, status_code=0)
    return AuditRecord(
        request_id=request_id,
        requested_streaming=False,
        mode="full",
        model="",
        usage=None,
        request=dict(row),
        endpoint=TOOL_ENDPOINT,
        engine=ENGINE,
        status=status,
        complete=row.get("event_type") != "tool_start",
        error=error,
        created_at=started,
        completed_at=ended,
        ttft_ms=None,
        duration_ms=float(duration) if isinstance(duration, int | float) else 0.0,
        writer=f"{ENGINE}:{request_id}",
        seq=0,
    )


def _timing(
    payload_row: Mapping[str, Any] | None,
    end_row: Mapping[str, Any] | None,
    end: Mapping[str, Any] | None,
) -> tuple[int, int, float | None, float]:
    """(created_at, completed_at, ttft_ms, duration_ms)."""
    row = payload_row if payload_row is not None else end_row
    assert row is not None
    when = _int(row.get("event_time_unix_ms"))
    if end is None:
        return when, when, None, 0.0
    created = _int(end.get("request_received_ms"), when)
    total = end.get("total_time_ms")
    ttft = end.get("ttft_ms")
    if isinstance(total, int | float):
        completed = created + round(total)
        duration = float(total)
    else:
        completed = _int((end_row or {}).get("event_time_unix_ms"), created)
        duration = float(max(completed - created, 0))
    return created, completed, float(ttft) if isinstance(ttft, int | float) else None, duration


def _outcome(
    response: dict[str, Any] | None, payload: Mapping[str, Any] | None
) -> tuple[Status, ErrorInfo | msgspec.UnsetType]:
    reason = (payload or {}).get("payload_drop_reason")
    if isinstance(reason, str) and reason and reason != STREAM_DROPPED:
        return "error", ErrorInfo(type=DROPPED_TYPE, message=reason, status_code=0)
    if response is None:
        return "cancelled", msgspec.UNSET
    return "completed", msgspec.UNSET


def _response(value: Any) -> dict[str, Any] | None:
    """The response, or None when absent or Dynamo's empty placeholder (no id, no choices)."""
    response = _object(value)
    if response is None or (not response.get("id") and not response.get("choices")):
        return None
    return response


def _usage(
    own: Any, response: Mapping[str, Any] | None, end: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    if isinstance(own, dict):
        return own
    if response is not None and isinstance(response.get("usage"), dict):
        return dict(response["usage"])
    if end is not None:
        prompt, completion = end.get("input_tokens"), end.get("output_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
    return None


def _created_ms(response: Mapping[str, Any] | None, received_ms: int | None) -> int:
    created = (response or {}).get("created")
    if isinstance(created, int) and created > 0:
        return created * 1000
    return received_ms if received_ms is not None else 0


def _headers(value: Any) -> dict[str, str] | None:
    headers = _object(value)
    if headers is None:
        return None
    return {
        str(name).lower(): REDACTED if is_credential(str(name)) else str(text)
        for name, text in headers.items()
    }


def _metadata(request: Mapping[str, Any] | None) -> dict[str, str]:
    metadata = (request or {}).get("metadata")
    if isinstance(metadata, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        return dict(metadata)
    return {}


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
