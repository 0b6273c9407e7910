"""Metadata filters on both stores: pages in (created_at, request_id) order, walked without
sorting the matches (SQLite: driven by the side table's key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.queries import Filter, Order, Sql, page_sql
from auditgate.store.schema import SELECT_COLUMNS, row_from_record
from auditgate.store.url import open_store
from tests.store.records import make_record

RECORDS = 45


def dataset() -> list[Any]:
    """Records whose metadata ``team`` takes 3 values and ``half`` 2; some share a time."""
    return [
        make_record(
            i,
            created_at=1758740068000 + (i // 2) * 1000,
            metadata={"team": f"t{i % 3}", "half": f"h{i % 2}"},
        )
        for i in range(RECORDS)
    ]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "audit.db"
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
async def postgres_url(pg_dsn: str) -> str:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    chosen: str = request.getfixturevalue(f"{request.param}_url")
    return chosen


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize(
    "metadata", [{"team": "t1"}, {"team": "t2", "half": "h0"}, {"team": "nobody"}]
)
async def test_pages_walk_the_matches_in_order(
    url: str, order: Order, metadata: dict[str, str]
) -> None:
    """Paging through a metadata filter 4 at a time yields exactly the matches, in order."""
    store = open_store(url)
    await store.open()
    seen: list[int] = []
    after = None
    try:
        while True:
            page = await store.list(Filter(metadata=metadata), after=after, limit=4, order=order)
            seen += [s.record["seq"] for s in page.records]
            if not page.has_more:
                break
            after = page.records[-1].response_id
    finally:
        await store.close()
    matches = [r for r in dataset() if all(r.metadata.get(k) == v for k, v in metadata.items())]
    # Same created_at for pairs: the tie breaks on request_id, which is random; compare by time
    # and then as sets per time.
    by_time: dict[int, set[int]] = {}
    for r in matches:
        by_time.setdefault(r.created_at, set()).add(r.seq)
    times = sorted(by_time, reverse=order == "desc")
    expected_groups = [by_time[t] for t in times]
    got_groups: list[set[int]] = []
    index = 0
    for group in expected_groups:
        got_groups.append(set(seen[index : index + len(group)]))
        index += len(group)
    assert (expected_groups, len(matches)) == (got_groups, len(seen))


def test_sqlite_metadata_page_needs_no_sort(sqlite_url: str) -> None:
    """SQLite's plan of a metadata page (with a cursor, another pair, a tenant) walks the side
    table's key in order: no temporary B-tree, no list of every match."""
    conn = sqlite_store.connect(sqlite_url[len("sqlite:///") :])
    plans = []
    try:
        for order in ("asc", "desc"):
            sql = Sql("sqlite")
            where = Filter(metadata={"team": "t1", "half": "h0"}, tenant="t")
            statement = page_sql(sql, SELECT_COLUMNS, where, cursor=(5, "x"), limit=21, order=order)
            plans += [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {statement}", sql.params)]
    finally:
        conn.close()
    assert plans[0].startswith("SEARCH completion_metadata USING PRIMARY KEY (key=? AND value=?")
    assert not [p for p in plans if "TEMP B-TREE" in p or "LIST SUBQUERY" in p]
