"""The console's background full-text indexer keeps the index caught up without a search."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from auditgate.console.indexer import TextIndexer
from auditgate.store.queries import Filter
from auditgate.store.url import open_store
from tests.store.test_search import Target, chat


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """An empty store of each kind."""
    if request.param == "sqlite":
        return Target(f"sqlite:///{tmp_path / 'a.db'}")
    return Target(request.getfixturevalue("pg_dsn"))


async def pending(url: str) -> int:
    """Rows not yet in the full-text index, read straight from the database (asking the store
    would index them)."""
    if url.startswith("postgresql://"):
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM completions_text_queue"))
        finally:
            await conn.close()
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        query = (
            "SELECT (SELECT max(rowid) FROM completions) - last_rowid FROM completions_text_state"
        )
        return int(db.execute(query).fetchone()[0])
    finally:
        db.close()


async def wait_indexed(url: str, timeout: float = 10.0) -> int:
    """Rows still not indexed once the indexer had ``timeout`` to index them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    left = await pending(url)
    while left and loop.time() < deadline:
        await asyncio.sleep(0.05)
        left = await pending(url)
    return left


async def test_rows_stored_while_the_console_runs_get_indexed(target: Target) -> None:
    """Rows inserted after the indexer started are indexed by it: a later call finds nothing
    left to add, and a search finds them."""
    url = target.url
    await target.insert([chat(0, "first words", "an answer")])
    store = open_store(url)
    await store.open()
    indexer = TextIndexer(store, 0.02)
    indexer.start()
    try:
        await target.insert([chat(1, "platypus sighting", "noted")])
        left = await wait_indexed(url)
    finally:
        await indexer.stop()
    try:
        page = await store.list(
            Filter(text="platypus", stored_only=False), after=None, limit=5, order="asc"
        )
    finally:
        await store.close()
    assert (left, [s.record["seq"] for s in page.records]) == (0, [1])


async def test_failures_are_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A store that fails is retried every round and the failure logged once a minute."""

    class Failing:
        calls = 0

        async def index_text(self) -> int:
            Failing.calls += 1
            raise OSError("disk on fire")

    indexer = TextIndexer(Failing(), 0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="auditgate.console"):
        indexer.start()
        await asyncio.sleep(0.2)
        await indexer.stop()
    warnings = [r.getMessage() for r in caplog.records]
    assert (Failing.calls > 3, warnings) == (
        True,
        ["console: full-text indexing failed, retrying: disk on fire"],
    )
