"""The ``sqlite`` sink: the embedded default store (``DYN_AUDIT_SQLITE_PATH``).

One connection, owned by one dedicated thread (a single-worker executor), so SQLite's blocking
calls never run on the event loop and the connection is never shared between threads.  Each batch
is one ``BEGIN IMMEDIATE`` transaction of ``INSERT ... ON CONFLICT DO NOTHING`` rows (WAL mode,
``synchronous=NORMAL``), so a batch the bus retries, or a record replayed later, is stored once.

In durable mode the spool calls :meth:`SqliteSink.sync` before it forgets records (every
~0.2 s), so a power loss cannot lose what the spool no longer holds, without an ``fsync`` per
commit.  It syncs through descriptors opened once and closed only after the connection: POSIX
drops every lock a process holds on a file when the process closes *any* descriptor of it, and
SQLite's locks are what tell other processes the database is in use (a reader that closed its
connection then took itself for the last one and deleted the WAL this sink was writing to).

Failures: ``open()`` raises :class:`ConfigError` when the file cannot be created or opened (a bad
path, a directory, no permission) or its schema cannot be migrated; once open, a failing write
(disk full, a lock held past the busy timeout) raises and the bus retries it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.errors import ConfigError, SinkError
from auditgate.store import retention
from auditgate.store import sqlite as store
from auditgate.store.schema import row_from_record


class SqliteSink:
    """Writes records to a SQLite database file in the stored-completions schema."""

    name = "sqlite"
    batching = BatchPolicy(max_records=512, linger_s=0.0)
    """Whatever is queued, up to 512 records, in one transaction; no waiting for more."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_s: float = 30.0,
        synchronous: str = "NORMAL",
        retention_days: int | None = None,
        maintenance_interval_s: float = retention.INTERVAL_S,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self.path = path
        self.retention_days = retention_days
        """Delete records older than this many days, every ``maintenance_interval_s``
        (:mod:`auditgate.store.retention`); ``None``: keep every record."""
        self.maintenance = retention.Maintenance(
            self.name, self._retain, interval_s=maintenance_interval_s, metrics=metrics
        )
        self.synchronous = synchronous
        """``NORMAL`` (a commit survives a process crash) or ``FULL`` (also a power failure)."""
        self.busy_timeout_s = busy_timeout_s
        """How long a write waits for another writer's lock before it fails (and is retried)."""
        self._thread = store.SqliteThread(
            "auditgate-sqlite", lambda: SinkError("sqlite sink is not open")
        )
        self._sync_fds: dict[str, int] = {}
        """Descriptors :meth:`sync` fsyncs through, by path: never closed while the connection
        is open (closing one would drop the connection's locks)."""

    def __repr__(self) -> str:
        return f"SqliteSink(path={self.path!r})"

    async def open(self) -> None:
        """Open (or create) the database and apply pending migrations."""
        try:
            await self._thread.open(self._open_sync)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"DYN_AUDIT_SQLITE_PATH={self.path!r}: cannot open: {exc}") from exc
        if self.retention_days is not None:
            self.maintenance.start()

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Store every record of ``batch`` in one transaction, or raise."""
        records = [envelope.record for envelope in batch]
        await self._thread.call(lambda: self._write_sync(records))

    async def sync(self) -> None:
        """Make every committed batch survive a power loss (``fsync`` of the WAL and the
        database file, what ``synchronous=FULL`` would do at every commit)."""
        await self._thread.call(self._sync_files)

    async def close(self) -> None:
        """Stop retention, close the connection and stop the thread, then the sync
        descriptors."""
        await self.maintenance.stop()
        try:
            await self._thread.close()
        finally:
            fds, self._sync_fds = self._sync_fds, {}
            for fd in fds.values():
                os.close(fd)

    async def _retain(self) -> retention.Outcome:
        # One write transaction per call on the sink's thread: batches interleave with writes.
        assert self.retention_days is not None
        cutoff = retention.cutoff_of(int(time.time() * 1000), self.retention_days)
        outcome = retention.Outcome(cutoff, None)
        while True:
            deleted, texts = await self._thread.call(
                lambda: retention.sqlite_retain_batch(self._conn(), cutoff)
            )
            outcome.rows += deleted
            outcome.text_rows += texts
            if deleted < retention.BATCH:
                break
        retention.log_outcome(outcome, "sqlite")
        return outcome

    def _conn(self) -> sqlite3.Connection:
        conn = self._thread.conn
        if conn is None:
            raise SinkError("sqlite sink is not open")
        return conn

    def _sync_files(self) -> None:
        # On the connection's thread: no write of ours is half done.  Commits are in the WAL;
        # what a checkpoint moved to the database file SQLite synced when the checkpoint ended,
        # and syncing the file again costs nothing when it is clean.
        # The WAL is not deleted while this connection is open (its locks say it is in use),
        # so a descriptor opened once stays the WAL's.
        for path in (self.path + "-wal", self.path):
            try:
                fd = self._sync_fds.get(path)
                if fd is None:
                    fd = self._sync_fds[path] = os.open(path, os.O_RDONLY)
                os.fsync(fd)
            except FileNotFoundError:
                continue  # no WAL yet: nothing committed since the last checkpoint reset it
            except OSError as exc:
                raise SinkError(f"sqlite sink: fsync of {path!r} failed: {exc}") from exc

    def _open_sync(self) -> sqlite3.Connection:
        conn = store.connect(
            self.path, busy_timeout_s=self.busy_timeout_s, synchronous=self.synchronous
        )
        try:
            store.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_sync(self, records: Sequence[AuditRecord]) -> None:
        conn = self._thread.conn
        assert conn is not None
        # Rows are built on the sink's thread too: encoding ~4 KiB bodies is real work.
        rows = [row_from_record(record) for record in records]
        store.insert_rows(conn, rows)
