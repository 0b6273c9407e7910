"""The stores' full-text search and usage aggregates, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from auditgate.audit.record import AuditRecord
from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.queries import Filter, IndexLag, Store
from auditgate.store.schema import row_from_record
from auditgate.store.url import open_store
from auditgate.store.usage import Latency, Totals
from tests.store.records import make_record


class Target:
    """A store URL and a way to insert rows into it as its sink does."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def insert(self, records: Sequence[AuditRecord]) -> None:
        rows = [row_from_record(r) for r in records]
        if self.url.startswith("postgresql://"):
            conn = await asyncpg.connect(self.url)
            try:
                await pg_store.migrate(conn)
                await pg_store.insert_rows(conn, rows)
            finally:
                await conn.close()
        else:
            conn = sqlite_store.connect(self.url.removeprefix("sqlite:///"))
            try:
                sqlite_store.migrate(conn)
                sqlite_store.insert_rows(conn, rows)
            finally:
                conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """An empty store of each kind."""
    if request.param == "sqlite":
        return Target(f"sqlite:///{tmp_path / 'audit.db'}")
    return Target(request.getfixturevalue("pg_dsn"))


def chat(seq: int, prompt: str, answer: str, **changes: Any) -> AuditRecord:
    """A stored completion with this prompt and answer."""
    record = make_record(seq, metadata={}, tenant=changes.pop("tenant", "t1"), **changes)
    request = {"model": "mock", "messages": [{"role": "user", "content": prompt}]}
    response = dict(record.response or {})
    response["choices"] = [{"index": 0, "message": {"role": "assistant", "content": answer}}]
    return AuditRecord(
        **{
            **{f: getattr(record, f) for f in record.__struct_fields__},
            "request": request,
            "response": response,
            "integrity": None,
        }
    )


async def found(store: Store, text: str, **where: Any) -> list[int]:
    """The seqs a search finds once the index has caught up (as the console's indexer does)."""
    await store.index_text()
    page = await store.list(
        Filter(text=text, stored_only=False, **where), after=None, limit=50, order="asc"
    )
    return [stored.record["seq"] for stored in page.records]


async def test_search_finds_words_of_prompts_and_answers(target: Target) -> None:
    """Every word must appear, in the prompt or the answer, whatever its case; rows stored after
    a search are found by the next one; query syntax in the text is just words."""
    await target.insert(
        [
            chat(0, "Where is Zanzibar?", "An island off Tanzania."),
            chat(1, "zanzibar spice trade", "Cloves, mostly.", tenant="t2"),
            chat(2, "unrelated", "Nothing here about islands."),
        ]
    )
    store = open_store(target.url)
    await store.open()
    try:
        first = await found(store, "ZANZIBAR")
        await target.insert([chat(3, "late arrival", "zanzibar again")])
        results = [
            first,
            await found(store, "zanzibar"),
            await found(store, "zanzibar island"),
            await found(store, "zanzibar", tenant="t2"),
            await found(store, 'cloves" OR * NEAR( AND'),
            await found(store, "   "),
        ]
    finally:
        await store.close()
    assert results == [[0, 1], [0, 1, 3], [0], [1], [], [0, 1, 2, 3]]


async def test_usage_totals_and_latency_per_bucket(target: Target) -> None:
    """Requests, tokens, errors and cancellations per bucket, model and tenant; nearest-rank
    latency percentiles per bucket."""
    base = 1_700_000_000_000
    records = [
        make_record(
            i,
            created_at=base + (i % 2) * 60_000 + i,
            model="a" if i < 6 else "b",
            status="error" if i == 1 else "cancelled" if i == 2 else "completed",
            duration_ms=float(100 * (i + 1)),
            ttft_ms=float(i + 1),
            metadata={},
            integrity=None,
        )
        for i in range(8)
    ]
    await target.insert(records)
    store = open_store(target.url)
    await store.open()
    try:
        usage = await store.usage(Filter(stored_only=False, tenant="tenant-ü"), 60_000)
    finally:
        await store.close()
    tokens = [(12 + i, 30) for i in range(8)]

    def totals(bucket: int, model: str, members: list[int], errors: int, cancelled: int) -> Totals:
        return Totals(
            bucket,
            model,
            "tenant-ü",
            len(members),
            sum(tokens[i][0] for i in members),
            sum(tokens[i][1] for i in members),
            errors,
            cancelled,
        )

    b0, b1 = base // 60_000 * 60_000, (base + 60_000) // 60_000 * 60_000
    assert (usage.totals, usage.latency) == (
        [
            totals(b0, "a", [0, 2, 4], 0, 1),
            totals(b0, "b", [6], 0, 0),
            totals(b1, "a", [1, 3, 5], 1, 0),
            totals(b1, "b", [7], 0, 0),
        ],
        [
            Latency(b0, (300.0, 700.0, 700.0), (3.0, 7.0, 7.0)),
            Latency(b1, (400.0, 800.0, 800.0), (4.0, 8.0, 8.0)),
        ],
    )


async def test_sqlite_pages_a_broad_search_by_walking_time_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search matching more rows than the threshold pages by walking time order: the same
    pages, both orders, across page boundaries, as looking the matches up."""
    from auditgate.store import sqlite_reader

    target = Target(f"sqlite:///{tmp_path / 'a.db'}")
    await target.insert(
        [chat(i, f"common {'odd' if i % 2 else 'even'}", "answer") for i in range(9)]
    )
    store = open_store(target.url)
    await store.open()
    await store.index_text()

    async def walk() -> list[list[int]]:
        pages = []
        for order in ("asc", "desc"):
            after = None
            while True:
                page = await store.list(
                    Filter(text="common odd", stored_only=False), after=after, limit=2, order=order
                )
                pages.append([s.record["seq"] for s in page.records])
                if not page.has_more:
                    break
                after = page.records[-1].response_id
        return pages

    try:
        looked_up = await walk()
        monkeypatch.setattr(sqlite_reader, "WALK_TIME_MATCHES", 0)
        walked = await walk()
    finally:
        await store.close()
    assert (looked_up, walked) == (
        [[1, 3], [5, 7], [7, 5], [3, 1]],
        [[1, 3], [5, 7], [7, 5], [3, 1]],
    )


async def test_usage_ranks_latency_over_a_sample_of_a_large_range(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the sample size, percentiles rank the records of every k-th millisecond only, and
    say so; the totals still count every record."""
    from auditgate.store import usage as usage_module

    monkeypatch.setattr(usage_module, "LATENCY_SAMPLE", 3)
    base = 1_700_000_040_000
    records = [
        make_record(
            i,
            created_at=base + i,
            duration_ms=float(10 * i),
            ttft_ms=1.0,
            metadata={},
            integrity=None,
        )
        for i in range(12)
    ]
    await target.insert(records)
    store = open_store(target.url)
    await store.open()
    try:
        usage = await store.usage(Filter(stored_only=False), 60_000)
    finally:
        await store.close()
    # 12 records, at most 3 ranked: every 4th millisecond, i = 0, 4, 8 (base is a multiple of 4).
    assert (
        usage.sample_every,
        sum(t.requests for t in usage.totals),
        [lat.duration for lat in usage.latency],
    ) == (4, 12, [(40.0, 80.0, 80.0)])


async def test_sqlite_search_after_the_newest_rows_were_deleted(tmp_path: Path) -> None:
    """Retention (or any DELETE) of the newest rows: SQLite may reuse their rowids, and a new
    row there is still indexed, under its own words only."""
    target = Target(f"sqlite:///{tmp_path / 'a.db'}")
    await target.insert([chat(0, "keep me", "x"), chat(1, "walrus", "x"), chat(2, "walrus", "x")])
    store = open_store(target.url)
    await store.open()
    try:
        before = await found(store, "walrus")
        conn = sqlite_store.connect(target.url.removeprefix("sqlite:///"))
        with sqlite_store.write_transaction(conn):
            conn.execute("DELETE FROM completions WHERE seq IN (1, 2)")
        conn.close()
        await target.insert([chat(3, "narwhal", "x")])
        results = [before, await found(store, "walrus"), await found(store, "narwhal")]
    finally:
        await store.close()
    assert results == [[1, 2], [], [3]]


async def test_a_search_answers_from_the_index_without_indexing(target: Target) -> None:
    """A search never indexes first: rows stored since the last indexing are not found, and
    the store says how many there are (and, on SQLite, up to which record it indexed); after
    :meth:`index_text` they are found and nothing is pending."""
    first = chat(0, "okapi first", "x", created_at=1_700_000_000_000)
    await target.insert([first])
    store = open_store(target.url)
    await store.open()
    try:
        await store.index_text()
        await target.insert([chat(i, "okapi later", "y") for i in range(1, 4)])
        before = (await found_unindexed(store, "okapi"), await store.text_index_lag())
        after = (await found(store, "okapi"), await store.text_index_lag())
    finally:
        await store.close()
    sqlite = target.url.startswith("sqlite")
    assert before == (
        [0],
        IndexLag(3, False, first.created_at if sqlite else None),
    )
    assert after == ([0, 1, 2, 3], IndexLag(0, False, after[1].indexed_until_ms))


async def found_unindexed(store: Store, text: str) -> list[int]:
    """The seqs a search finds now, without indexing anything."""
    page = await store.list(Filter(text=text, stored_only=False), after=None, limit=50, order="asc")
    return [stored.record["seq"] for stored in page.records]


async def test_m012_keys_a_postgres_queue_written_before_it_by_time(pg_dsn: str) -> None:
    """Rows queued for the text index before m012 (request ids only) are indexed after it, newest
    first: the queue gains their times, its key, and the insert trigger fills both."""
    from auditgate.store import migrations

    conn = await asyncpg.connect(pg_dsn)
    try:
        names = [m.name for m in migrations.MIGRATIONS]
        async with conn.transaction():
            await conn.execute(migrations.MIGRATIONS_TABLE_SQL["postgres"])
            for migration in migrations.MIGRATIONS[: names.index("m012_text_queue_by_time")]:
                await migration.postgres(conn)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", migration.name)
        old = [chat(i, f"wombat {i}", "x", created_at=1_700_000_000_000 + i) for i in range(3)]
        await pg_store.insert_rows(conn, [row_from_record(r) for r in old])
        applied = await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(chat(3, "wombat 3", "x"))])
        queued = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT created_at, request_id FROM completions_text_queue ORDER BY created_at"
            )
        ]
        first_batch = await pg_store.index_text(conn, batch=1, batches=1)
        newest = await conn.fetchval("SELECT request_id FROM completions_text")
    finally:
        await conn.close()
    store = open_store(pg_dsn)
    await store.open()
    try:
        results = await found(store, "wombat")
    finally:
        await store.close()
    assert applied[0] == "m012_text_queue_by_time"
    assert [rid for _, rid in queued][:3] == [r.request_id for r in old]
    assert (first_batch, newest, results) == (1, queued[-1][1], [0, 1, 2, 3])
