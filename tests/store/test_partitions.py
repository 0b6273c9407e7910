"""PostgreSQL day partitions: made ahead, rows routed by day, replays idempotent across them,
an unpartitioned store converted by the migration."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from auditgate.store import partitions
from auditgate.store import postgres as pg_store
from auditgate.store.migrations import MIGRATIONS, MIGRATIONS_TABLE_SQL
from auditgate.store.partitions import DAY_MS, day_of, partition_name
from auditgate.store.postgres_reader import PostgresStore
from auditgate.store.queries import Filter
from auditgate.store.rollups import TOTALS_TABLE
from auditgate.store.schema import (
    COLUMN_NAMES,
    MIGRATIONS_TABLE,
    SELECT_COLUMNS,
    TABLE,
    record_from_row,
)
from auditgate.store.schema import row_from_record as row
from tests.store.records import make_record

BASE = 1758740068000
"""``make_record``'s time: 2025-09-24 18:54 UTC."""


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[Any]:
    """A connection to a fresh database of the test's own."""
    connection = await asyncpg.connect(pg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def on_day(seq: int, days: int, **changes: Any) -> Any:
    """``make_record(seq)`` moved ``days`` days after :data:`BASE`."""
    return make_record(seq, created_at=BASE + days * DAY_MS + seq, **changes)


async def stored(conn: Any) -> list[tuple[str, str]]:
    """``(partition, request_id)`` of every row, in ``seq`` order."""
    rows = await conn.fetch(
        f"SELECT tableoid::regclass::text AS p, request_id FROM {TABLE} ORDER BY seq"
    )
    return [(r["p"], r["request_id"]) for r in rows]


async def test_partitions_are_made_ahead(conn: Any) -> None:
    """Migrating makes today's partition and the next three days', each with lz4 bodies."""
    await pg_store.migrate(conn)
    today = day_of(int(time.time() * 1000))
    names = [p.name for p in await partitions.partitions(conn)]
    compression = await conn.fetchval(
        "SELECT attcompression::text FROM pg_attribute WHERE attrelid = to_regclass($1) "
        "AND attname = 'request'",
        partition_name(today),
    )
    kind = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", TABLE
    )
    assert ([partition_name(d) for d in range(today, today + 4)], "l", "p") == (
        names,
        compression,
        kind,
    )


async def test_rows_land_in_their_day_and_replays_add_nothing(conn: Any) -> None:
    """A batch over three days is routed by day; replaying it, whole or mixed, adds nothing."""
    await pg_store.migrate(conn)
    records = [on_day(i, i % 3) for i in range(9)]
    rows = [row(r) for r in records]
    counts = [
        await pg_store.insert_rows(conn, rows),
        await pg_store.insert_rows(conn, rows),
        await pg_store.insert_rows(conn, [*rows[4:], row(on_day(9, 5)), *rows[:4]]),
    ]
    expected = [(partition_name(day_of(r.created_at)), r.request_id) for r in records]
    expected.append((partition_name(day_of(BASE) + 5), (await stored(conn))[-1][1]))
    assert ([9, 0, 1], expected) == (counts, await stored(conn))


async def test_a_reused_response_id_is_renamed_within_its_day(conn: Any) -> None:
    """Two requests of one day with one response id: the second is stored under its own id."""
    await pg_store.migrate(conn)
    first = on_day(1, 0, response={"id": "chatcmpl-same"})
    second = on_day(2, 0, response={"id": "chatcmpl-same"})
    counts = [
        await pg_store.insert_rows(conn, [row(first)]),
        await pg_store.insert_rows(conn, [row(second)]),
    ]
    ids = await conn.fetch(f"SELECT request_id, response_id FROM {TABLE} ORDER BY seq")
    assert counts == [1, 1]
    assert [
        (first.request_id, "chatcmpl-same"),
        (second.request_id, f"chatcmpl-{second.request_id}"),
    ] == [tuple(r) for r in ids]


async def test_reader_finds_rows_of_every_day(pg_dsn: str, conn: Any) -> None:
    """The store's lookups by response id, cursors and metadata updates work across days."""
    await pg_store.migrate(conn)
    records = [on_day(i, i) for i in range(4)]
    await pg_store.insert_rows(conn, [row(r) for r in records])
    ids = [f"chatcmpl-{r.request_id}" for r in records]
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        got = [await store.get(i, None) for i in ids]
        updated = await store.update_metadata(ids[2], None, {"k": "v"})
        page = await store.list(Filter(), after=ids[1], limit=10, order="asc")
    finally:
        await store.close()
    assert [g.response_id if g else None for g in got] == ids
    assert updated is not None and updated.record["metadata"] == {"k": "v"}
    assert [s.response_id for s in page.records] == ids[2:]


async def test_migration_converts_an_unpartitioned_store(conn: Any) -> None:
    """A store made before m005, with rows and an index of its own, is converted: every row in
    its day's partition, the index re-created on the partitioned table."""
    async with conn.transaction():
        await conn.execute(MIGRATIONS_TABLE_SQL["postgres"])
        for migration in MIGRATIONS[:4]:
            await migration.postgres(conn)
            await conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES ($1, 0)", migration.name)
    await conn.execute(f"CREATE INDEX {TABLE}_writer ON {TABLE} (writer)")
    records = [on_day(i, -i) for i in range(5)]
    # As a writer of that version did (no rollup tables yet).
    await conn.copy_records_to_table(TABLE, records=[row(r) for r in records], columns=COLUMN_NAMES)
    applied = await pg_store.migrate(conn)
    indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", TABLE)
    rows = await conn.fetch(f"SELECT {SELECT_COLUMNS} FROM {TABLE} ORDER BY seq")
    assert [m.name for m in MIGRATIONS[4:]] == applied
    assert records == [record_from_row(r) for r in rows]
    assert [(partition_name(day_of(r.created_at)), r.request_id) for r in records] == await stored(
        conn
    )
    # m005 re-created the old table's indexes; m015 then dropped the copy of the primary key.
    assert {f"{TABLE}_writer", f"{TABLE}_pkey"} <= {r["indexname"] for r in indexes}
    assert f"{TABLE}_created" not in {r["indexname"] for r in indexes}
    assert await pg_store.insert_rows(conn, [row(r) for r in records]) == 0
    assert await conn.fetchval(f"SELECT sum(requests) FROM {TOTALS_TABLE}") == 5


async def test_any_64_bit_time_gets_a_partition(conn: Any) -> None:
    """Records at the ends of the bigint range (an import of odd data) are stored all the same."""
    await pg_store.migrate(conn)
    records = [make_record(1, created_at=2**63 - 1), make_record(2, created_at=-(2**63))]
    counts = [await pg_store.insert_rows(conn, [row(r) for r in records]) for _ in range(2)]
    assert counts == [2, 0]
