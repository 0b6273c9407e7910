"""Usage rollups on both stores: equal to the exact statistics after replays and deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from auditgate.cli.stats import collect
from auditgate.store import migrations, rollups
from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.queries import Filter
from auditgate.store.rollups import (
    LATENCY_TABLE,
    TENANT_LATENCY_TABLE,
    bucket_of,
    bucket_upper,
    percentile,
)
from auditgate.store.schema import row_from_record
from auditgate.store.url import open_store
from tests.store.records import make_record, minimal_record

HOUR = 3_600_000


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated, empty SQLite store."""
    path = tmp_path / "audit.db"
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
async def postgres_url(pg_dsn: str) -> str:
    """A migrated, empty PostgreSQL store in its own database."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """Each store in turn."""
    chosen: str = request.getfixturevalue(f"{request.param}_url")
    return chosen


async def insert(url: str, records: list[Any]) -> int:
    rows = [row_from_record(r) for r in records]
    if url.startswith("sqlite:///"):
        conn = sqlite_store.connect(url[len("sqlite:///") :])
        try:
            return sqlite_store.insert_rows(conn, rows)
        finally:
            conn.close()
    pg = await asyncpg.connect(url)
    try:
        return await pg_store.insert_rows(pg, rows)
    finally:
        await pg.close()


def dataset() -> list[Any]:
    """Records over three hours and two days, three models, two tenants, every status."""
    records = []
    for i in range(60):
        record = make_record(
            i,
            created_at=1758740068000 + (i % 5) * HOUR + (i // 30) * 24 * HOUR,
            model=f"m{i % 3}",
            tenant=None if i % 4 == 0 else f"t{i % 2}",
            status=("completed", "error", "cancelled")[(i % 3 == 0 and (i % 2) + 1) or 0],
            duration_ms=0.5 + i * 7.3,
            ttft_ms=None if i % 6 == 0 else 0.2 + i,
        )
        records.append(record)
    checkpoint = minimal_record(99)
    checkpoint.mode = "checkpoint"  # type: ignore[assignment]
    return [*records, checkpoint, minimal_record(100)]


async def tenant_latency(url: str) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
    """``(what the tenant latency table holds, usage_latency summed as it should hold)``,
    both as ``{(all_tenants, tenant, hour, metric, bucket, deleted): count}``."""
    groups = "hour, metric, bucket, deleted"
    held_sql = (
        f"SELECT all_tenants, tenant, {groups}, count FROM {TENANT_LATENCY_TABLE} WHERE count <> 0"
    )
    per_tenant = (
        f"SELECT tenant, {groups}, sum(count) FROM {LATENCY_TABLE} GROUP BY tenant, {groups}"
    )
    every = f"SELECT {groups}, sum(count) FROM {LATENCY_TABLE} GROUP BY {groups}"
    if url.startswith("sqlite:///"):
        conn = sqlite_store.connect(url[len("sqlite:///") :])
        try:
            held = [tuple(r) for r in conn.execute(held_sql)]
            tenants = [tuple(r) for r in conn.execute(per_tenant)]
            alls = [tuple(r) for r in conn.execute(every)]
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(url)
        try:
            held = [tuple(r) for r in await pg.fetch(held_sql)]
            tenants = [tuple(r) for r in await pg.fetch(per_tenant)]
            alls = [tuple(r) for r in await pg.fetch(every)]
        finally:
            await pg.close()
    expected = {(False, *r[:-1]): int(r[-1]) for r in tenants if r[-1]}
    expected |= {(True, "", *r[:-1]): int(r[-1]) for r in alls if r[-1]}
    normal = {(bool(r[0]), r[1], r[2], r[3], r[4], bool(r[5])): int(r[6]) for r in held}
    expected = {(k[0], k[1], k[2], k[3], k[4], bool(k[5])): v for k, v in expected.items()}
    return normal, expected


def rounded(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with exact percentiles replaced by their bucket's upper bound."""

    def fix(group: dict[str, Any]) -> dict[str, Any]:
        return {
            k: bucket_upper(bucket_of(v)) if k.endswith("_ms") and v is not None else v
            for k, v in group.items()
        }

    return {
        **doc,
        "groups": [fix(g) for g in doc["groups"]],
        "total": fix(doc["total"]),
    }


@pytest.mark.parametrize("by", ["model", "tenant", "day"])
async def test_rollups_equal_exact_stats_after_replays_and_deletes(url: str, by: str) -> None:
    """Replayed batches count once; API deletes move out of the default and stay in
    --include-deleted; every group equals the exact statistics (percentiles to their bucket)."""
    records = dataset()
    counts = [
        await insert(url, records[:40]),
        await insert(url, records),
        await insert(url, records),
    ]
    store = open_store(url)
    await store.open()
    try:
        deleted = [await store.delete(f"chatcmpl-{r.request_id}", None) for r in records[3:9]]
    finally:
        await store.close()
    docs = []
    for include_deleted in (False, True):
        where = Filter(stored_only=False, live_only=not include_deleted, requests_only=True)
        exact = await collect(url, where, by, exact=True)
        rolled = await collect(url, where, by)
        docs.append((rounded(exact), {**rolled, "source": exact["source"]}, rolled["source"]))
    held, expected = await tenant_latency(url)
    assert (counts, deleted) == ([40, 22, 0], [True] * 6)
    assert held == expected
    assert any(key[0] for key in held) and any(not key[0] and key[5] for key in held)
    for exact, rolled, source in docs:
        assert (exact, "rollups") == (rolled, source)
    assert docs[0][0]["total"]["requests"] + 6 == docs[1][0]["total"]["requests"]


async def test_hour_windows_come_from_rollups(url: str) -> None:
    """An hour-aligned window reads the rollups of those hours only; another is exact."""
    records = dataset()
    await insert(url, records)
    start = 1758740068000 - 1758740068000 % HOUR + HOUR
    window = Filter(
        since_ms=start, until_ms=start + 2 * HOUR, stored_only=False, requests_only=True
    )
    rolled = await collect(url, window, "model")
    odd = await collect(url, Filter(since_ms=start + 1, stored_only=False), "model")
    inside = [r for r in records[:-2] if start <= r.created_at < start + 2 * HOUR]
    assert ("rollups", len(inside), "exact") == (
        rolled["source"],
        rolled["total"]["requests"],
        odd["source"],
    )


def test_percentile_of_a_histogram_is_its_bucket_bound() -> None:
    """Nearest rank over buckets: the bound of the bucket holding the exact value, <= 9 % above."""
    values = [0.001, 0.5, 1.0, 1.7, 30.0, 30.5, 1000.0, 123456.0]
    histogram: dict[int, int] = {}
    for v in values:
        histogram[bucket_of(v)] = histogram.get(bucket_of(v), 0) + 1
    for p, exact in ((1, 0.001), (50, 1.7), (75, 30.5), (100, 123456.0)):
        found = percentile(histogram, p)
        assert found is not None
        assert exact <= found <= max(exact * 2 ** (1 / 8), 0.01) + 0.001
    assert percentile({}, 50) is None


async def test_m011_fills_the_tenant_latency_table_from_usage_latency(tmp_path: Path) -> None:
    """A SQLite store written before m011: the migration fills the table with what the writers
    would have kept (usage_latency summed per tenant, and for all tenants)."""
    path = tmp_path / "old.db"
    conn = sqlite_store.connect(path)
    with sqlite_store.write_transaction(conn):
        conn.execute(migrations.MIGRATIONS_TABLE_SQL["sqlite"])
        names = [m.name for m in migrations.MIGRATIONS]
        for migration in migrations.MIGRATIONS[: names.index("m011_tenant_latency")]:
            migration.sqlite(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (migration.name,))
        # Written as the writers before m011 wrote: the rows, their totals and histograms.
        rows = [row_from_record(r) for r in dataset()]
        delta = rollups.Delta()
        delta.add_rows(rows)
        conn.executemany(sqlite_store.INSERT_SQL, rows)
        conn.executemany(rollups.upsert_latency_sql("sqlite"), delta.latency_rows())
    applied = sqlite_store.migrate(conn)
    conn.close()
    held, expected = await tenant_latency(f"sqlite:///{path}")
    assert (applied[0], held, len(held) > 10) == ("m011_tenant_latency", expected, True)
