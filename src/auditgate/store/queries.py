"""Reading the store: the :class:`Store` protocol, filters, and the SQL both databases share.

The stored-completions API, ``auditgate export`` and ``auditgate stats`` read through a
:class:`Store` built by :func:`~auditgate.store.url.open_store` from a URL:

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling), or a
  bare file path: :class:`~auditgate.store.sqlite_reader.SqliteStore`.
- ``postgresql://...`` / ``postgres://...``:
  :class:`~auditgate.store.postgres_reader.PostgresStore` (needs the ``postgres`` extra).

Order: every read walks rows by ``(created_at, request_id)``, a total order the table indexes, so
a page cursor (``after``) stays valid while new rows arrive and an export is deterministic.
Visibility: ``tenant=None`` sees every row (open mode, admin keys); a tenant sees only its rows.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from auditgate.errors import ConfigError
from auditgate.store.migrations import TEXT_TABLE
from auditgate.store.rollups import Slice
from auditgate.store.schema import METADATA_TABLE, TABLE, RowLike, record_dict_from_row

if TYPE_CHECKING:
    from auditgate.store.usage import Usage

Order = Literal["asc", "desc"]
Dialect = Literal["sqlite", "postgres"]

UNLISTED_ENDPOINTS: Final = ("completions", "embeddings")
"""Record endpoints that no stored-object API serves (see :meth:`Sql.visible`)."""

SCAN_CHUNK: Final = 500
"""Rows fetched per round trip by :meth:`Store.scan` (memory stays bounded by it)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """Which rows a read sees; every condition set is ANDed."""

    tenant: str | None = None
    """Only this tenant's rows; ``None``: every tenant's."""
    model: str | None = None
    """Only this model."""
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Only rows whose metadata holds every one of these pairs."""
    since_ms: int | None = None
    """Only rows with ``created_at >= since_ms`` (Unix ms)."""
    until_ms: int | None = None
    """Only rows with ``created_at < until_ms`` (Unix ms)."""
    status: str | None = None
    """Only this status (``completed``, ``cancelled``, ``error``)."""
    endpoint: str | None = None
    """Only this record ``endpoint`` (``chat.completions``, ``completions``, ...)."""
    stored_only: bool = True
    """Only what the stored-completions API lists: ``mode='full'`` rows with a response."""
    live_only: bool = True
    """Leave out rows the API deleted (``deleted_at`` set)."""
    requests_only: bool = False
    """Leave out integrity checkpoints (``mode='checkpoint'``): they seal a chain, they are not
    requests."""
    mode: str | None = None
    """Only this mode (``full``, ``usage_only``, ``checkpoint``)."""
    text: str | None = None
    """Only rows whose request or response bodies hold every word of this text (the database's
    own full-text search: SQLite FTS5, PostgreSQL ``tsvector``; whole words, case-folded), among
    the rows indexed so far (:meth:`Store.text_index_lag`)."""
    request_id: str | None = None
    """Only the row with this request id."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """One stored record and the id the API knows it by."""

    response_id: str
    """The row's ``response_id`` (the completion id clients use)."""
    record: dict[str, Any]
    """The record as a JSON object (:func:`~auditgate.store.schema.record_dict_from_row`)."""

    @classmethod
    def of(cls, row: RowLike) -> Stored:
        """The stored record of a row holding at least ``SELECT_COLUMNS``."""
        return cls(row["response_id"], record_dict_from_row(row))


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of stored records, in the requested order."""

    records: list[Stored]
    """The page's records."""
    has_more: bool
    """Whether rows follow the last one."""


LAG_COUNT_LIMIT: Final = 100_000
""":meth:`Store.text_index_lag` counts at most this many unindexed rows (then says "more")."""


@dataclasses.dataclass(frozen=True, slots=True)
class IndexLag:
    """How far the full-text index is behind the table (:meth:`Store.text_index_lag`)."""

    pending: int
    """Rows stored but not yet in the index (at most :data:`LAG_COUNT_LIMIT`)."""
    more: bool = False
    """More than :attr:`pending` rows are waiting (the count stopped there)."""
    indexed_until_ms: int | None = None
    """SQLite: ``created_at`` of the last row indexed (rows are indexed in the order they were
    stored); ``None`` where the store cannot tell (PostgreSQL indexes a queue in no order)."""


class CursorNotFound(LookupError):
    """``after`` names no row visible to the caller."""


class Store(Protocol):
    """Read (and tag/delete) access to stored completions; see the module docstring.

    ``tenant`` arguments scope the call as :attr:`Filter.tenant` does; a row outside the scope
    behaves as if absent.
    """

    async def open(self) -> None:
        """Connect (and migrate, so a fresh store reads as empty); raises ConfigError."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def list(self, where: Filter, *, after: str | None, limit: int, order: Order) -> Page:
        """Up to ``limit`` records after the row whose response id is ``after``.

        Raises :class:`CursorNotFound` when ``after`` is not a row visible to ``where.tenant``.
        """

    async def get(self, response_id: str, tenant: str | None) -> Stored | None:
        """The stored (``full``, live) record with this response id, or ``None``."""

    async def messages(self, response_id: str, tenant: str | None) -> builtins.list[Any] | None:
        """The request messages of that record, or ``None`` when it is not visible."""

    async def update_metadata(
        self, response_id: str, tenant: str | None, metadata: dict[str, str]
    ) -> Stored | None:
        """Replace the record's metadata; the updated record, or ``None`` when not visible."""

    async def delete(self, response_id: str, tenant: str | None) -> bool:
        """Tombstone the record (``deleted_at``); whether a visible record was deleted."""

    def scan(self, where: Filter, *, chunk: int = SCAN_CHUNK) -> AsyncIterator[RowLike]:
        """Every matching row (all columns) in ``(created_at, request_id)`` order, fetched
        ``chunk`` rows at a time, so memory does not grow with the table."""

    async def rollups(
        self,
        by: str,
        since_ms: int | None,
        until_ms: int | None,
        *,
        endpoint: str | None = None,
        include_deleted: bool,
    ) -> builtins.list[Slice]:
        """The usage rollups (:mod:`auditgate.store.rollups`), summed per group ``by`` (model,
        tenant, endpoint or day), of the hours in
        ``[since_ms, until_ms)``, which must be hour-aligned (``None``: unbounded), of
        ``endpoint`` (``None``: every endpoint)."""

    async def usage(self, where: Filter, bucket_ms: int) -> Usage:
        """Requests, tokens and latency of the matching rows per ``bucket_ms`` of time
        (:mod:`auditgate.store.usage`), aggregated in the database."""

    async def usage_rollups(self, where: Filter, bucket_ms: int) -> Usage:
        """:meth:`usage` read from the hourly rollups (plus the records of a partial hour at
        either end of the window), in milliseconds at any store size; ``where`` and
        ``bucket_ms`` must satisfy :func:`auditgate.store.usage.rollups_answer`.  Counts and
        tokens equal :meth:`usage`'s; percentiles are latency buckets' upper bounds."""

    async def index_text(self) -> int:
        """Add the rows stored since the last call to the full-text index; how many were
        added.  A search does not call it: it answers with what the index holds (see
        :meth:`text_index_lag`), and the console's background task keeps the index up."""

    async def text_index_lag(self) -> IndexLag:
        """How many stored rows a search cannot find yet (milliseconds: never a scan of the
        table)."""


def messages_of(stored: Stored | None) -> list[Any] | None:
    """The request messages of a stored record (``[]`` when the request held none)."""
    if stored is None:
        return None
    request = stored.record.get("request")
    messages = request.get("messages") if isinstance(request, dict) else None
    return list(messages) if isinstance(messages, list) else []


class Sql:
    """Builds one statement's WHERE clause and its parameters for a dialect."""

    def __init__(self, dialect: Dialect, *, walk_time: bool = False) -> None:
        self.dialect = dialect
        self.params: list[Any] = []
        self.walk_time = walk_time
        """SQLite search: walk rows in time order testing each against the matches (``+rowid``
        keeps SQLite from looking the matches up one by one and sorting them all), the faster
        plan for a page of a search that matches many rows (:func:`text_match`)."""

    def param(self, value: Any) -> str:
        """A placeholder bound to ``value``."""
        self.params.append(value)
        return "?" if self.dialect == "sqlite" else f"${len(self.params)}"

    def where(self, where: Filter) -> list[str]:
        """The conditions of ``where`` (to AND together)."""
        clauses: list[str] = []
        if where.stored_only:
            clauses.append("mode = 'full' AND response IS NOT NULL")
        if where.live_only:
            clauses.append("deleted_at IS NULL")
        if where.requests_only:
            clauses.append("mode <> 'checkpoint'")
        if where.tenant is not None:
            clauses.append(f"tenant = {self.param(where.tenant)}")
        if where.model is not None:
            clauses.append(f"model = {self.param(where.model)}")
        if where.status is not None:
            clauses.append(f"status = {self.param(where.status)}")
        if where.endpoint is not None:
            clauses.append(f"endpoint = {self.param(where.endpoint)}")
        if where.mode is not None:
            clauses.append(f"mode = {self.param(where.mode)}")
        if where.request_id is not None:
            clauses.append(f"request_id = {self.param(where.request_id)}")
        words = text_words(where.text)
        if words and self.dialect == "sqlite":
            # Each word a quoted FTS5 phrase: the user's text is never FTS5 query syntax.
            rowid = "+rowid" if self.walk_time else "rowid"
            clauses.append(
                f"{rowid} IN (SELECT rowid FROM {TEXT_TABLE} WHERE {TEXT_TABLE} "
                f"MATCH {self.param(text_match(words))})"
            )
        elif words:
            query = " ".join(words)
            clauses.append(
                f"request_id IN (SELECT request_id FROM {TEXT_TABLE} "
                f"WHERE words @@ plainto_tsquery('simple', {self.param(query)}))"
            )
        if where.since_ms is not None:
            clauses.append(f"created_at >= {self.param(where.since_ms)}")
        if where.until_ms is not None:
            clauses.append(f"created_at < {self.param(where.until_ms)}")
        for key, value in where.metadata.items():
            if self.dialect == "sqlite":
                # One probe of the side table's key per row: no JSON scan, no list of matches.
                clauses.append(
                    f"EXISTS (SELECT 1 FROM {METADATA_TABLE} AS p WHERE p.key = "
                    f"{self.param(key)} AND p.value = {self.param(value)} "
                    f"AND p.created_at = {TABLE}.created_at AND p.request_id = {TABLE}.request_id)"
                )
            else:
                clauses.append(f"metadata @> {self.param(json.dumps({key: value}))}::jsonb")
        return clauses

    def visible(self, response_id: str, tenant: str | None) -> str:
        """WHERE clause of the one stored, live record the API may touch.  Legacy completions
        and embeddings are stored records too, but no API reads them back (OpenAI has none):
        their ids are unknown ids here."""
        clauses = self.where(Filter(tenant=tenant))
        clauses.append(f"endpoint NOT IN ({', '.join(map(repr, UNLISTED_ENDPOINTS))})")
        clauses.append(f"response_id = {self.param(response_id)}")
        return " AND ".join(clauses)


def text_words(text: str | None) -> list[str]:
    """The words of a full-text search (:attr:`Filter.text`); none for ``None`` or blanks."""
    return text.split() if text else []


def text_match(words: list[str]) -> str:
    """The FTS5 query of ``words``: each a quoted phrase, so the user's text is never FTS5
    query syntax."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def page_sql(
    sql: Sql,
    columns: str,
    where: Filter,
    *,
    cursor: tuple[int, str] | None,
    limit: int,
    order: Order,
) -> str:
    """``SELECT columns`` of the ``limit`` rows after ``cursor`` in ``order``."""
    if where.metadata:
        return _metadata_page_sql(sql, columns, where, cursor=cursor, limit=limit, order=order)
    clauses = sql.where(where)
    if cursor is not None:
        op = ">" if order == "asc" else "<"
        clauses.append(
            f"(created_at, request_id) {op} ({sql.param(cursor[0])}, {sql.param(cursor[1])})"
        )
    direction = "ASC" if order == "asc" else "DESC"
    condition = " AND ".join(clauses) or "TRUE"
    return (
        f"SELECT {columns} FROM {TABLE} WHERE {condition} "
        f"ORDER BY created_at {direction}, request_id {direction} LIMIT {_limit(limit)}"
    )


def _limit(limit: int) -> str:
    # A literal, not a parameter: PostgreSQL costs a generic plan with an unknown LIMIT as if it
    # read a tenth of the table, so a prepared page query was planned anew at every call (over
    # every day partition: ~10 ms) instead of reusing its generic plan after five calls.
    return str(int(limit))


def _metadata_page_sql(
    sql: Sql,
    columns: str,
    where: Filter,
    *,
    cursor: tuple[int, str] | None,
    limit: int,
    order: Order,
) -> str:
    # Driven by the side table (SQLite: m008, PostgreSQL: m014): its key (key, value,
    # created_at, request_id) yields one pair's rows already in page order, so the walk stops
    # after the page however many rows match, and a value no row holds costs one index probe.
    # The side table's columns are renamed in the subquery so the outer clauses stay the same;
    # the join names both key columns, so PostgreSQL probes one partition per row.
    (key, value), *rest = where.metadata.items()
    inner = [f"key = {sql.param(key)}", f"value = {sql.param(value)}"]
    if cursor is not None:
        op = ">" if order == "asc" else "<"
        inner.append(
            f"(created_at, request_id) {op} ({sql.param(cursor[0])}, {sql.param(cursor[1])})"
        )
    clauses = sql.where(dataclasses.replace(where, metadata=dict(rest)))
    clauses.append(f"{TABLE}.created_at = m.m_created_at")
    clauses.append(f"{TABLE}.request_id = m.m_request_id")
    direction = "ASC" if order == "asc" else "DESC"
    pairs = (
        f"(SELECT request_id AS m_request_id, created_at AS m_created_at FROM {METADATA_TABLE} "
        f"WHERE {' AND '.join(inner)}) AS m"
    )
    order_by = (
        f"ORDER BY m.m_created_at {direction}, m.m_request_id {direction} LIMIT {_limit(limit)}"
    )
    if sql.dialect == "postgres":
        # A LATERAL subquery with its own LIMIT is never flattened into the join, so the side
        # table stays the outer loop: at 1M records the planner otherwise preferred walking the
        # whole table in time order and probing the side table (0.3-0.5 s a page).
        return (
            f"SELECT {columns} FROM {pairs} CROSS JOIN LATERAL (SELECT {columns} FROM {TABLE} "
            f"WHERE {' AND '.join(clauses)} LIMIT 1) AS c {order_by}"
        )
    return (
        f"SELECT {columns} FROM {pairs} CROSS JOIN {TABLE} WHERE {' AND '.join(clauses)} {order_by}"
    )


def cursor_sql(sql: Sql, response_id: str, tenant: str | None) -> str:
    """``SELECT created_at, request_id`` of the cursor row ``response_id``.

    Deleted rows still serve as cursors, so deleting the last row of a page does not break the
    walk of the next one.
    """
    clauses = [f"response_id = {sql.param(response_id)}"]
    if tenant is not None:
        clauses.append(f"tenant = {sql.param(tenant)}")
    return f"SELECT created_at, request_id FROM {TABLE} WHERE {' AND '.join(clauses)}"


def sqlite_path_of(url: str) -> str | None:
    """The file path of a SQLite store URL (or bare path); ``None`` for another scheme."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("sqlite:"):
        raise ConfigError(f"store URL {url!r}: expected sqlite:///relative or sqlite:////absolute")
    if "://" in url:
        return None
    return url
