"""PostgreSQL's metadata side table (m014): kept equal to the rows' metadata by every writer,
dropped with its day by retention, and walked in page order by the generic plan."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from auditgate.store import postgres as pg_store
from auditgate.store import retention
from auditgate.store.migrations import MIGRATIONS, MIGRATIONS_TABLE_SQL
from auditgate.store.partitions import DAY_MS, partition_name
from auditgate.store.postgres_reader import METADATA_PAGE_SETTING
from auditgate.store.queries import Filter, Sql, page_sql
from auditgate.store.schema import (
    COLUMN_NAMES,
    METADATA_TABLE,
    MIGRATIONS_TABLE,
    SELECT_COLUMNS,
    TABLE,
    row_from_record,
)
from auditgate.store.url import open_store
from tests.store.records import make_record

DAY0 = 1758672000000
"""2025-09-24 00:00 UTC."""
_COPY_CHANGES = {
    "request_id": "request_id || '-' || g",
    "response_id": "response_id || '-' || g",
    "created_at": f"created_at + (g % 3) * {DAY_MS} + g",
    "metadata": """jsonb_build_object('team', 't' || (g % 3), 'n', g::text)""",
}


def dataset() -> list[Any]:
    """Twelve records over three days, tenants a and b, two metadata pairs each, and two
    without metadata."""
    records = [
        make_record(
            i,
            created_at=DAY0 + (i % 3) * DAY_MS + i,
            tenant="ab"[i % 2],
            metadata={"team": f"t{i % 3}", "n": str(i)},
        )
        for i in range(12)
    ]
    return [*records, make_record(12, created_at=DAY0, metadata={}), make_record(13, metadata={})]


async def pairs(conn: Any) -> list[tuple[str, str, int, str]]:
    rows = await conn.fetch(f"SELECT key, value, created_at, request_id FROM {METADATA_TABLE}")
    return sorted(tuple(r) for r in rows)


async def derived_pairs(conn: Any) -> list[tuple[str, str, int, str]]:
    """The side table as the stored rows' metadata says it must be."""
    rows = await conn.fetch(
        f"SELECT j.key, j.value #>> '{{}}', c.created_at, c.request_id FROM {TABLE} AS c, "
        "jsonb_each(c.metadata) AS j WHERE jsonb_typeof(j.value) = 'string'"
    )
    return sorted(tuple(r) for r in rows)


async def test_side_table_follows_inserts_updates_and_retention(pg_dsn: str) -> None:
    """Inserts (a replay too), the API's metadata update and delete, one tenant's retention and
    whole-day retention: the side table always equals the rows' metadata, and the dropped day's
    side partition is gone with the table's."""
    conn = await asyncpg.connect(pg_dsn)
    records = dataset()
    try:
        await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in records])
        await pg_store.insert_rows(conn, [row_from_record(r) for r in records[:3]])  # replay
        checks = [len(await pairs(conn)) == 24 and await pairs(conn) == await derived_pairs(conn)]
        store = open_store(pg_dsn)
        await store.open()
        try:
            await store.update_metadata(f"chatcmpl-{records[4].request_id}", None, {"x": "y"})
            await store.delete(f"chatcmpl-{records[5].request_id}", None)
            checks.append(await pairs(conn) == await derived_pairs(conn))
            await retention.retain(pg_dsn, DAY0 + 3 * DAY_MS, tenant="a")
            checks.append(await pairs(conn) == await derived_pairs(conn))
            await retention.retain(pg_dsn, DAY0 + DAY_MS)
            found = await store.list(Filter(metadata={"x": "y"}), after=None, limit=5, order="asc")
        finally:
            await store.close()
        final = await pairs(conn)
        checks.append(final == await derived_pairs(conn))
        first_day = partition_name(DAY0 // DAY_MS, METADATA_TABLE)
        left = await conn.fetchval("SELECT to_regclass($1)", first_day)
    finally:
        await conn.close()
    # Tenant b's records remain but 3 and 9, whose day (the first) was dropped whole; 5 was
    # deleted through the API (a tombstone: its pairs stay, the API lists it no more).
    expected = sorted(
        (k, v, r.created_at, r.request_id)
        for r in records
        if r.seq in (1, 5, 7, 11)
        for k, v in r.metadata.items()
    )
    assert (checks, final, left, [s.record["seq"] for s in found.records]) == (
        [True, True, True, True],
        expected,
        None,
        [],
    )


async def test_generic_plan_walks_the_side_table_in_page_order(pg_dsn: str) -> None:
    """The generic plan of a metadata page (as asyncpg's prepared statements get) reads the side
    table's key in order and probes the table per match: no sort, no bitmap of all matches, even
    when the planner expects few matches (here: 5,000 distinct values of n)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
        # Enough rows for the planner to cost a store, not a handful: copies of record 0 over
        # the three days, in one statement (the triggers run as for a sink's batch).
        columns = ", ".join(c for c in COLUMN_NAMES if c not in _COPY_CHANGES)
        await conn.execute(
            f"INSERT INTO {TABLE} ({', '.join(_COPY_CHANGES)}, {columns}) "
            f"SELECT {', '.join(_COPY_CHANGES.values())}, {columns} FROM {TABLE}, "
            "generate_series(1, 5000) AS g WHERE seq = 0"
        )
        await conn.execute("ANALYZE")
        plans = []
        for cursor in (None, (int(time.time() * 1000), "x")):
            sql = Sql("postgres")
            where = Filter(metadata={"team": "t1"})
            statement = page_sql(sql, SELECT_COLUMNS, where, cursor=cursor, limit=21, order="desc")
            values = ", ".join(f"'{p}'" for p in sql.params)
            async with conn.transaction():  # as PostgresStore reads a metadata page
                await conn.execute(METADATA_PAGE_SETTING)
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await conn.execute(f"PREPARE page AS {statement}")
                explained = await conn.fetch(f"EXPLAIN EXECUTE page({values})")
                await conn.execute("DEALLOCATE page")
            plans.append("\n".join(r[0] for r in explained))
    finally:
        await conn.close()
    for plan in plans:
        assert f"Index Only Scan Backward using {METADATA_TABLE}_p" in plan, plan
        assert "Sort" not in plan and "Bitmap" not in plan, plan


async def test_m014_fills_the_side_table_of_an_existing_store(pg_dsn: str) -> None:
    """A store made through m013, with rows over three days: m014 makes the side table's
    partitions of those days, fills it from the rows, and metadata pages read it."""
    m014 = [m.name for m in MIGRATIONS].index("m014_postgres_metadata_in_time_order")
    conn = await asyncpg.connect(pg_dsn)
    records = dataset()
    try:
        async with conn.transaction():
            await conn.execute(MIGRATIONS_TABLE_SQL["postgres"])
            for migration in MIGRATIONS[:m014]:
                await migration.postgres(conn)
                await conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES ($1, 0)", migration.name)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in records])
        applied = await pg_store.migrate(conn)
        filled = await pairs(conn)
        derived = await derived_pairs(conn)
        days = [
            await conn.fetchval("SELECT to_regclass($1)::text", partition_name(d, METADATA_TABLE))
            for d in range(DAY0 // DAY_MS, DAY0 // DAY_MS + 3)
        ]
    finally:
        await conn.close()
    store = open_store(pg_dsn)
    await store.open()
    try:
        page = await store.list(Filter(metadata={"team": "t2"}), after=None, limit=3, order="desc")
    finally:
        await store.close()
    assert (applied[:1], len(filled), filled, days, [s.record["seq"] for s in page.records]) == (
        ["m014_postgres_metadata_in_time_order"],
        24,
        derived,
        [partition_name(d, METADATA_TABLE) for d in range(DAY0 // DAY_MS, DAY0 // DAY_MS + 3)],
        [11, 8, 5],
    )
