"""The stored-completions table: one logical schema for SQLite and PostgreSQL.

One row per audit record, keyed by ``request_id``.  Every :class:`AuditRecord` field has a column
of the same name (dict-valued fields as JSON text in SQLite, JSONB in PostgreSQL), plus:

- ``response_id`` (UNIQUE): the id the client saw — ``response["id"]`` when there is a response,
  else ``chatcmpl-<request_id>``; the stored-completions API looks rows up by it.
- ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens``: copied from ``usage`` for stats.
- ``extra``: record fields this code has no column for (a newer record version), so a record
  written by a newer gateway still round-trips.
- ``originals``: lossless storage of values the databases cannot hold as they are.  PostgreSQL
  rejects a NUL character in ``text`` and the escape ``\\u0000`` in ``jsonb``, and neither
  database's driver can encode a lone surrogate; both are legal in a client's JSON or a Python
  string.  Such a value is stored *scrubbed* in its own column (each offending character replaced
  by U+FFFD, so filters and indexes still work) and exactly, as ASCII-only JSON text, under its
  column name in ``originals``.  Integers beyond 64 bits (stored clamped) and non-finite floats
  (stored NULL) are kept there too.  :func:`record_from_row` prefers ``originals``.  Both stores
  apply the same rule, so they hold the same values.

Every column above is the record's or computed from it by :func:`row_from_record`, and
``auditgate verify`` checks each against the record (:mod:`auditgate.store.trail`).  Only the
stored-completions API writes the :data:`API_COLUMNS`:

- ``deleted_at``: Unix milliseconds when the stored-completions API deleted the row, else NULL.
  Deletion is a tombstone, not a real delete, so a replay of the same record (a consumer restarted
  before its ack) cannot resurrect a deleted completion, and the audit trail stays complete.  The
  API must filter ``deleted_at IS NULL``.
- ``recorded_metadata`` / ``metadata_updated_at``: the API replaces ``metadata`` (what reads,
  filters and exports see); the first replacement keeps the metadata the record was published
  and hashed with in ``recorded_metadata`` (exact, ASCII-only JSON text), and every one sets
  ``metadata_updated_at`` (Unix ms).  Both NULL while the metadata is the record's own
  (:func:`metadata_update`).

Known PostgreSQL normalisation (JSONB): object keys come back in JSONB's order, duplicate keys keep
the last value, and a number is re-printed from its decimal value (``1e16`` comes back as the
integer ``10000000000000000``).  The values compare equal; the bytes of a re-encoded body may not.
"""

from __future__ import annotations

import json
import math
import operator
import re
import time
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

import msgspec

from auditgate.audit.record import AuditRecord

TABLE: Final = "completions"
"""The stored-completions table."""
MIGRATIONS_TABLE: Final = "schema_migrations"
"""Applied migrations: ``name`` (primary key) and ``applied_at`` (Unix ms)."""
METADATA_TABLE: Final = "completion_metadata"
"""``(request_id, key, value, created_at)`` rows that index metadata filters (in ``created_at``
order within a key and value).  SQLite: written by :func:`auditgate.store.sqlite.insert_rows`
for new rows and kept by triggers on update and delete; PostgreSQL (since m014): partitioned by
day like the table, kept by statement-level triggers on insert, update and delete."""

HOLDS_TABLE: Final = "legal_holds"
"""Legal holds that stop retention: ``(name PRIMARY KEY, tenant NULL = every tenant, reason,
created_at Unix ms)`` (:mod:`auditgate.store.retention`)."""

Kind = Literal["text", "json", "bool", "int", "float"]

COLUMNS: Final[tuple[tuple[str, Kind], ...]] = (
    ("request_id", "text"),
    ("response_id", "text"),
    ("schema_version", "int"),
    ("requested_streaming", "bool"),
    ("mode", "text"),
    ("model", "text"),
    ("usage", "json"),
    ("request", "json"),
    ("response", "json"),
    ("endpoint", "text"),
    ("transport", "text"),
    ("engine", "text"),
    ("status", "text"),
    ("complete", "bool"),
    ("error", "json"),
    ("created_at", "int"),
    ("completed_at", "int"),
    ("ttft_ms", "float"),
    ("duration_ms", "float"),
    ("tenant", "text"),
    ("metadata", "json"),
    ("client_request_id", "text"),
    ("engine_response_id", "text"),
    ("http_request_headers", "json"),
    ("writer", "text"),
    ("seq", "int"),
    ("integrity", "json"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("total_tokens", "int"),
    ("extra", "json"),
    ("originals", "text"),
)
"""Every column a sink writes, in insert order, with its kind (the API's: :data:`API_COLUMNS`)."""
API_COLUMNS: Final = ("deleted_at", "recorded_metadata", "metadata_updated_at")
"""Columns only the stored-completions API writes (NULL in a row a sink inserts)."""

COLUMN_NAMES: Final = tuple(name for name, _ in COLUMNS)
KINDS: Final[Mapping[str, Kind]] = dict(COLUMNS)
SELECT_COLUMNS: Final = ", ".join(COLUMN_NAMES)
"""The column list :func:`record_from_row` needs, for ``SELECT {SELECT_COLUMNS} FROM ...``."""

_RECORD_FIELDS: Final = AuditRecord.__struct_fields__
_IS_RECORD_FIELD: Final = frozenset(_RECORD_FIELDS).__contains__
# Record fields stored in their own column; any other (newer) field goes to ``extra``.
_COLUMN_FIELDS: Final = tuple(f for f in _RECORD_FIELDS if f in KINDS)
_EXTRA_FIELDS: Final = tuple(f for f in _RECORD_FIELDS if f not in KINDS)
_TOKEN_COLUMNS: Final = ("prompt_tokens", "completion_tokens", "total_tokens")
# row_from_record runs for every record a sink writes: it reads the record's fields in one call
# (astuple) through these precomputed plans instead of a getattr and a kind lookup per field.
_FIELD_INDEX: Final = {f: i for i, f in enumerate(_RECORD_FIELDS)}
_COLUMN_PLAN: Final = tuple((f, _FIELD_INDEX[f], KINDS[f] == "json") for f in _COLUMN_FIELDS)
"""(field, its index in the record's fields, whether its column holds JSON), in column order."""
_EXTRA_PLAN: Final = tuple((f, _FIELD_INDEX[f]) for f in _EXTRA_FIELDS)
_ROW_VALUES: Final = operator.itemgetter(*COLUMN_NAMES)

_encoder: Final = msgspec.json.Encoder()
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_NUL_ESCAPE: Final = b"\\u0000"
_UNSAFE: Final = re.compile("[\x00\ud800-\udfff]")

Row = tuple[Any, ...]
"""Values for :data:`COLUMNS`, in order: JSON kinds as JSON text, the rest as Python scalars."""


class RowLike(Protocol):
    """A fetched row addressable by column name: ``sqlite3.Row`` or ``asyncpg.Record``."""

    def __getitem__(self, key: str, /) -> Any: ...


def response_id_of(record: AuditRecord) -> str:
    """The completion id the client saw: ``response["id"]``, else ``chatcmpl-<request_id>``."""
    response = record.response
    if isinstance(response, dict):
        rid = response.get("id")
        if isinstance(rid, str) and rid:
            return rid
    return f"chatcmpl-{record.request_id}"


def row_from_record(record: AuditRecord, extra: Mapping[str, Any] | None = None) -> Row:
    """The row that stores ``record``; ``extra`` holds fields of a newer record version.

    Total: any record that the record codec can represent yields a row both databases accept
    (see the module docstring for NUL characters and lone surrogates).
    """
    fields = msgspec.structs.astuple(record)
    values: dict[str, Any] = {}
    originals: dict[str, Any] = {}
    for field, index, is_json in _COLUMN_PLAN:
        value = fields[index]
        if value is msgspec.UNSET:
            values[field] = None
        elif is_json:
            values[field] = _json_column(field, value, originals)
        elif isinstance(value, str):
            values[field] = _text_column(field, value, originals)
        elif isinstance(value, float) and not math.isfinite(value):
            # SQLite turns NaN into NULL and JSON has no spelling for it: keep it in originals.
            originals[field] = value
            values[field] = None
        elif type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            originals[field] = value
            values[field] = max(_INT64_MIN, min(value, _INT64_MAX))
        else:
            values[field] = value
    more = {
        f: msgspec.to_builtins(fields[i]) for f, i in _EXTRA_PLAN if fields[i] is not msgspec.UNSET
    }
    if extra:
        more.update((k, v) for k, v in extra.items() if k not in more)
    values["extra"] = _json_column("extra", more, originals) if more else None
    values["response_id"] = scrub(response_id_of(record))
    usage = record.usage if isinstance(record.usage, dict) else {}
    for column in _TOKEN_COLUMNS:
        count = usage.get(column)
        storable = type(count) is int and _INT64_MIN <= count <= _INT64_MAX
        values[column] = count if storable else None
    values["originals"] = json.dumps(originals, ensure_ascii=True) if originals else None
    row: Row = _ROW_VALUES(values)
    return row


def row_from_json(line: bytes | str) -> Row:
    """The row for one record line as published (the bytes of the ``jsonl`` sink / NATS).

    Unlike :func:`~auditgate.audit.record.decode_record`, fields this version does not know are
    kept (in ``extra``), so a consumer older than the writer loses nothing.
    """
    data = msgspec.json.decode(line)
    if not isinstance(data, dict):
        raise msgspec.ValidationError("an audit record must be a JSON object")
    return row_from_data(data)


def row_from_data(data: Mapping[str, Any]) -> Row:
    """The row for a record as a JSON object (fields this version does not know go to
    ``extra``); msgspec.ValidationError when the known fields are no valid record."""
    known = {k: v for k, v in data.items() if _IS_RECORD_FIELD(k)}
    unknown = {k: v for k, v in data.items() if not _IS_RECORD_FIELD(k)}
    return row_from_record(msgspec.convert(known, AuditRecord), unknown)


def record_dict_from_row(row: RowLike) -> dict[str, Any]:
    """The stored record as a JSON object: fields in wire order, then ``extra`` fields.

    ``row`` must hold at least :data:`SELECT_COLUMNS`.
    """
    raw = row["originals"]
    originals: dict[str, Any] = json.loads(raw) if raw else {}
    out: dict[str, Any] = {}
    for field in _COLUMN_FIELDS:
        if field in originals:
            out[field] = originals[field]
            continue
        value = row[field]
        if value is None:
            if field in _NULLABLE_FIELDS:
                out[field] = None
            continue
        kind = KINDS[field]
        if kind == "json":
            out[field] = msgspec.json.decode(value)
        elif kind == "bool":
            out[field] = bool(value)
        else:
            out[field] = value
    if "extra" in originals:
        extra = originals["extra"]
    else:
        raw_extra = row["extra"]
        extra = msgspec.json.decode(raw_extra) if raw_extra is not None else {}
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def record_from_row(row: RowLike) -> AuditRecord:
    """The :class:`AuditRecord` a row stores; equal to the record that was published."""
    data = record_dict_from_row(row)
    known = {k: v for k, v in data.items() if _IS_RECORD_FIELD(k)}
    return msgspec.convert(known, AuditRecord)


def column_update(field: str, value: Any, originals: str | None) -> tuple[Any, str | None]:
    """``(column value, new originals)`` to ``UPDATE`` one record field of a stored row.

    For writers other than the sinks, e.g. the stored-completions API replacing ``metadata``:
    ``originals`` is the row's current ``originals`` column, and both returned values must be
    written back together, so a value with a NUL or a lone surrogate stays lossless.
    """
    kind = KINDS[field]
    kept: dict[str, Any] = json.loads(originals) if originals else {}
    kept.pop(field, None)
    if value is None or value is msgspec.UNSET:
        column = None
    elif kind == "json":
        column = _json_column(field, value, kept)
    elif isinstance(value, str):
        column = _text_column(field, value, kept)
    else:
        column = value
    return column, (json.dumps(kept, ensure_ascii=True) if kept else None)


def metadata_update(row: RowLike, metadata: dict[str, str]) -> tuple[Any, str | None, str, int]:
    """Column values that replace a stored row's metadata through the stored-completions API:
    ``(metadata, originals, recorded_metadata, metadata_updated_at)``, written back together.

    ``row`` holds the row's ``metadata``, ``originals`` and ``recorded_metadata``.  The first
    replacement keeps the metadata the record was published (and hashed) with in
    ``recorded_metadata``, exactly, so ``auditgate verify`` still checks the record against its
    chain hash; later replacements leave it as it is.
    """
    recorded = row["recorded_metadata"]
    if recorded is None:
        raw = row["originals"]
        originals: dict[str, Any] = json.loads(raw) if raw else {}
        own = originals["metadata"] if "metadata" in originals else json.loads(row["metadata"])
        recorded = json.dumps(own, ensure_ascii=True)
    value, kept = column_update("metadata", metadata, row["originals"])
    return value, kept, recorded, int(time.time() * 1000)


def scrub(text: str) -> str:
    """``text`` with every NUL and lone surrogate replaced by U+FFFD (storable anywhere)."""
    return _UNSAFE.sub("\ufffd", text)


# Fields whose type admits None (a NULL column means None for them, UNSET for the others).
_NULLABLE_FIELDS: Final = frozenset(
    f.name
    for f in msgspec.inspect.type_info(AuditRecord).fields  # type: ignore[attr-defined]
    if isinstance(f.type, msgspec.inspect.UnionType)
    and any(isinstance(t, msgspec.inspect.NoneType) for t in f.type.types)
)


def _text_column(field: str, value: str, originals: dict[str, Any]) -> str:
    if _UNSAFE.search(value) is None:
        return value
    originals[field] = value
    return scrub(value)


def _json_column(field: str, value: Any, originals: dict[str, Any]) -> str:
    try:
        data: bytes | None = _encoder.encode(value)
    except UnicodeEncodeError:
        data = None
    if data is not None and _NUL_ESCAPE not in data:
        return data.decode()
    # Slow path, rare: the value holds a NUL or a lone surrogate (or a literal "\u0000" text).
    plain = msgspec.to_builtins(value)
    clean = _scrub_value(plain)
    if clean != plain:
        originals[field] = plain
    return _encoder.encode(clean).decode()


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(k): _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    return value


_RESPONSE_ID: Final = COLUMN_NAMES.index("response_id")


def with_own_response_id(row: Row) -> Row:
    """``row`` with a ``response_id`` derived from its own request id.

    For the rare record whose ``response["id"]`` is already stored for another request (an
    upstream that reuses ids): the row is kept under ``chatcmpl-<request_id>`` instead of being
    lost, and the original id stays in its ``response`` body.
    """
    own = scrub(f"chatcmpl-{row[0]}")
    if own == row[_RESPONSE_ID]:
        own += ".1"
    return (*row[:_RESPONSE_ID], own, *row[_RESPONSE_ID + 1 :])
