"""The SQLite :class:`~auditgate.store.queries.Store` (stdlib ``sqlite3``).

One connection owned by one dedicated thread (a single-worker executor), so blocking calls never
run on the event loop and the connection is never shared between threads.  WAL mode: the reads
here never block the ``sqlite`` sink, which writes the same file from its own connection, and see
every batch it has committed.  Updates and deletes take the write lock up front
(``BEGIN IMMEDIATE``), waiting up to the busy timeout for the sink's transaction.
"""

from __future__ import annotations

import builtins
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from auditgate.errors import ConfigError
from auditgate.store import rollups
from auditgate.store import sqlite as db
from auditgate.store.migrations import TEXT_TABLE
from auditgate.store.queries import (
    LAG_COUNT_LIMIT,
    SCAN_CHUNK,
    CursorNotFound,
    Filter,
    IndexLag,
    Order,
    Page,
    Sql,
    Stored,
    cursor_sql,
    messages_of,
    page_sql,
    text_match,
    text_words,
)
from auditgate.store.schema import SELECT_COLUMNS, TABLE, metadata_update
from auditgate.store.usage import (
    Usage,
    latency_sql,
    rollup_statements,
    sample_every,
    totals_sql,
    usage_of,
    usage_of_rollups,
)

_T = TypeVar("_T")
WALK_TIME_MATCHES = 2000
"""A search matching more rows than this pages by walking time order (:meth:`SqliteStore._pager`):
each match looked up costs ~20 µs, each row walked ~0.6 µs, and a page needs 51 matches."""
_COLUMNS = SELECT_COLUMNS + ", deleted_at, recorded_metadata, metadata_updated_at"


class SqliteStore:
    """Stored completions in a SQLite file (see the module docstring)."""

    def __init__(self, path: str, *, must_exist: bool = False, busy_timeout_s: float = 30.0):
        self.path = path
        self.must_exist = must_exist
        self.busy_timeout_s = busy_timeout_s
        self._thread = db.SqliteThread(
            "auditgate-store", lambda: ConfigError("SQLite store is not open")
        )

    def __repr__(self) -> str:
        return f"SqliteStore(path={self.path!r})"

    async def open(self) -> None:
        try:
            await self._thread.open(self._open_sync)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"SQLite store {self.path!r}: cannot open: {exc}") from exc

    async def close(self) -> None:
        await self._thread.close()

    async def list(self, where: Filter, *, after: str | None, limit: int, order: Order) -> Page:
        return await self._call(lambda: self._list_sync(where, after, limit, order))

    async def get(self, response_id: str, tenant: str | None) -> Stored | None:
        return await self._call(lambda: self._get_sync(response_id, tenant))

    async def messages(self, response_id: str, tenant: str | None) -> builtins.list[Any] | None:
        return messages_of(await self.get(response_id, tenant))

    async def update_metadata(
        self, response_id: str, tenant: str | None, metadata: dict[str, str]
    ) -> Stored | None:
        return await self._call(lambda: self._update_sync(response_id, tenant, metadata))

    async def delete(self, response_id: str, tenant: str | None) -> bool:
        return await self._call(lambda: self._delete_sync(response_id, tenant))

    async def scan(self, where: Filter, *, chunk: int = SCAN_CHUNK) -> AsyncIterator[Any]:
        cursor: tuple[int, str] | None = None
        while True:
            rows = await self._call(functools.partial(self._chunk_sync, where, cursor, chunk))
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            cursor = (rows[-1]["created_at"], rows[-1]["request_id"])

    async def rollups(
        self,
        by: str,
        since_ms: int | None,
        until_ms: int | None,
        *,
        endpoint: str | None = None,
        include_deleted: bool,
    ) -> builtins.list[rollups.Slice]:
        totals, latency, params = rollups.read_sql(
            "sqlite",
            by,
            since_ms=since_ms,
            until_ms=until_ms,
            endpoint=endpoint,
            include_deleted=include_deleted,
        )

        def read() -> builtins.list[rollups.Slice]:
            conn = self._db()
            return rollups.slices(
                by,
                conn.execute(totals, params).fetchall(),
                conn.execute(latency, params).fetchall(),
            )

        return await self._call(read)

    async def index_text(self) -> int:
        # One batch per call on the store's thread: the pages' reads, queued on the same
        # thread, run between batches instead of after the whole backlog.
        added = 0
        while True:
            batch = await self._call(lambda: db.index_text(self._db(), batches=1))
            if not batch:
                return added
            added += batch

    async def text_index_lag(self) -> IndexLag:
        pending, more, until = await self._call(
            lambda: db.text_index_lag(self._db(), limit=LAG_COUNT_LIMIT)
        )
        return IndexLag(pending, more, until)

    async def usage(self, where: Filter, bucket_ms: int) -> Usage:
        return await self._call(lambda: self._usage_sync(where, bucket_ms))

    async def usage_rollups(self, where: Filter, bucket_ms: int) -> Usage:
        statements = rollup_statements("sqlite", where, bucket_ms)

        def read() -> Usage:
            conn = self._db()
            results = [
                (kind, conn.execute(sql, params).fetchall()) for kind, sql, params in statements
            ]
            return usage_of_rollups(bucket_ms, results)

        return await self._call(read)

    # -- on the store's thread ---------------------------------------------------------------

    def _pager(self, where: Filter) -> Sql:
        """The statement builder of a page: walking time order when the search matches many
        rows (see :attr:`Sql.walk_time`; 50 ms against 800 ms for a word in 4 % of a million
        rows, while a rare word's page stays a few ms)."""
        words = text_words(where.text)
        if not words:
            return Sql("sqlite")
        matches = (
            self._db()
            .execute(
                f"SELECT count(*) FROM {TEXT_TABLE} WHERE {TEXT_TABLE} MATCH ?",
                (text_match(words),),
            )
            .fetchone()[0]
        )
        return Sql("sqlite", walk_time=matches > WALK_TIME_MATCHES)

    def _usage_sync(self, where: Filter, bucket_ms: int) -> Usage:
        conn = self._db()
        sql = Sql("sqlite")
        totals = conn.execute(totals_sql(sql, where, bucket_ms), sql.params).fetchall()
        every = sample_every(totals)
        latencies = []
        for column in ("duration_ms", "ttft_ms"):
            sql = Sql("sqlite")
            statement = latency_sql(sql, where, bucket_ms, column, every)
            latencies.append(conn.execute(statement, sql.params).fetchall())
        return usage_of(bucket_ms, totals, latencies[0], latencies[1], every)

    def _open_sync(self) -> sqlite3.Connection:
        if self.must_exist and not Path(self.path).is_file():
            raise ConfigError(f"SQLite store {self.path!r} does not exist")
        conn = db.connect(self.path, busy_timeout_s=self.busy_timeout_s)
        try:
            db.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _db(self) -> sqlite3.Connection:
        conn = self._thread.conn
        if conn is None:
            raise ConfigError("SQLite store is not open")
        return conn

    def _list_sync(self, where: Filter, after: str | None, limit: int, order: Order) -> Page:
        conn = self._db()
        cursor: tuple[int, str] | None = None
        if after is not None:
            sql = Sql("sqlite")
            found = conn.execute(cursor_sql(sql, after, where.tenant), sql.params).fetchone()
            if found is None:
                raise CursorNotFound(after)
            cursor = (found[0], found[1])
        sql = self._pager(where)
        statement = page_sql(
            sql, SELECT_COLUMNS, where, cursor=cursor, limit=limit + 1, order=order
        )
        rows = conn.execute(statement, sql.params).fetchall()
        return Page([Stored.of(row) for row in rows[:limit]], has_more=len(rows) > limit)

    def _chunk_sync(
        self, where: Filter, cursor: tuple[int, str] | None, chunk: int
    ) -> builtins.list[Any]:
        sql = self._pager(where)
        statement = page_sql(sql, _COLUMNS, where, cursor=cursor, limit=chunk, order="asc")
        return self._db().execute(statement, sql.params).fetchall()

    def _get_sync(self, response_id: str, tenant: str | None) -> Stored | None:
        sql = Sql("sqlite")
        statement = f"SELECT {SELECT_COLUMNS} FROM {TABLE} WHERE {sql.visible(response_id, tenant)}"
        row = self._db().execute(statement, sql.params).fetchone()
        return None if row is None else Stored.of(row)

    def _update_sync(
        self, response_id: str, tenant: str | None, metadata: dict[str, str]
    ) -> Stored | None:
        conn = self._db()
        with db.write_transaction(conn):
            sql = Sql("sqlite")
            statement = (
                f"SELECT request_id, metadata, originals, recorded_metadata FROM {TABLE} "
                f"WHERE {sql.visible(response_id, tenant)}"
            )
            row = conn.execute(statement, sql.params).fetchone()
            if row is None:
                return None
            conn.execute(
                f"UPDATE {TABLE} SET metadata = ?, originals = ?, recorded_metadata = ?, "
                "metadata_updated_at = ? WHERE request_id = ?",
                (*metadata_update(row, metadata), row["request_id"]),
            )
        return self._get_sync(response_id, tenant)

    def _delete_sync(self, response_id: str, tenant: str | None) -> bool:
        conn = self._db()
        sql = Sql("sqlite")
        now = sql.param(int(time.time() * 1000))
        condition = sql.visible(response_id, tenant)
        with db.write_transaction(conn):
            deleted = conn.execute(
                f"UPDATE {TABLE} SET deleted_at = {now} WHERE {condition} "
                f"RETURNING {rollups.SOURCE_SQL}",
                sql.params,
            ).fetchall()
            db.apply_rollups(conn, rollups.deletion(deleted))
        return bool(deleted)

    async def _call(self, fn: Callable[[], _T]) -> _T:
        return await self._thread.call(fn)
