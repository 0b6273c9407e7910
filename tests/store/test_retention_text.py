"""Retention and the full-text index: the text of every record retention deletes leaves the index
(and PostgreSQL's queue of rows to index) in the same step, on both stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from auditgate.store import retention
from auditgate.store.migrations import POSTGRES_TEXT_VECTOR, TEXT_QUEUE_TABLE, TEXT_TABLE
from auditgate.store.partitions import DAY_MS
from auditgate.store.queries import Filter
from auditgate.store.schema import TABLE
from auditgate.store.url import open_store
from tests.store.test_search import Target, chat
from tests.support.gateway import clean_env

DAY0 = 1758672000000
"""2025-09-24 00:00 UTC: more than 30 days ago."""


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """An empty store of each kind."""
    if request.param == "sqlite":
        return Target(f"sqlite:///{tmp_path / 'audit.db'}")
    return Target(request.getfixturevalue("pg_dsn"))


async def searched(url: str, text: str) -> list[int]:
    """The seqs a console search for ``text`` finds (from the index as it is)."""
    store = open_store(url)
    await store.open()
    try:
        page = await store.list(
            Filter(text=text, stored_only=False), after=None, limit=50, order="asc"
        )
    finally:
        await store.close()
    return [stored.record["seq"] for stored in page.records]


async def index_all(url: str) -> None:
    """Index everything stored so far, as the console's background indexer does."""
    store = open_store(url)
    await store.open()
    try:
        await store.index_text()
    finally:
        await store.close()


async def retention_command(*args: str) -> tuple[int, dict[str, object]]:
    """``auditgate retention ARGS`` as a user runs it: its exit code and its JSON output."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "auditgate", "retention", *args],
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.returncode, json.loads(done.stdout)


async def index_entries(url: str) -> tuple[list[str], list[str]]:
    """``(request ids the text index holds, request ids queued for it)`` (SQLite: no queue;
    the index holds rowids, mapped to the request ids of the rows that have them, or to
    ``"missing"`` for an entry whose row is gone)."""
    if url.startswith("postgresql://"):
        conn = await asyncpg.connect(url)
        try:
            texts = [r[0] for r in await conn.fetch(f"SELECT request_id FROM {TEXT_TABLE}")]
            queued = [r[0] for r in await conn.fetch(f"SELECT request_id FROM {TEXT_QUEUE_TABLE}")]
        finally:
            await conn.close()
        return sorted(texts), sorted(queued)
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        rows = db.execute(
            f"SELECT coalesce(c.request_id, 'missing') FROM {TEXT_TABLE} AS t "
            f"LEFT JOIN {TABLE} AS c ON c.rowid = t.rowid"
        ).fetchall()
    finally:
        db.close()
    return sorted(r[0] for r in rows), []


async def test_cli_retention_takes_the_deleted_records_out_of_the_text_index(
    target: Target,
) -> None:
    """``auditgate retention --older-than 30``: the old records' index entries (and, on
    PostgreSQL, their queue entries) go with them, counted in the output; a search finds the
    recent records and nothing of the old ones."""
    now = int(time.time() * 1000)
    old = [
        chat(i, f"ancient question {i}", "ancient answer", created_at=DAY0 + i) for i in range(4)
    ]
    new = [chat(10 + i, "fresh question", "fresh answer", created_at=now + i) for i in range(2)]
    await target.insert([*old[:3], *new])
    await index_all(target.url)
    await target.insert(old[3:])  # stored, not indexed yet
    before = await searched(target.url, "ancient")

    code, done = await retention_command("--older-than", "30", "--store", target.url)

    assert (code, done["rows"], done["text_rows"]) == (0, 4, 3)
    assert (sorted(r.request_id for r in new), []) == await index_entries(target.url)
    assert (before, [], [10, 11]) == (
        [0, 1, 2],
        await searched(target.url, "ancient"),
        await searched(target.url, "fresh"),
    )


async def test_tenant_retention_takes_that_tenants_records_out_of_the_text_index(
    target: Target,
) -> None:
    """``--tenant a`` takes a's old entries out of the index; b's old ones stay searchable."""
    rows = [
        chat(i, "ancient question", "ancient answer", created_at=DAY0 + i * DAY_MS, tenant=t)
        for i, t in enumerate(("a", "b", "a"))
    ]
    await target.insert(rows)
    await index_all(target.url)

    code, done = await retention_command(
        "--older-than", "30", "--tenant", "a", "--store", target.url
    )

    assert (code, done["rows"], done["text_rows"]) == (0, 2, 2)
    assert ([rows[1].request_id], []) == await index_entries(target.url)
    assert await searched(target.url, "ancient") == [1]


async def test_postgres_retention_does_not_wait_for_an_indexer_holding_the_days_ids(
    pg_dsn: str,
) -> None:
    """An indexer that has taken an old record's id off the queue (its transaction still open,
    about to read the record) neither holds up retention of that record's day nor deadlocks
    with it: retention skips the id, the indexer then finds no row and adds nothing."""
    target = Target(pg_dsn)
    now = int(time.time() * 1000)
    old = chat(0, "ancient", "answer", created_at=DAY0)
    new = chat(1, "fresh", "answer", created_at=now)
    await target.insert([old, new])
    indexer = await asyncpg.connect(pg_dsn)
    try:
        async with indexer.transaction():
            taken = await indexer.fetch(
                f"DELETE FROM {TEXT_QUEUE_TABLE} WHERE request_id = $1 RETURNING request_id",
                old.request_id,
            )
            outcome = await asyncio.wait_for(retention.retain(pg_dsn, DAY0 + DAY_MS), 10)
            added = await indexer.execute(
                f"INSERT INTO {TEXT_TABLE} (request_id, words) SELECT request_id, "
                f"{POSTGRES_TEXT_VECTOR} FROM {TABLE} WHERE request_id = ANY($1::text[])",
                [r["request_id"] for r in taken],
            )
    finally:
        await indexer.close()
    assert (len(taken), outcome.rows, added) == (1, 1, "INSERT 0 0")
    assert ([], [new.request_id]) == await index_entries(pg_dsn)


async def test_cli_retention_blocked_by_a_long_query_fails_in_one_line(pg_dsn: str) -> None:
    """A query holding an old day's partition past retention's lock timeout: ``auditgate
    retention`` exits 2 with one line saying so (no traceback), and that day is still there;
    once the query ends, the same command drops it."""
    target = Target(pg_dsn)
    await target.insert([chat(0, "ancient", "answer", created_at=DAY0)])
    reader = await asyncpg.connect(pg_dsn)
    try:
        async with reader.transaction():
            await reader.fetch(f"SELECT request_id FROM {TABLE} WHERE created_at < $1", DAY0 + 1)
            blocked = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "auditgate", "retention", "--older-than", "30"],
                env=clean_env({"AUDITGATE_STORE_URL": pg_dsn}),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    finally:
        await reader.close()
    code, done = await retention_command("--older-than", "30", "--store", pg_dsn)
    assert (blocked.returncode, blocked.stdout, len(blocked.stderr.splitlines())) == (2, "", 1)
    assert "lock timeout" in blocked.stderr and "Traceback" not in blocked.stderr
    assert (code, done["rows"]) == (0, 1)
