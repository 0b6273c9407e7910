"""The SQLite store: connections, migrations and idempotent batch inserts (stdlib ``sqlite3``).

Blocking functions: call them from one thread that owns the connection (the sink does, off the
event loop).  A connection from :func:`connect` is in autocommit mode; every function here opens
its own ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock up front, so concurrent
writers (another process migrating or inserting) wait up to the busy timeout instead of failing
half-way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from auditgate.store.migrations import MIGRATIONS, MIGRATIONS_TABLE_SQL
from auditgate.store.schema import (
    COLUMN_NAMES,
    MIGRATIONS_TABLE,
    TABLE,
    Row,
    with_own_response_id,
)

log = logging.getLogger("auditgate.store")

INSERT_SQL: Final = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMN_NAMES)}) "
    f"VALUES ({', '.join('?' for _ in COLUMN_NAMES)}) ON CONFLICT DO NOTHING"
)


def connect(path: str | Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open ``path`` (created with its parent directory if missing) for the store.

    WAL mode (readers never block the writer), ``synchronous=NORMAL`` (a commit survives a crash
    of the process; the last commits may be lost on power failure), autocommit mode with explicit
    transactions, rows as :class:`sqlite3.Row` (so :func:`~auditgate.store.schema.record_from_row`
    can read them).  Does not migrate: call :func:`migrate`.
    """
    target = Path(path)
    if str(path) != ":memory:":
        target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


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
    (:func:`~auditgate.store.schema.with_own_response_id`) and logged.
    """
    if not rows:
        return 0
    with write_transaction(conn):
        inserted = conn.executemany(INSERT_SQL, rows).rowcount
        if inserted < len(rows):
            inserted += _insert_clashes(conn, rows)
    return inserted


def _insert_clashes(conn: sqlite3.Connection, rows: Sequence[Row]) -> int:
    ids = list(dict.fromkeys(row[0] for row in rows))
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
