"""The console's background full-text indexer keeps the index caught up without a search."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from pathlib import Path

import asyncpg
import httpx
import pytest

from auditgate.console.app import Console, ConsoleConfig
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


async def test_a_search_answers_from_the_index_and_says_how_far_behind_it_is(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records page of a search: with the indexer not running, it lists what the index
    holds and says how many records are not searchable yet; with it running, a search a few
    rows behind waits for it and finds them; one further behind than the wait allows answers
    at once and finds them after the indexer's round."""
    from auditgate.console import pages

    await target.insert([chat(i, "capybara herd", "x") for i in range(3)])
    store = open_store(target.url)
    await store.open()
    console = Console(ConsoleConfig(store_url=target.url, keys=None, index_interval_s=3600), store)
    seen = []
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=console), base_url="http://ui", follow_redirects=True
        ) as client:

            async def search() -> tuple[int, str]:
                html = (await client.get("/ui/records?q=capybara")).text
                notice = re.search(r'id="index-lag">(.*?)</p>', html, re.S)
                rows = html.count('href="/ui/records/')
                return rows, re.sub(r"<[^>]+>", "", notice.group(1)) if notice else ""

            seen.append(await search())  # indexer not running: the index as it is
            assert console.indexer is not None
            console.indexer.start()
            seen.append(await search())  # 3 rows behind: waits for the round
            monkeypatch.setattr(pages, "_WAIT_FOR_INDEXING_ROWS", 1)
            await target.insert([chat(i, "capybara late", "x") for i in range(3, 6)])
            seen.append(await search())  # beyond the wait: answers at once, wakes the indexer
            left = await wait_indexed(target.url)
            seen.append(await search())
    finally:
        await console.stop()
        await store.close()
    notice = (
        "The search index is catching up: 3 records stored most recently are not searchable yet"
    )
    assert [(rows, text.startswith(notice)) for rows, text in seen] == [
        (0, True),
        (3, False),
        (3, True),
        (6, False),
    ]
    assert left == 0
