"""A store read as an audit trail (``auditgate verify``): each row's record as it was hashed, and
every other column of the row checked against that record.

A row's columns are of three sorts (:mod:`auditgate.store.schema`):

- the record's own fields (``model``, ``usage``, ``request``, ``created_at``, ``status``, ...).
  The record verify hashes is rebuilt from them, so a changed one makes the record ``modified``:
  the chain names the record, it cannot name the field.
- columns computed from the record: ``response_id``, ``prompt_tokens`` / ``completion_tokens`` /
  ``total_tokens``, ``originals``, every column whose exact value ``originals`` holds (its column
  holds a scrubbed or clamped copy), and SQLite's metadata side table.  Nothing rebuilds the
  record from them, so the chain cannot see them change; they are computed again from the
  rebuilt record exactly as the sinks compute them
  (:func:`~auditgate.store.schema.row_from_record`), and each one that differs is a
  ``column_mismatch`` naming the column.  Scalar columns are compared for every row, including
  the record's own fields (so SQLite's ``complete = 2``, read as true, is named too).
- the stored-completions API's (:data:`~auditgate.store.schema.API_COLUMNS`).  ``deleted_at``
  marks a tombstone: legitimate, and the row is verified like any other.  An API metadata update
  replaces ``metadata`` and keeps the record's own metadata in ``recorded_metadata``: the record
  is hashed with the kept one, and the row is reported ``metadata_updated``, a warning, with the
  time of the update.  The chain proves what the gateway recorded; nothing signs what a later API
  call wrote, so verify says which rows carry such a label and since when instead of vouching
  for it.  Changing ``metadata`` any other way, without keeping the record's own, leaves a
  record that no longer matches its hash (``modified``).

JSON columns compare as JSON values, not bytes: PostgreSQL's JSONB reorders keys and re-prints
numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from auditgate.audit.verify import ColumnNote, SourceError, Verifier
from auditgate.store.schema import (
    API_COLUMNS,
    COLUMN_NAMES,
    COLUMNS,
    METADATA_TABLE,
    SELECT_COLUMNS,
    TABLE,
    RowLike,
    record_dict_from_row,
    row_from_data,
    with_own_response_id,
)

MISMATCH: Final = "column_mismatch"
UPDATED: Final = "metadata_updated"
_JSON_TEXT: Final = frozenset({"originals"})
"""Text columns that hold JSON (compared as JSON values)."""
_RESPONSE_ID: Final = COLUMN_NAMES.index("response_id")
_METADATA: Final = COLUMN_NAMES.index("metadata")
_canonical: Final = msgspec.json.Encoder(order="sorted")
_SHOWN_CHARS: Final = 80


class StoredRow(RowLike, Protocol):
    """A fetched row addressable by column name and iterable over its values in select order
    (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __iter__(self) -> Iterator[Any]: ...


@dataclasses.dataclass(slots=True)
class TrailRow:
    """One stored row as verify sees it."""

    record: dict[str, Any] | str
    """The record as it was hashed, or why the row cannot be read."""
    notes: list[ColumnNote]
    """What the row's other columns hold that the record does not give."""
    taken_id: str | None = None
    """Set when the row is stored under its own response id because another request held the
    one its record gives (:func:`~auditgate.store.schema.with_own_response_id`): that id, which
    another row must then hold (:func:`taken_note`)."""


def trail_row(row: StoredRow, metadata_pairs: Iterable[Sequence[str]] | None = None) -> TrailRow:
    """The record ``row`` holds as it was hashed, and its columns checked against it.

    ``row`` holds :data:`~auditgate.store.schema.SELECT_COLUMNS` first, in that order, and the
    :data:`~auditgate.store.schema.API_COLUMNS`; ``metadata_pairs``: the row's ``(key, value)``
    pairs in SQLite's metadata side table (``None`` for PostgreSQL, which has none).
    """
    try:
        current = record_dict_from_row(row)
    except (ValueError, TypeError, AttributeError, msgspec.DecodeError) as exc:
        # Not JSON, or JSON of the wrong shape (``originals`` or ``extra`` not an object).
        return TrailRow(f"unreadable row: {type(exc).__name__}: {exc}", [])
    notes: list[ColumnNote] = []
    hashed = _as_hashed(row, current, notes)
    raw_originals = row["originals"]
    exact = set(json.loads(raw_originals)) if raw_originals else set()
    try:
        expected = row_from_data(_without_bodies(current, exact))
    except msgspec.ValidationError as exc:
        notes.append(ColumnNote(MISMATCH, None, f"the columns hold no valid record: {exc}"))
        return TrailRow(hashed, notes)
    taken: str | None = None
    # By position: a name lookup in a sqlite3.Row costs as much as the comparison.
    stored = tuple(row)
    for index, (name, kind) in enumerate(COLUMNS):
        want, have = expected[index], stored[index]
        if kind == "json" and name not in exact:
            continue  # the record was rebuilt from this very value: the hash covers it
        if _same(name, kind, want, have):
            continue
        if index == _RESPONSE_ID and have == with_own_response_id(expected)[index]:
            taken = want
            continue
        notes.append(_mismatch(name, kind, want, have))
    if metadata_pairs is not None:
        notes.extend(_side_table_notes(expected[_METADATA], metadata_pairs))
    return TrailRow(hashed, notes, taken)


def taken_note(entry: TrailRow, holder: str | None) -> None:
    """Settle a row stored under its own response id (:attr:`TrailRow.taken_id`): ``holder`` is
    the request id of the row that holds the id its record gives, ``None`` when no row does."""
    if holder is None and entry.taken_id is not None:
        detail = (
            f"response_id is the request's own, kept when another request holds "
            f"{entry.taken_id!r}, but no row holds that id"
        )
        entry.notes.append(ColumnNote(MISMATCH, "response_id", detail))


def _without_bodies(record: dict[str, Any], exact: set[str]) -> dict[str, Any]:
    """``record`` with its bodies stubbed out unless ``originals`` holds them.

    The bodies are the bulk of a row; the record was rebuilt from their columns as they are, so
    the hash covers them and they are not compared, and encoding them again for nothing would
    take most of verify's time.  The response keeps its ``id``, which ``response_id`` is."""
    out = dict(record)
    if "request" not in exact and isinstance(out.get("request"), dict):
        out["request"] = {}
    response = out.get("response")
    if "response" not in exact and isinstance(response, dict):
        out["response"] = {"id": response["id"]} if "id" in response else {}
    return out


def _as_hashed(row: RowLike, current: dict[str, Any], notes: list[ColumnNote]) -> dict[str, Any]:
    """The record as it was hashed: with the metadata it was published with when the API has
    replaced it since (a ``metadata_updated`` note says so)."""
    recorded, updated_at = row["recorded_metadata"], row["metadata_updated_at"]
    if recorded is None:
        if updated_at is not None:
            detail = "metadata_updated_at is set, but recorded_metadata is not"
            notes.append(ColumnNote(MISMATCH, "metadata_updated_at", detail))
        return current
    try:
        own = json.loads(recorded)
    except ValueError:
        notes.append(ColumnNote(MISMATCH, "recorded_metadata", "recorded_metadata is not JSON"))
        return current
    when = f" at {_iso(updated_at)}" if type(updated_at) is int else ""
    detail = (
        f"metadata replaced through the stored-completions API{when}; the chain covers the "
        "record's own metadata, kept in recorded_metadata"
    )
    notes.append(ColumnNote(UPDATED, "metadata", detail))
    if current.get("mode") != "full" or current.get("response") is None:
        detail = "recorded_metadata is set on a row the stored-completions API cannot update"
        notes.append(ColumnNote(MISMATCH, "recorded_metadata", detail))
    return {**current, "metadata": own}


def _same(name: str, kind: str, want: Any, have: Any) -> bool:
    if have == want and type(have) is type(want):
        return True
    if want is None or have is None:
        return want is None and have is None
    if kind == "json" or name in _JSON_TEXT:
        return have == want or _same_json(want, have)
    if kind == "bool":
        return type(have) in (bool, int) and have == want
    if kind == "float":
        return type(have) in (int, float) and have == want
    return type(have) is type(want) and have == want


def _same_json(want: str, have: Any) -> bool:
    if not isinstance(have, str):
        return False
    try:
        wanted, held = msgspec.json.decode(want), msgspec.json.decode(have)
    except msgspec.DecodeError:
        return False
    if _canonical.encode(wanted) == _canonical.encode(held):
        return True
    # JSONB prints a float from 1e16 on as an integer: equal numbers, other bytes.
    try:
        return bool(wanted == held)
    except RecursionError:  # nested deeper than Python compares; the bytes differed
        return False


def _mismatch(name: str, kind: str, want: Any, have: Any) -> ColumnNote:
    if kind == "json" or name in _JSON_TEXT:
        return ColumnNote(MISMATCH, name, f"{name} differs from what the record gives")
    return ColumnNote(
        MISMATCH, name, f"{name} holds {_shown(have)}, the record gives {_shown(want)}"
    )


def _side_table_notes(metadata: str | None, pairs: Iterable[Sequence[str]]) -> list[ColumnNote]:
    """SQLite's side table holds one ``(key, value)`` row per text value of ``metadata``."""
    data = msgspec.json.decode(metadata) if metadata is not None else None
    want = (
        {(k, v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else set()
    )
    have = {(str(k), str(v)) for k, v in pairs}
    if have == want:
        return []
    parts = []
    if have - want:
        parts.append(f"holds {_pairs(have - want)}, which the record's metadata does not")
    if want - have:
        parts.append(f"lacks {_pairs(want - have)}")
    return [ColumnNote(MISMATCH, METADATA_TABLE, f"{METADATA_TABLE} {'; '.join(parts)}")]


def _pairs(pairs: set[tuple[str, str]]) -> str:
    return _cut(", ".join(f"{k}={v}" for k, v in sorted(pairs)))


def _shown(value: Any) -> str:
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _iso(ms: int) -> str:
    try:
        when = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):  # no date: say the number
        return f"{ms} ms"
    return when.isoformat(timespec="milliseconds")


def _select(present: Iterable[str]) -> str:
    """The columns verify reads; an API column a store made before it existed reads NULL."""
    have = set(present)
    api = [name if name in have else f"NULL AS {name}" for name in API_COLUMNS]
    return ", ".join([SELECT_COLUMNS, *api])


def _add(verifier: Verifier, location: str, entry: TrailRow) -> None:
    verifier.add(location, entry.record, entry.notes)


# -- readers ------------------------------------------------------------------------------------

_PAIRS_SQL: Final = (
    f"(SELECT json_group_array(json_array(m.key, m.value)) FROM {METADATA_TABLE} AS m "
    "WHERE m.request_id = c.request_id) AS _metadata_pairs"
)
_ORPHANS_SQL: Final = (
    f"SELECT m.request_id, count(*) FROM {METADATA_TABLE} AS m WHERE NOT EXISTS "
    f"(SELECT 1 FROM {TABLE} AS c WHERE c.request_id = m.request_id) "
    "GROUP BY m.request_id ORDER BY m.request_id"
)


def read_sqlite(verifier: Verifier, path: str) -> None:
    """Feed every row of the SQLite store at ``path`` to ``verifier`` (read-only), checked
    against its record, then the side table's rows of requests the table does not hold."""
    if not Path(path).is_file():
        raise SourceError(f"no SQLite database at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            _read_sqlite(verifier, conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def _read_sqlite(verifier: Verifier, conn: sqlite3.Connection) -> None:
    present = [r["name"] for r in conn.execute(f"PRAGMA table_info({TABLE})")]
    side = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (METADATA_TABLE,)
    ).fetchone()
    pairs = _PAIRS_SQL if side is not None else "NULL AS _metadata_pairs"
    query = f"SELECT {_select(present)}, c.rowid AS _rowid, {pairs} FROM {TABLE} AS c"
    taken: list[tuple[str, TrailRow]] = []
    for row in conn.execute(query):
        raw = row["_metadata_pairs"]
        entry = trail_row(row, json.loads(raw) if raw is not None else None)
        location = f"rowid {row['_rowid']}"
        if entry.taken_id is None:
            _add(verifier, location, entry)
        else:
            taken.append((location, entry))
    for location, entry in taken:
        held = conn.execute(
            f"SELECT request_id FROM {TABLE} WHERE response_id = ?", (entry.taken_id,)
        ).fetchone()
        taken_note(entry, None if held is None else held[0])
        _add(verifier, location, entry)
    if side is not None:
        for request_id, count in conn.execute(_ORPHANS_SQL):
            detail = f"{count} {METADATA_TABLE} row(s) of a request the table does not hold"
            verifier.add(f"{METADATA_TABLE} request_id {request_id}", detail)


async def read_postgres(verifier: Verifier, url: str) -> None:
    """Feed every row of the PostgreSQL store at ``url`` to ``verifier`` (a read-only
    transaction), each checked against its record."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SourceError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from exc
    try:
        async with conn.transaction(readonly=True):
            await _read_postgres(verifier, conn)
    except asyncpg.PostgresError as exc:
        raise SourceError(f"cannot read PostgreSQL: {type(exc).__name__}: {exc}") from exc
    finally:
        await conn.close()


async def _read_postgres(verifier: Verifier, conn: Any) -> None:
    present = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1",
        TABLE,
    )
    query = f"SELECT {_select(r[0] for r in present)} FROM {TABLE} ORDER BY writer, seq"
    taken: list[tuple[str, TrailRow]] = []
    async for row in conn.cursor(query, prefetch=500):
        entry = trail_row(row)
        location = f"request_id {row['request_id']}"
        if entry.taken_id is None:
            _add(verifier, location, entry)
        else:
            taken.append((location, entry))
    for location, entry in taken:
        held = await conn.fetchval(
            f"SELECT request_id FROM {TABLE} WHERE response_id = $1", entry.taken_id
        )
        taken_note(entry, held)
        _add(verifier, location, entry)
