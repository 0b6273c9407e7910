"""The ``sqlite`` sink through the real bus, on a file in a temporary directory."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from auditgate.audit.bus import AuditBus, Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.errors import ConfigError
from auditgate.sinks.sqlite import SqliteSink
from auditgate.store.migrations import MIGRATIONS
from tests.store.records import make_record, minimal_record, nul_record, read_sqlite


def written(metrics: AuditMetrics, sink: str) -> tuple[float | None, float | None]:
    """(written, sink_errors) counters of one sink."""
    registry = metrics.registry
    return (
        registry.get_sample_value("auditgate_audit_written_total", {"sink": sink}),
        registry.get_sample_value("auditgate_audit_sink_errors_total", {"sink": sink}),
    )


async def test_bus_round_trips_every_record(tmp_path: Path) -> None:
    """Records published through the bus are stored whole: every row equals its record."""
    path = str(tmp_path / "db" / "audit.db")
    metrics = AuditMetrics()
    bus = AuditBus([SqliteSink(path)], capacity=2000, metrics=metrics)
    await bus.start()
    published: list[AuditRecord] = [make_record(i) for i in range(1000)]
    published += [minimal_record(1000), nul_record(1001)]
    for record in published:
        bus.publish(Envelope(record))
    assert await bus.flush(timeout=30)
    assert await bus.close(timeout=5) == {"sqlite": 0}
    assert (published, (1002.0, 0.0)) == (read_sqlite(path), written(metrics, "sqlite"))


async def test_replayed_batch_is_stored_once(tmp_path: Path) -> None:
    """Writing the same batch twice (a retry) leaves one row per record."""
    path = str(tmp_path / "audit.db")
    sink = SqliteSink(path)
    await sink.open()
    batch = [Envelope(make_record(i)) for i in range(10)]
    await sink.write(batch)
    await sink.write(batch[3:] + batch[:3])
    await sink.close()
    assert [e.record for e in batch] == read_sqlite(path)


async def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    """The sink leaves a new file in WAL mode, with 4 KiB pages and the schema migrated."""
    path = tmp_path / "audit.db"
    sink = SqliteSink(str(path))
    await sink.open()
    await sink.close()
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    conn.close()
    assert (mode, page_size, names) == (
        "wal",
        4096,
        [m.name for m in MIGRATIONS],
    )


async def test_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    """A path that is a directory fails ``open`` with a ConfigError naming the variable."""
    sink = SqliteSink(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        await sink.open()
    assert str(caught.value).startswith(f"DYN_AUDIT_SQLITE_PATH={str(tmp_path)!r}: cannot open")


async def test_failed_writes_are_retried_by_the_bus(tmp_path: Path) -> None:
    """While the database is locked by another writer, writes fail and are retried; none lost."""
    path = tmp_path / "audit.db"
    sink = SqliteSink(str(path), busy_timeout_s=0.0)
    metrics = AuditMetrics()
    bus = AuditBus([sink], capacity=100, metrics=metrics, backoff=Backoff(0.01, 0.05))
    await bus.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    records = [make_record(i) for i in range(5)]
    for record in records:
        bus.publish(Envelope(record))
    assert not await bus.flush(timeout=0.3)
    errors = written(metrics, "sqlite")[1]
    blocker.execute("ROLLBACK")
    blocker.close()
    assert await bus.flush(timeout=10)
    await bus.close(timeout=5)
    assert (True, records, 5.0) == (
        errors is not None and errors > 0,
        read_sqlite(str(path)),
        written(metrics, "sqlite")[0],
    )


async def test_sync_makes_committed_batches_durable_without_a_flush_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink commits at synchronous=NORMAL (no fsync per batch); sync() fsyncs the WAL
    and the database file, which is what the durable spool waits for before it forgets."""
    sink = SqliteSink(str(tmp_path / "a.db"))
    await sink.open()
    try:
        thread = sink._thread
        assert thread.conn is not None
        conn = thread.conn
        assert await thread.call(lambda: conn.execute("PRAGMA synchronous").fetchone()[0]) == 1
        await sink.write([Envelope(make_record(1))])
        synced: list[str] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        await sink.sync()
        assert synced == [str(tmp_path / "a.db-wal"), str(tmp_path / "a.db")]
    finally:
        await sink.close()


def _count_in_another_process(path: str) -> int:
    """Rows as another process sees them, through a connection that it then closes (as
    ``auditgate export``, the console or a test would)."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "print(db.execute('SELECT count(*) FROM completions').fetchone()[0])\n"
        "db.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=True, timeout=30
    )
    return int(out.stdout)


async def test_a_sync_keeps_the_connections_locks(tmp_path: Path) -> None:
    """``sync`` (durable mode's fsync before the spool forgets records) must not close a file
    descriptor of the database: POSIX drops every lock a process holds on a file when it
    closes any descriptor of it, so another process closing its connection took the sink for
    gone, checkpointed and deleted the WAL the sink was still writing to, and later batches
    vanished (seen as an answered record missing after a durable restart)."""
    path = str(tmp_path / "audit.db")
    records = [make_record(i) for i in range(15)]
    sink = SqliteSink(path)
    await sink.open()
    try:
        for start in (0, 5, 10):
            await sink.write([Envelope(record) for record in records[start : start + 5]])
            await sink.sync()
            assert _count_in_another_process(path) == start + 5
    finally:
        await sink.close()
    assert records == read_sqlite(path)
