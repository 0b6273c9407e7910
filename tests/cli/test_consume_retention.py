"""``auditgate consume`` runs retention on its database target, as a gateway's sink does, and on
PostgreSQL only one process at a time (the store's advisory lock): real NATS, real databases."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from auditgate.audit.record import AuditRecord
from auditgate.store import postgres as pg_store
from auditgate.store import retention
from auditgate.store import sqlite as sqlite_store
from auditgate.store.partitions import DAY_MS, partitions
from auditgate.store.schema import row_from_record
from tests.cli.test_consume import consume_args, pg_count, publish, sqlite_count, wait_until
from tests.store.records import make_record
from tests.support.nats import start_consume

DAY0 = 1758672000000
"""2025-09-24 00:00 UTC: long past any 30-day retention."""
OLD = [make_record(i, created_at=DAY0 + (i % 3) * DAY_MS + i) for i in range(9)]
"""Nine records over three old days."""


def recent(count: int) -> list[AuditRecord]:
    """Records made now."""
    now = int(time.time() * 1000)
    return [make_record(100 + i, created_at=now + i) for i in range(count)]


async def seed_postgres(dsn: str) -> None:
    """The old records, stored as a gateway stored them then."""
    conn = await asyncpg.connect(dsn)
    try:
        await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in OLD])
    finally:
        await conn.close()


async def partition_names(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [p.name for p in await partitions(conn) if p.end_ms <= DAY0 + 3 * DAY_MS]
    finally:
        await conn.close()


async def test_consumers_run_retention_one_at_a_time_on_postgres(
    nats_url: str, nats_names: tuple[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """While another process holds the store's retention lock, a consumer started with
    DYN_AUDIT_RETENTION_DAYS skips retention (and stores what it consumes); the next consumer,
    once the lock is free, drops the old days' partitions; new records stay."""
    await seed_postgres(pg_dsn)
    stream, subject = nats_names
    fresh = recent(20)
    await publish(nats_url, stream, subject, fresh[:10])
    env = {"DYN_AUDIT_RETENTION_DAYS": "30"}
    args = consume_args(nats_url, nats_names, "d1", pg_dsn)
    codes: list[int] = []
    holder = await asyncpg.connect(pg_dsn)
    try:
        # What a gateway's or another consumer's retention run holds while it drops partitions.
        await holder.execute(
            f"SELECT pg_advisory_lock({retention.RETENTION_LOCK}, hashtext(current_schema()))"
        )
        first = start_consume(args, log_dir=tmp_path, name="first", env=env)
        try:
            await asyncio.to_thread(first.wait_for_log, r"retention skipped")
            stored_while_held = await wait_until(lambda: pg_count(pg_dsn), 19)
            await holder.execute("SELECT pg_advisory_unlock_all()")
            second = start_consume(args, log_dir=tmp_path, name="second", env=env)
            try:
                deleted = await asyncio.to_thread(
                    second.wait_for_log, r"retention deleted (\d+) records"
                )
                await publish(nats_url, stream, subject, fresh[10:])
                stored = await wait_until(lambda: pg_count(pg_dsn), 20)
            finally:
                codes.append(second.stop())
        finally:
            codes.insert(0, first.stop())
    finally:
        await holder.close()
    assert (stored_while_held, int(deleted.group(1)), stored, codes) == (19, 9, 20, [0, 0])
    assert await partition_names(pg_dsn) == []
    assert "retention deleted" not in first.log()


async def test_consumer_runs_retention_on_sqlite(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """--retention-days on a SQLite target deletes the old records at start; new ones stay."""
    path = tmp_path / "audit.db"
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in OLD])
    conn.close()
    stream, subject = nats_names
    await publish(nats_url, stream, subject, recent(5))
    args = [
        *consume_args(nats_url, nats_names, "d1", f"sqlite:///{path}"),
        "--retention-days",
        "30",
    ]
    consumer = start_consume(args, log_dir=tmp_path)
    try:
        deleted = await asyncio.to_thread(consumer.wait_for_log, r"retention deleted (\d+) records")
        stored = await wait_until(lambda: sqlite_count(path), 5)
    finally:
        code = consumer.stop()
    assert (int(deleted.group(1)), stored, code) == (9, 5, 0)
