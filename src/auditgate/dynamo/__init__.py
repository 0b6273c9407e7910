"""NVIDIA Dynamo's audit records: their formats, and their conversion to and from ours.

``formats`` documents Dynamo's legacy audit record (0.x) and its ``dynamo.request.trace.v1``
rows (1.4+) with their settings, and detects which one a message holds; ``convert`` makes
:class:`~auditgate.audit.record.AuditRecord`\\ s of them; ``join`` turns a stream of messages into
records, joining each request's payload and timing rows; ``envelope`` writes our records as
``dynamo.request.trace.v1`` rows for tools built for Dynamo.
"""

from __future__ import annotations

from auditgate.dynamo.convert import from_legacy, from_tool, from_trace
from auditgate.dynamo.envelope import to_trace_rows
from auditgate.dynamo.formats import (
    TRACE_SCHEMA,
    FormatError,
    InputFormat,
    detect,
    parse_input_format,
    unwrap,
)
from auditgate.dynamo.join import Converted, DynamoReader

__all__ = [
    "TRACE_SCHEMA",
    "Converted",
    "DynamoReader",
    "FormatError",
    "InputFormat",
    "detect",
    "from_legacy",
    "from_tool",
    "from_trace",
    "parse_input_format",
    "to_trace_rows",
    "unwrap",
]
