"""The SQLite store: connections, migrations and idempotent batch inserts (stdlib ``sqlite3``).

Blocking functions: call them from one thread that owns the connection (the sink does, off the
event loop).  A connection from :func:`connect` is in autocommit mode; every function here opens
its own ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock up front, so concurrent
writers (another process migrating or inserting) wait up to the busy timeout instead of failing
half-way.

:func:`insert_rows` is the only writer of new rows: besides the table it fills the metadata side
table (:data:`~auditgate.store.schema.METADATA_TABLE`), which no insert trigger keeps any more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

from auditgate.store import rollups
from auditgate.store.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE_SQL,
    TEXT_STATE_TABLE,
    TEXT_TABLE,
    sqlite_text_of,
)
from auditgate.store.schema import (
    COLUMN_NAMES,
    METADATA_TABLE,
    MIGRATIONS_TABLE,
    TABLE,
    Row,
    with_own_response_id,
)

log = logging.getLogger("auditgate.store")
_T = TypeVar("_T")

INSERT_SQL: Final = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMN_NAMES)}) "
    f"VALUES ({', '.join('?' for _ in COLUMN_NAMES)}) ON CONFLICT DO NOTHING"
)
_METADATA: Final = COLUMN_NAMES.index("metadata")
_UPSERT_TOTALS: Final = rollups.upsert_totals_sql("sqlite")
_UPSERT_LATENCY: Final = rollups.upsert_latency_sql("sqlite")
_UPSERT_TENANT_LATENCY: Final = rollups.upsert_tenant_latency_sql("sqlite")
_NO_METADATA: Final = "{}"
"""The ``metadata`` column of a row without metadata (the common case)."""
METADATA_ROWS_SQL: Final = (
    f"INSERT OR IGNORE INTO {METADATA_TABLE} (request_id, key, value, created_at) "
    f"SELECT c.request_id, j.key, j.value, c.created_at FROM {TABLE} AS c, "
    "json_each(c.metadata) AS j WHERE c.request_id = ? AND j.type = 'text'"
)
"""The side-table rows of one stored row, derived from what is stored (not from the batch), so a
replayed record whose metadata the API has replaced since does not bring its old pairs back."""

PAGE_SIZE: Final = 4096
"""Page size of a new database file (existing files keep theirs; README says how to convert).
A record over ~4 KiB then spills into overflow pages that SQLite fills completely, so a row costs
about its own size; at 8 KiB pages such a row took a page alone, half of it empty (8.2 KB on disk
per 4.7 KB record).  Records under ~2 KiB share pages at either size."""
CACHE_KIB: Final = 32768
"""Page cache per connection (KiB): holds a 512-record batch and the hot index pages, which
SQLite's 2 MiB default evicts within every batch."""
WAL_AUTOCHECKPOINT_PAGES: Final = 4096
"""Checkpoint when the WAL passes this many pages (32 MiB at 8 KiB pages) instead of SQLite's
1000: a checkpoint (two fsyncs, and index pages written back once however many batches touched
them) after every few batches rather than after each one."""


def connect(
    path: str | Path, *, busy_timeout_s: float = 30.0, synchronous: str = "NORMAL"
) -> sqlite3.Connection:
    """Open ``path`` (created with its parent directory if missing) for the store.

    WAL mode (readers never block the writer), ``synchronous=NORMAL`` (a commit survives a crash
    of the process; on power failure the commits since the last checkpoint, at most
    :data:`WAL_AUTOCHECKPOINT_PAGES` pages of WAL, may be lost), autocommit mode with explicit
    transactions, rows as :class:`sqlite3.Row` (so :func:`~auditgate.store.schema.record_from_row`
    can read them).  A new file gets :data:`PAGE_SIZE` pages; the connection a cache of
    :data:`CACHE_KIB`.  Does not migrate: call :func:`migrate`.  ``synchronous="FULL"`` makes
    every commit survive a power failure too (the sink uses it in durable mode, where a commit
    lets the spool forget the record).
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
    target = Path(path)
    if str(path) != ":memory:":
        target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None)
    try:
        # Before anything writes the file: a no-op on an existing database.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        _enable_wal(conn, busy_timeout_s)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def _enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    # Two connections switching one new file to WAL at once: SQLite answers the loser "database
    # is locked" at once, without its busy handler, so wait for the winner here.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


TEXT_BATCH: Final = 2000
"""Rows indexed per transaction by :func:`index_text` (the sink's writes wait at most one)."""


def index_text(
    conn: sqlite3.Connection, *, batch: int = TEXT_BATCH, batches: int | None = None
) -> int:
    """Add every row not yet in the full-text index to it (at most ``batches`` batches);
    returns how many were added.

    The index (:data:`~auditgate.store.migrations.TEXT_TABLE`) holds the string values of a
    row's request and response; bodies never change, so the rows after the last indexed
    ``rowid`` are exactly the missing ones.  One short transaction per ``batch`` rows.
    """
    added = 0
    for _ in itertools.count() if batches is None else range(batches):
        with write_transaction(conn):
            last = conn.execute(f"SELECT last_rowid FROM {TEXT_STATE_TABLE}").fetchone()[0]
            upto = conn.execute(
                f"SELECT max(rowid) FROM (SELECT rowid FROM {TABLE} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?)",
                (last, batch),
            ).fetchone()[0]
            if upto is None:
                return added
            added += conn.execute(
                f"INSERT INTO {TEXT_TABLE} (rowid, body) SELECT rowid, {sqlite_text_of('')} "
                f"FROM {TABLE} "
                "WHERE rowid > ? AND rowid <= ?",
                (last, upto),
            ).rowcount
            conn.execute(f"UPDATE {TEXT_STATE_TABLE} SET last_rowid = ?", (upto,))
    return added


def text_index_lag(conn: sqlite3.Connection, *, limit: int) -> tuple[int, bool, int | None]:
    """``(rows not yet indexed (at most limit), whether more are, created_at of the last
    indexed row)``.  The count is the span of rowids above the last indexed one (two probes of
    the table's key): exact unless some of those rows were deleted since.  Counting the rows
    instead would read each (the table's key holds whole rows): seconds for a bulk load."""
    last = conn.execute(f"SELECT last_rowid FROM {TEXT_STATE_TABLE}").fetchone()[0]
    newest = conn.execute(f"SELECT max(rowid) FROM {TABLE}").fetchone()[0]
    pending = max((newest or 0) - last, 0)
    until = conn.execute(f"SELECT created_at FROM {TABLE} WHERE rowid = ?", (last,)).fetchone()
    return min(pending, limit), pending > limit, None if until is None else until[0]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now (often none).

    One ``BEGIN IMMEDIATE`` transaction: a concurrent migrator waits for it, then sees the
    migrations recorded and applies nothing.
    """
    applied: list[str] = []
    with write_transaction(conn):
        conn.execute(MIGRATIONS_TABLE_SQL["sqlite"])
        done = {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for migration in MIGRATIONS:
            if migration.name in done:
                continue
            migration.sqlite(conn)
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                (migration.name, int(time.time() * 1000)),
            )
            applied.append(migration.name)
    if applied:
        log.info("sqlite store: applied migrations %s", ", ".join(applied))
    return applied


def insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> int:
    """Store ``rows`` in one transaction; returns how many were new.

    Idempotent on ``request_id``: a row already stored (a replay) is skipped.  A row whose
    ``response_id`` is already taken by another request is stored under its own id instead
    (:func:`~auditgate.store.schema.with_own_response_id`) and logged.  Rows with metadata get
    their metadata side-table rows in the same transaction; rows without cost nothing more.
    """
    if not rows:
        return 0
    with write_transaction(conn):
        # The rows not stored before (in this transaction, which holds the write lock) are the
        # ones this batch inserts: only they count in the rollups, so a replay adds nothing.
        unique_rows = {row[0]: row for row in rows}
        before = _present(conn, list(unique_rows))
        inserted = conn.executemany(INSERT_SQL, rows).rowcount
        if inserted < len(rows):
            inserted += _insert_clashes(conn, rows)
        tagged = [(row[0],) for row in rows if row[_METADATA] != _NO_METADATA]
        if tagged:
            conn.executemany(METADATA_ROWS_SQL, tagged)
        delta = rollups.Delta()
        delta.add_rows(row for rid, row in unique_rows.items() if rid not in before)
        apply_rollups(conn, delta)
    return inserted


def apply_rollups(conn: sqlite3.Connection, delta: rollups.Delta) -> None:
    """Add ``delta`` to the rollups, inside the caller's write transaction."""
    if delta.totals:
        conn.executemany(_UPSERT_TOTALS, delta.totals_rows())
    if delta.latency:
        conn.executemany(_UPSERT_LATENCY, delta.latency_rows())
        tenant_rows = delta.tenant_latency_rows()
        if tenant_rows:
            conn.executemany(_UPSERT_TENANT_LATENCY, tenant_rows)


def _present(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    present: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        present.update(
            r[0]
            for r in conn.execute(
                f"SELECT request_id FROM {TABLE} WHERE request_id IN ({marks})", chunk
            )
        )
    return present


def _insert_clashes(conn: sqlite3.Connection, rows: Sequence[Row]) -> int:
    present = _present(conn, list(dict.fromkeys(row[0] for row in rows)))
    unique_rows = {row[0]: row for row in rows}
    clashes = [with_own_response_id(r) for rid, r in unique_rows.items() if rid not in present]
    if not clashes:
        return 0
    for row in clashes:
        log.warning(
            "sqlite store: response id of request %s is already stored for another request; "
            "stored as %s",
            row[0],
            row[1],
        )
    inserted = conn.executemany(INSERT_SQL, clashes).rowcount
    if inserted != len(clashes):
        raise sqlite3.IntegrityError("a response id clash could not be resolved")
    return inserted


class SqliteThread:
    """One SQLite connection that lives on one dedicated thread; every use of it runs there.

    ``sqlite3`` connections must stay on the thread that made them, and queries must not block
    the event loop: the sink and the stored-completions reader both hold their connection this
    way.  ``closed_error`` is what :meth:`call` raises before :meth:`open` or after
    :meth:`close`.
    """

    def __init__(self, thread_name: str, closed_error: Callable[[], Exception]) -> None:
        self._thread_name = thread_name
        self._closed_error = closed_error
        self._executor: ThreadPoolExecutor | None = None
        self.conn: sqlite3.Connection | None = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread and run ``connect`` there; on failure nothing is left running."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
        try:
            self.conn = await self.call(connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection's thread."""
        if self._executor is None:
            raise self._closed_error()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        """Close the connection on its thread, then stop the thread; idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            if self.conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, self.conn.close)
        finally:
            self.conn = None
            executor.shutdown(wait=True)
