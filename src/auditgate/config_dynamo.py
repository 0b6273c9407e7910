"""Dynamo 1.4+'s names for the audit settings (``DYN_REQUEST_TRACE_*``), in Dynamo's precedence
(part of :mod:`auditgate.config`; :mod:`auditgate.dynamo.formats` lists Dynamo's settings)."""

from __future__ import annotations

from typing import Final

from auditgate.config import Env, parse_names
from auditgate.errors import ConfigError

DYNAMO_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "DYN_AUDIT_SINKS": ("DYN_REQUEST_TRACE_SINKS",),
    "DYN_AUDIT_OUTPUT_PATH": ("DYN_REQUEST_TRACE_FILE_PATH", "DYN_REQUEST_TRACE_OUTPUT_PATH"),
    "DYN_AUDIT_CAPACITY": ("DYN_REQUEST_TRACE_CAPACITY",),
    "DYN_AUDIT_JSONL_BUFFER_BYTES": (
        "DYN_REQUEST_TRACE_FILE_BUFFER_BYTES",
        "DYN_REQUEST_TRACE_JSONL_BUFFER_BYTES",
    ),
    "DYN_AUDIT_JSONL_FLUSH_INTERVAL_MS": (
        "DYN_REQUEST_TRACE_FILE_FLUSH_INTERVAL_MS",
        "DYN_REQUEST_TRACE_JSONL_FLUSH_INTERVAL_MS",
    ),
    "DYN_AUDIT_JSONL_GZ_ROLL_BYTES": (
        "DYN_REQUEST_TRACE_FILE_ROLL_BYTES",
        "DYN_REQUEST_TRACE_JSONL_GZ_ROLL_BYTES",
    ),
    "DYN_AUDIT_JSONL_GZ_ROLL_LINES": (
        "DYN_REQUEST_TRACE_FILE_ROLL_LINES",
        "DYN_REQUEST_TRACE_JSONL_GZ_ROLL_LINES",
    ),
    "DYN_AUDIT_NATS_SUBJECT": ("DYN_REQUEST_TRACE_NATS_SUBJECT",),
    "DYN_AUDIT_HTTP_HEADER_CAPTURE_LIST": ("DYN_REQUEST_TRACE_HTTP_HEADER_CAPTURE_LIST",),
}
"""Dynamo 1.4+'s names for our settings, in Dynamo's precedence: each one that is set wins
over the ``DYN_AUDIT_*`` name (which Dynamo keeps as a legacy alias), the first one first."""
_TRACE_RECORDS: Final = (
    "request_end",
    "request_payload",
    "tool",
    "tools",
    "tool_start",
    "tool_end",
    "tool_error",
)
OUTPUT_FORMATS: Final = {
    "auditgate": "auditgate",
    "dynamo-request-trace": "dynamo-request-trace",
    "dynamo": "dynamo-request-trace",
    "dynamo.request.trace.v1": "dynamo-request-trace",
}


def request_trace_switches(env: Env) -> tuple[bool, bool]:
    """(audit on, full records for every request) from Dynamo 1.4+'s switches:
    ``DYN_REQUEST_TRACE_RECORDS`` when set (``request_payload`` in it is force logging), else
    ``DYN_REQUEST_TRACE`` (Dynamo's ``request_end`` rows: our usage records)."""
    records = env.optional("DYN_REQUEST_TRACE_RECORDS")
    if records is not None:
        kinds = parse_names("DYN_REQUEST_TRACE_RECORDS", records, _TRACE_RECORDS)
        return bool(kinds), "request_payload" in kinds
    return env.flag("DYN_REQUEST_TRACE", False), False


def file_sinks(env: Env, sinks: tuple[str, ...]) -> tuple[str, ...]:
    """``file`` (Dynamo 1.4+'s name) as ``jsonl`` or ``jsonl_gz``, per
    ``DYN_REQUEST_TRACE_FILE_FORMAT`` (default ``jsonl_gz``, as in Dynamo)."""
    if "file" not in sinks:
        return sinks
    raw = env.text("DYN_REQUEST_TRACE_FILE_FORMAT", "jsonl_gz").lower()
    kind = {"jsonl": "jsonl", "jsonl_gz": "jsonl_gz", "jsonl.gz": "jsonl_gz"}.get(raw)
    if kind is None:
        raise ConfigError(f"DYN_REQUEST_TRACE_FILE_FORMAT={raw!r}: expected jsonl or jsonl_gz")
    return tuple(dict.fromkeys(kind if s == "file" else s for s in sinks))


def output_format(env: Env) -> str:
    """``DYN_AUDIT_FORMAT``: ``auditgate`` (default) or ``dynamo-request-trace``."""
    raw = env.text("DYN_AUDIT_FORMAT", "auditgate").lower()
    if raw not in OUTPUT_FORMATS:
        raise ConfigError(
            f"DYN_AUDIT_FORMAT={raw!r}: expected auditgate or dynamo-request-trace (or dynamo)"
        )
    return OUTPUT_FORMATS[raw]


def first_int(env: Env, names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` that is set (Dynamo's precedence: its new name, then the legacy
    alias), as an integer >= 1; else ``default``."""
    for name in names:
        value = env.integer(name, None, minimum=1)
        if value is not None:
            return value
    return default


def max_age(env: Env) -> float | None:
    """``DYN_REQUEST_TRACE_FILE_MAX_AGE_SECS``: jsonl_gz retention by age, in seconds."""
    value = env.integer("DYN_REQUEST_TRACE_FILE_MAX_AGE_SECS", None, minimum=1)
    return None if value is None else float(value)
