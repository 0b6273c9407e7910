"""The lake's layout: object keys and the two object formats, shared by the ``s3`` sink that
writes them and by the readers (``auditgate export`` / ``verify``, :mod:`auditgate.store.lake`).

Keys are Hive-style, partitioned by the hour (UTC) each record was created in::

    <prefix>/date=YYYY-MM-DD/hour=HH/writer-<writer>-<seq>.parquet      (or .jsonl.gz)

``<writer>`` and ``<seq>`` are those of the object's first record (the writer with ``:`` and
other characters outside ``A-Za-z0-9.-`` made ``_``; seq zero-padded to 12 digits, so keys sort
in publish order within a writer).  The key is a function of the records, never of the upload
time, so a batch the bus writes again (a retry, or a durable spool's replay from the same record)
lands on the same key and replaces the object instead of adding a copy.

Formats (``DYN_AUDIT_S3_FORMAT``):

- ``parquet``: one row per record, one column per top-level field of the record
  (:data:`COLUMNS`): scalars typed, ``metadata`` and ``http_request_headers`` as
  ``map<string,string>``, the JSON values (``request``, ``response``, ``usage``, ``error``,
  ``integrity``) as JSON text; zstd-compressed.  A column is null where the record leaves the
  field out (``request`` of a ``usage_only`` record), so rows read back as the records written.
- ``ndjson``: the records' JSON lines (the bytes the ``jsonl`` sink writes), gzip-compressed.
"""

from __future__ import annotations

import datetime
import gzip
import io
import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from auditgate.audit.record import AuditRecord, Envelope

EXTENSIONS: Final = {"parquet": ".parquet", "ndjson": ".jsonl.gz"}
CONTENT_TYPES: Final = {"parquet": "application/vnd.apache.parquet", "ndjson": "application/gzip"}
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("schema_version", "int"),
    ("request_id", "str"),
    ("requested_streaming", "bool"),
    ("mode", "str"),
    ("model", "str"),
    ("usage", "json"),
    ("request", "json"),
    ("response", "json"),
    ("endpoint", "str"),
    ("transport", "str"),
    ("engine", "str"),
    ("status", "str"),
    ("complete", "bool"),
    ("error", "json"),
    ("created_at", "int"),
    ("completed_at", "int"),
    ("ttft_ms", "float"),
    ("duration_ms", "float"),
    ("tenant", "str"),
    ("metadata", "map"),
    ("client_request_id", "str"),
    ("engine_response_id", "str"),
    ("http_request_headers", "map"),
    ("writer", "str"),
    ("seq", "int"),
    ("integrity", "json"),
)
"""Every field of :class:`~auditgate.audit.record.AuditRecord`, in wire order, and its kind."""
OMITTED_WHEN_NULL: Final = frozenset(
    {
        "request",
        "response",
        "error",
        "client_request_id",
        "engine_response_id",
        "http_request_headers",
        "integrity",
    }
)
"""Fields a record leaves out when unset (others are written as ``null``): a null column of
one of these reads back as an absent field."""
KEY_PATTERN: Final = re.compile(
    r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/writer-[^/]+-(\d{12,})(\.parquet|\.jsonl\.gz)$"
)
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9.-]")
_encoder: Final = msgspec.json.Encoder()


def partition(created_at_ms: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of a record created at ``created_at_ms`` (UTC)."""
    when = datetime.datetime.fromtimestamp(created_at_ms / 1000, datetime.UTC)
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def object_key(prefix: str, fmt: str, first: AuditRecord) -> str:
    """The key of an object whose first record is ``first`` (see the module docstring)."""
    writer = _UNSAFE.sub("_", first.writer)
    name = f"{partition(first.created_at)}/writer-{writer}-{first.seq:012d}{EXTENSIONS[fmt]}"
    return f"{prefix}/{name}" if prefix else name


def encode(fmt: str, batch: Sequence[Envelope]) -> bytes:
    """One object holding ``batch``, in ``fmt``; blocking (run it in a thread).

    ``Envelope.json`` must already be encoded (on the event loop) for ``ndjson``.
    """
    if fmt == "ndjson":
        lines = b"".join(envelope.json + b"\n" for envelope in batch)
        return gzip.compress(lines, compresslevel=6, mtime=0)
    return _parquet([envelope.record for envelope in batch])


def decode(key: str, data: bytes) -> list[dict[str, Any] | str]:
    """The records of one object as JSON objects, in object order; an entry that cannot be
    read is a string saying why (blocking)."""
    if key.endswith(EXTENSIONS["ndjson"]):
        out: list[dict[str, Any] | str] = []
        for number, line in enumerate(gzip.decompress(data).splitlines(), start=1):
            try:
                value = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                out.append(f"line {number}: not JSON: {exc}")
                continue
            out.append(value if isinstance(value, dict) else f"line {number}: not an object")
        return out
    return list(_rows(data))


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    return {
        "int": pa.int64(),
        "str": pa.string(),
        "bool": pa.bool_(),
        "float": pa.float64(),
        "json": pa.string(),
        "map": pa.map_(pa.string(), pa.string()),
    }


def schema() -> Any:
    """The Arrow schema of a Parquet object (every column nullable)."""
    import pyarrow as pa

    types = _arrow_types()
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS])


def _cell(kind: str, value: Any) -> Any:
    if value is msgspec.UNSET or value is None:
        return None
    if kind == "json":
        return _encoder.encode(value).decode()
    if kind == "map":
        return list(value.items())
    return value


def _parquet(records: Sequence[AuditRecord]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        name: [_cell(kind, getattr(record, name)) for record in records] for name, kind in COLUMNS
    }
    table = pa.Table.from_pydict(columns, schema=schema())
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _rows(data: bytes) -> list[dict[str, Any] | str]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    kinds = dict(COLUMNS)
    present = [name for name in table.column_names if name in kinds]
    values = {name: table.column(name).to_pylist() for name in present}
    out: list[dict[str, Any] | str] = []
    for index in range(table.num_rows):
        record: dict[str, Any] = {}
        try:
            for name in present:
                value = values[name][index]
                if value is None and name in OMITTED_WHEN_NULL:
                    continue
                kind = kinds[name]
                if kind == "json" and value is not None:
                    value = msgspec.json.decode(value)
                elif kind == "map" and value is not None:
                    value = dict(value)
                record[name] = value
        except msgspec.DecodeError as exc:
            out.append(f"row {index}: column {name} is not JSON: {exc}")
            continue
        out.append(record)
    return out
