"""The PostgreSQL :class:`~auditgate.store.queries.Store` (asyncpg pool).

:meth:`PostgresStore.open` connects once and migrates: a database that does not exist, a role
or password it refuses, a schema it will not let us create is a
:class:`~auditgate.errors.ConfigError` (the gateway, ``export`` and ``stats`` stop with that one
line); a server that does not answer is not, so a gateway starts while its database is still
down, and until it answers every call raises :class:`~auditgate.errors.ServiceUnavailableError`
(503), as it does should the server go away later.  The URL may hold a password: reprs and messages
show it redacted.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg

from auditgate.errors import ConfigError, ServiceUnavailableError
from auditgate.store import postgres as db
from auditgate.store import rollups
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

log = logging.getLogger("auditgate.store")

_COLUMNS: Final = SELECT_COLUMNS + ", deleted_at, recorded_metadata, metadata_updated_at"


METADATA_PAGE_SETTING: Final = "SET LOCAL enable_sort = off"
"""In the transaction of a metadata page: the plan walks the side table's partitions in page
order and stops after the page (:func:`~auditgate.store.queries.page_sql`), never reads every
match to sort them.  The planner picks that walk by its estimate of the matches, and a generic
plan estimates a value's matches from the number of distinct values, so with many distinct values
(user ids, say) it would sort for every value, also for one a third of the rows hold."""


async def fetch_page(conn: Any, where: Filter, statement: str, params: list[Any]) -> list[Any]:
    """The rows of a page statement; a metadata page under :data:`METADATA_PAGE_SETTING`."""
    if not where.metadata:
        return list(await conn.fetch(statement, *params))
    async with conn.transaction():
        await conn.execute(METADATA_PAGE_SETTING)
        return list(await conn.fetch(statement, *params))


class PostgresStore:
    """Stored completions in PostgreSQL (see the module docstring)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0, max_size: int = 4) -> None:
        db.check_dsn(dsn)
        self._dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.max_size = max_size
        self._pool: Any = None
        self._ready = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore(dsn={db.redact_dsn(self._dsn)!r})"

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self.max_size,
                timeout=self.connect_timeout_s,
            )
        except (ValueError, TypeError) as exc:
            message = db.hide_password(str(exc), self._dsn)
            raise ConfigError(f"PostgreSQL store {db.redact_dsn(self._dsn)!r}: {message}") from None
        try:
            async with self._pool.acquire() as conn:
                await self._ensure_ready(conn)
        except db.UNREACHABLE as exc:
            log.warning("%s (calls answer 503 until it is back)", _unavailable(self, exc))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # no such database, ...
            await self.close()
            message = db.hide_password(f"{type(exc).__name__}: {exc}", self._dsn)
            raise ConfigError(f"PostgreSQL store {db.redact_dsn(self._dsn)!r}: {message}") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def list(self, where: Filter, *, after: str | None, limit: int, order: Order) -> Page:
        async with self._connection() as conn:
            cursor: tuple[int, str] | None = None
            if after is not None:
                sql = Sql("postgres")
                found = await conn.fetchrow(cursor_sql(sql, after, where.tenant), *sql.params)
                if found is None:
                    raise CursorNotFound(after)
                cursor = (found[0], found[1])
            sql = Sql("postgres")
            statement = page_sql(
                sql, SELECT_COLUMNS, where, cursor=cursor, limit=limit + 1, order=order
            )
            rows = await fetch_page(conn, where, statement, sql.params)
        return Page([Stored.of(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def get(self, response_id: str, tenant: str | None) -> Stored | None:
        async with self._connection() as conn:
            return await self._get(conn, response_id, tenant)

    async def messages(self, response_id: str, tenant: str | None) -> builtins.list[Any] | None:
        return messages_of(await self.get(response_id, tenant))

    async def update_metadata(
        self, response_id: str, tenant: str | None, metadata: dict[str, str]
    ) -> Stored | None:
        async with self._connection() as conn, conn.transaction():
            sql = Sql("postgres")
            row = await conn.fetchrow(
                "SELECT request_id, created_at, metadata, originals, recorded_metadata "
                f"FROM {TABLE} WHERE {sql.visible(response_id, tenant)} FOR UPDATE",
                *sql.params,
            )
            if row is None:
                return None
            await conn.execute(
                f"UPDATE {TABLE} SET metadata = $1::jsonb, originals = $2, recorded_metadata = $3, "
                "metadata_updated_at = $4 WHERE created_at = $5 AND request_id = $6",
                *metadata_update(row, metadata),
                row["created_at"],
                row["request_id"],
            )
            return await self._get(conn, response_id, tenant)

    async def delete(self, response_id: str, tenant: str | None) -> bool:
        sql = Sql("postgres")
        now = sql.param(int(time.time() * 1000))
        condition = sql.visible(response_id, tenant)
        async with self._connection() as conn, conn.transaction():
            deleted = await conn.fetch(
                f"UPDATE {TABLE} SET deleted_at = {now} WHERE {condition} "
                f"RETURNING {rollups.SOURCE_SQL}",
                *sql.params,
            )
            await db.apply_rollups(conn, rollups.deletion(deleted))
        return bool(deleted)

    async def scan(self, where: Filter, *, chunk: int = SCAN_CHUNK) -> AsyncIterator[Any]:
        cursor: tuple[int, str] | None = None
        while True:
            sql = Sql("postgres")
            statement = page_sql(sql, _COLUMNS, where, cursor=cursor, limit=chunk, order="asc")
            async with self._connection() as conn:
                rows = await fetch_page(conn, where, statement, sql.params)
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
            "postgres",
            by,
            since_ms=since_ms,
            until_ms=until_ms,
            endpoint=endpoint,
            include_deleted=include_deleted,
        )
        async with self._connection() as conn:
            return rollups.slices(
                by, await conn.fetch(totals, *params), await conn.fetch(latency, *params)
            )

    async def index_text(self) -> int:
        async with self._connection() as conn:
            return await db.index_text(conn)

    async def text_index_lag(self) -> IndexLag:
        async with self._connection() as conn:
            pending, more = await db.text_index_lag(conn, limit=LAG_COUNT_LIMIT)
        return IndexLag(pending, more)

    async def usage(self, where: Filter, bucket_ms: int) -> Usage:
        latencies = []
        async with self._connection() as conn:
            sql = Sql("postgres")
            totals = await conn.fetch(totals_sql(sql, where, bucket_ms), *sql.params)
            every = sample_every(totals)
            for column in ("duration_ms", "ttft_ms"):
                sql = Sql("postgres")
                statement = latency_sql(sql, where, bucket_ms, column, every)
                latencies.append(await conn.fetch(statement, *sql.params))
        return usage_of(bucket_ms, totals, latencies[0], latencies[1], every)

    async def usage_rollups(self, where: Filter, bucket_ms: int) -> Usage:
        statements = rollup_statements("postgres", where, bucket_ms)
        results = []
        async with self._connection() as conn:
            for kind, sql, params in statements:
                results.append((kind, await conn.fetch(sql, *params)))
        return usage_of_rollups(bucket_ms, results)

    async def _get(self, conn: Any, response_id: str, tenant: str | None) -> Stored | None:
        sql = Sql("postgres")
        row = await conn.fetchrow(
            f"SELECT {SELECT_COLUMNS} FROM {TABLE} WHERE {sql.visible(response_id, tenant)}",
            *sql.params,
        )
        return None if row is None else Stored.of(row)

    def _connection(self) -> _Connection:
        if self._pool is None:
            raise ConfigError("PostgreSQL store is not open")
        return _Connection(self)

    async def _ensure_ready(self, conn: Any) -> None:
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await db.migrate(conn)
                self._ready = True


class _Connection:
    """``async with``: a pooled connection on a migrated schema; "down" errors become 503."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        try:
            self._conn = await self._store._pool.acquire()
            await self._store._ensure_ready(self._conn)
        except db.UNREACHABLE as exc:
            await self._release()
            raise _unavailable(self._store, exc) from None
        return self._conn

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        await self._release()
        if isinstance(exc, db.UNREACHABLE):
            raise _unavailable(self._store, exc) from None

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._store._pool.release(conn)


def _unavailable(store: PostgresStore, exc: BaseException) -> ServiceUnavailableError:
    message = db.hide_password(str(exc) or type(exc).__name__, store._dsn)
    return ServiceUnavailableError(f"The completions store is unavailable: {message}")
