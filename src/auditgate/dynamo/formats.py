"""NVIDIA Dynamo's audit record formats, and telling them (and ours) apart.

Read from Dynamo's sources (``lib/llm/src/audit``, ``lib/llm/src/request_trace``) and checked
against what Dynamo 0.7.1 and 1.6.1 really publish (``tests/fixtures/dynamo``, captured by
``bench/dynamo_capture.py``).

**Legacy audit record** (Dynamo 0.x, ``dynamo_llm::audit``): one JSON object per chat completion
that asked ``store: true`` (or every one with ``DYN_AUDIT_FORCE_LOGGING``)::

    {"schema_version": 1, "request_id": "<uuid>", "requested_streaming": false,
     "model": "m", "request": {...the client's body...}, "response": {...chat.completion...}}

``response`` is absent on a client cancel, gateway timeout or aggregation failure; 0.7.1 writes
it instead as an empty completion (``"id": "", "choices": [], "created": 0``) when a client
abandons a stream.  There is no time, usage or status field (some builds add ``mode`` and
``usage``, which are honoured when present).  The response ``id`` is ``chatcmpl-<request_id>``.
Sinks: ``stderr`` (a log line whose ``record=`` field holds the JSON) and ``nats`` (core NATS
publish of the bare JSON on ``DYN_AUDIT_NATS_SUBJECT``, default ``dynamo.audit.v1``, no
``Nats-Msg-Id``; the server URL is the runtime's ``NATS_SERVER``).  Settings of 0.7.1:
``DYN_AUDIT_ENABLED``, ``DYN_AUDIT_SINKS`` (``stderr``, ``nats``), ``DYN_AUDIT_CAPACITY``,
``DYN_AUDIT_NATS_SUBJECT``, ``DYN_AUDIT_FORCE_LOGGING``.

**Request trace** (Dynamo 1.4+, ``dynamo_llm::request_trace``): rows of the envelope
``{"schema": "dynamo.request.trace.v1", "event_type", "event_time_unix_ms", "event_source"?,
"agent_context"?, "request"?, "tool"?, "payload"?}``, one of four kinds:

- ``request_payload`` (``payload``): ``{"request_id", "endpoint": "openai.chat_completion",
  "model", "request"?, "response"?, "http_request_headers"?, "payload_complete": bool,
  "payload_drop_reason"?}``.  ``event_time_unix_ms`` is the request's arrival.  A stream the
  client abandoned has no ``response``, ``payload_complete: false`` and the reason
  ``response_stream_dropped``; the ``otel`` sink replaces an oversize row by a marker without
  ``request``/``response`` and the reason ``otel_payload_too_large:max_bytes=N:actual_bytes=M``.
  Header values are captured unredacted.
- ``request_end`` (``request``): timing and counts of the same request id — ``request_id``,
  ``x_request_id``?, ``model``?, ``input_tokens``, ``output_tokens``, ``cached_tokens``,
  ``request_received_ms``, ``prefill_wait_time_ms``, ``prefill_time_ms``, ``ttft_ms``,
  ``total_time_ms``, ``avg_itl_ms``, ``kv_hit_rate``, ``queue_depth``, ``worker``, ``replay``
  (KV block hashes for DynoSim), ``finish_reason_metadata``.  It is published separately, before
  or after the payload row (both orders occur within milliseconds).
- ``tool_start`` / ``tool_end`` / ``tool_error`` (``tool``, ``agent_context``, ``event_source:
  "harness"``): agent harness tool calls pushed into Dynamo's ZMQ ingress
  (``{"tool_call_id", "tool_class", "status", "started_at_unix_ms", "ended_at_unix_ms",
  "duration_ms", "output_tokens", "output_bytes", "tool_name_hash", "error_type"}``).

Sinks: ``stderr`` (the bare row per line), ``nats`` (bare row, subject
``DYN_REQUEST_TRACE_NATS_SUBJECT``, default ``dynamo.request_trace.v1``, or ``dynamo.audit.v1``
when only the legacy ``DYN_AUDIT_SINKS`` selected it), ``file`` (format ``jsonl``: one file;
``jsonl_gz``: segments ``<prefix>.NNNNNN.jsonl.gz`` — each line wrapped as
``{"timestamp": <ms since the sink started>, "event": <row>}``), ``otel`` (one OTLP LogRecord per
row: body = the event type, the row as the ``payload`` attribute, rows over
``DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES`` (4 MiB) replaced by the incomplete marker).

**Settings of 1.6.1 and their precedence** (first set wins; ``DYN_AUDIT_*`` are migration shims):

- records: ``DYN_REQUEST_TRACE_RECORDS`` (``request_end,request_payload,tool``) alone when set;
  else ``DYN_REQUEST_TRACE=1`` gives ``request_end,tool`` and a truthy
  ``DYN_AUDIT_FORCE_LOGGING`` adds ``request_payload``.  No ``store`` gate any more.
- sinks: ``DYN_REQUEST_TRACE_SINKS`` > ``DYN_AUDIT_SINKS`` > ``file`` (``file, stderr, nats,
  otel``; legacy ``jsonl`` / ``jsonl_gz`` mean ``file`` in that format).
- file path: ``DYN_REQUEST_TRACE_FILE_PATH`` > ``DYN_REQUEST_TRACE_OUTPUT_PATH`` >
  ``DYN_AUDIT_OUTPUT_PATH`` > ``/tmp/dynamo-request-trace``; format:
  ``DYN_REQUEST_TRACE_FILE_FORMAT`` > the legacy sink name > ``jsonl_gz``.
- capacity: ``DYN_REQUEST_TRACE_CAPACITY`` > ``DYN_AUDIT_CAPACITY`` > 1024.
- buffer / flush / roll: ``DYN_REQUEST_TRACE_FILE_{BUFFER_BYTES,FLUSH_INTERVAL_MS,ROLL_BYTES,
  ROLL_LINES}`` > ``DYN_REQUEST_TRACE_JSONL_{BUFFER_BYTES,FLUSH_INTERVAL_MS,GZ_ROLL_BYTES,
  GZ_ROLL_LINES}`` > ``DYN_AUDIT_JSONL_*`` > 1 MiB / 1000 ms / 256 MiB / unset.
- NATS subject: ``DYN_REQUEST_TRACE_NATS_SUBJECT`` > ``DYN_AUDIT_NATS_SUBJECT`` > (see above).
- OTel payload bound: ``DYN_REQUEST_TRACE_OTEL_MAX_PAYLOAD_BYTES`` >
  ``DYN_AUDIT_OTEL_MAX_PAYLOAD_BYTES`` > 4194304; endpoint and protocol from the standard
  ``OTEL_EXPORTER_OTLP_[LOGS_]{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT,COMPRESSION}`` (Dynamo's
  default protocol is ``grpc``).
- headers: ``DYN_REQUEST_TRACE_HTTP_HEADER_CAPTURE_LIST`` (no legacy alias).
- tool ingress: ``DYN_REQUEST_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT`` / ``..._ZMQ_TOPIC``
  (``agent-tool-events``).  1.6.1 has no file retention setting (no ``..._FILE_MAX_BYTES`` /
  ``..._FILE_MAX_AGE_SECS`` in its binary).

**auditgate's own record** (``auditgate.audit.record``) starts with the legacy record's first
keys and adds ``writer`` / ``seq``; that pair is what tells it from Dynamo's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

TRACE_SCHEMA: Final = "dynamo.request.trace.v1"
LEGACY_SUBJECT: Final = "dynamo.audit.v1"
TRACE_SUBJECT: Final = "dynamo.request_trace.v1"
CHAT_ENDPOINT: Final = "openai.chat_completion"
STREAM_DROPPED: Final = "response_stream_dropped"
"""``payload_drop_reason`` of a stream that ended before its response was aggregated."""
OTEL_TOO_LARGE: Final = "otel_payload_too_large"
"""Prefix of the ``payload_drop_reason`` of a row the ``otel`` sink reduced to a marker."""
TOOL_EVENTS: Final = frozenset({"tool_start", "tool_end", "tool_error"})


class InputFormat(enum.StrEnum):
    """What one message or line holds."""

    AUDITGATE = "auditgate"
    """auditgate's own record (has ``writer`` and ``seq``)."""
    DYNAMO_AUDIT = "dynamo-audit"
    """Dynamo 0.x's legacy audit record."""
    DYNAMO_TRACE = "dynamo-request-trace"
    """A ``dynamo.request.trace.v1`` row."""


class FormatError(ValueError):
    """The value is not any record format this module knows."""


def unwrap(value: Any) -> Any:
    """The row inside a Dynamo file line (``{"timestamp": …, "event": row}``), else ``value``."""
    if isinstance(value, dict) and len(value) == 2 and "event" in value and "timestamp" in value:
        event = value["event"]
        if isinstance(event, dict):
            return event
    return value


def detect(value: Any) -> InputFormat:
    """The format of one decoded message or line (after :func:`unwrap`); FormatError if none."""
    if not isinstance(value, Mapping):
        raise FormatError(f"expected a JSON object, got {type(value).__name__}")
    schema = value.get("schema")
    if schema is not None:
        if schema == TRACE_SCHEMA:
            return InputFormat.DYNAMO_TRACE
        raise FormatError(f"unknown schema {schema!r}")
    if "schema_version" in value and isinstance(value.get("request_id"), str):
        if "writer" in value and "seq" in value:
            return InputFormat.AUDITGATE
        if "requested_streaming" in value:
            return InputFormat.DYNAMO_AUDIT
    raise FormatError("neither an auditgate record nor a Dynamo audit or request-trace row")


def parse_input_format(name: str) -> InputFormat | None:
    """``auto`` -> None (detect per message); else the named format; FormatError if unknown."""
    if name == "auto":
        return None
    try:
        return InputFormat(name)
    except ValueError:
        names = ", ".join(["auto", *(f.value for f in InputFormat)])
        raise FormatError(f"unknown input format {name!r}; expected one of {names}") from None
