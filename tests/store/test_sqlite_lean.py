"""SQLite's lean layout (m013): a contentless full-text index that deletes stay exact in, and
metadata pairs kept through the side table's primary key alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from msgspec.structs import replace

from auditgate.store import retention
from auditgate.store import sqlite as sqlite_store
from auditgate.store.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE_SQL,
    TEXT_STATE_TABLE,
    TEXT_TABLE,
    sqlite_text_of,
)
from auditgate.store.partitions import DAY_MS
from auditgate.store.queries import Filter
from auditgate.store.schema import METADATA_TABLE, MIGRATIONS_TABLE, TABLE, row_from_record
from auditgate.store.url import open_store
from tests.store.records import make_record
from tests.store.test_search import chat, found

DAY0 = 1758672000000
"""2025-09-24 00:00 UTC."""


def vocabulary(conn: sqlite3.Connection, table: str) -> list[tuple[str, int, int]]:
    """Every term of a full-text index with its row and occurrence counts."""
    conn.execute(f"CREATE VIRTUAL TABLE temp.v_{table} USING fts5vocab(main, {table}, 'row')")
    return [tuple(r) for r in conn.execute(f"SELECT term, doc, cnt FROM temp.v_{table}")]


def fresh_vocabulary(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """The vocabulary of an index built now from the rows the table holds."""
    conn.execute(
        "CREATE VIRTUAL TABLE fresh USING fts5(body, content='', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    conn.execute(f"INSERT INTO fresh (rowid, body) SELECT rowid, {sqlite_text_of('')} FROM {TABLE}")
    return vocabulary(conn, "fresh")


def pairs(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    """The metadata side table, sorted."""
    rows = conn.execute(f"SELECT request_id, key, value, created_at FROM {METADATA_TABLE}")
    return sorted(tuple(r) for r in rows)


def derived_pairs(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    """The side table as the stored rows' metadata says it must be."""
    rows = conn.execute(
        f"SELECT c.request_id, j.key, j.value, c.created_at FROM {TABLE} AS c, "
        "json_each(c.metadata) AS j WHERE j.type = 'text'"
    )
    return sorted(tuple(r) for r in rows)


async def test_text_index_stays_exact_through_retention_and_rowid_reuse(tmp_path: Path) -> None:
    """Retention deletes indexed rows, unindexed rows and the newest rows (whose rowids SQLite
    then reuses): the index always equals one built afresh from the rows left, and a search
    finds exactly the rows left."""
    path = tmp_path / "audit.db"
    url = f"sqlite:///{path}"
    day = [chat(i, f"walrus w{i}", f"tusk{i % 2}", created_at=DAY0 + i) for i in range(6)]
    later = [chat(10 + i, f"walrus w{10 + i}", "x", created_at=DAY0 + DAY_MS + i) for i in range(3)]
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in day + later[:2]])
    store = open_store(url)
    await store.open()
    try:
        before = await found(store, "walrus")  # indexes every row stored so far
        sqlite_store.insert_rows(conn, [row_from_record(later[2])])  # not indexed yet
        await retention.retain(url, DAY0 + DAY_MS)  # the whole first day goes
        with sqlite_store.write_transaction(conn):  # the newest rows too: their rowids free up
            conn.execute(f"DELETE FROM {TABLE} WHERE seq IN (11, 12)")
        newest = chat(20, "walrus narwhal", "x", created_at=DAY0 + 2 * DAY_MS)
        sqlite_store.insert_rows(conn, [row_from_record(newest)])
        after = [await found(store, word) for word in ("walrus", "tusk0", "narwhal", "w12")]
    finally:
        await store.close()
    assert (before, after) == ([0, 1, 2, 3, 4, 5, 10, 11], [[10, 20], [], [20], []])
    assert vocabulary(conn, TEXT_TABLE) == fresh_vocabulary(conn)
    conn.close()


async def test_metadata_pairs_follow_updates_and_deletes(tmp_path: Path) -> None:
    """The API's metadata updates and retention's deletes keep the side table equal to the
    stored rows' metadata, without the side table's request_id index."""
    path = tmp_path / "audit.db"
    url = f"sqlite:///{path}"
    records = [
        make_record(i, metadata={"team": f"t{i % 2}", "n": str(i)}, created_at=DAY0 + i * DAY_MS)
        for i in range(4)
    ]
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in records])
    store = open_store(url)
    await store.open()
    try:
        response_id = f"chatcmpl-{records[3].request_id}"
        await store.update_metadata(response_id, None, {"team": "moved"})
        await retention.retain(url, DAY0 + DAY_MS)
        moved = Filter(metadata={"team": "moved"})
        page = await store.list(moved, after=None, limit=5, order="asc")
    finally:
        await store.close()
    indexes = [r["name"] for r in conn.execute(f"PRAGMA index_list({METADATA_TABLE})")]
    # Three records left, two pairs each but the updated one: only {"team": "moved"}.
    assert (
        [records[3].request_id],
        5,
        derived_pairs(conn),
        [f"sqlite_autoindex_{METADATA_TABLE}_1"],
    ) == ([s.record["request_id"] for s in page.records], len(pairs(conn)), pairs(conn), indexes)
    conn.close()


async def test_m013_converts_a_store_made_before_it(tmp_path: Path) -> None:
    """A store made through m010, its text indexed the old way: m013 applies, the index is
    rebuilt on the next search, and metadata filters and updates still work."""
    path = tmp_path / "audit.db"
    url = f"sqlite:///{path}"
    m013 = [m.name for m in MIGRATIONS].index("m013_sqlite_lean_text_index")
    conn = sqlite_store.connect(path)
    with sqlite_store.write_transaction(conn):
        conn.execute(MIGRATIONS_TABLE_SQL["sqlite"])
        for migration in MIGRATIONS[:m013]:
            migration.sqlite(conn)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, 0)", (migration.name,))
    old = [replace(chat(i, f"walrus w{i}", "x"), metadata={"team": "a"}) for i in range(3)]
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in old])
    sqlite_store.index_text(conn)
    with sqlite_store.write_transaction(conn):
        conn.execute(f"DELETE FROM {TABLE} WHERE seq = 0")  # the old trigger keeps the old index
    applied = sqlite_store.migrate(conn)
    state = conn.execute(f"SELECT last_rowid FROM {TEXT_STATE_TABLE}").fetchone()[0]
    sqlite_store.insert_rows(conn, [row_from_record(chat(5, "walrus", "x"))])
    store = open_store(url)
    await store.open()
    try:
        words = [await found(store, w) for w in ("walrus", "w0", "w2")]
        await store.update_metadata(f"chatcmpl-{old[1].request_id}", None, {"team": "b"})
        teams = [
            [s.record["seq"] for s in page.records]
            for page in [
                await store.list(Filter(metadata={"team": t}), after=None, limit=5, order="asc")
                for t in ("a", "b")
            ]
        ]
    finally:
        await store.close()
    assert (applied[:1], state, words, teams, pairs(conn)) == (
        ["m013_sqlite_lean_text_index"],
        0,
        [[1, 2, 5], [], [2]],
        [[2], [1]],
        derived_pairs(conn),
    )
    assert vocabulary(conn, TEXT_TABLE) == fresh_vocabulary(conn)
    conn.close()
