"""Both stores, against real databases: lossless round trips, idempotence, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from auditgate.audit.record import AuditRecord, encode_record
from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.migrations import MIGRATIONS, MIGRATIONS_TABLE_SQL
from auditgate.store.queries import Filter, Sql, page_sql
from auditgate.store.rollups import LATENCY_TABLE, TENANT_LATENCY_TABLE, TOTALS_TABLE
from auditgate.store.schema import (
    HOLDS_TABLE,
    METADATA_TABLE,
    MIGRATIONS_TABLE,
    SELECT_COLUMNS,
    TABLE,
    Row,
    column_update,
    record_dict_from_row,
    record_from_row,
    row_from_json,
    row_from_record,
)
from tests.store.records import (
    extreme_record,
    make_record,
    minimal_record,
    nul_record,
    surrogate_record,
)

ALL_MIGRATIONS = [m.name for m in MIGRATIONS]


def by_id(records: Sequence[AuditRecord]) -> dict[str, AuditRecord]:
    return {r.request_id: r for r in records}


class Backend:
    """One store under test, with the same async interface for both databases."""

    name: str

    async def migrate(self) -> list[str]:
        raise NotImplementedError

    async def insert(self, rows: Sequence[Row]) -> int:
        raise NotImplementedError

    async def fetch(self, sql: str) -> list[Any]:
        raise NotImplementedError

    async def records(self) -> list[AuditRecord]:
        rows = await self.fetch(f"SELECT {SELECT_COLUMNS} FROM {TABLE} ORDER BY seq")
        return [record_from_row(row) for row in rows]


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite_store.connect(path)

    async def migrate(self) -> list[str]:
        return sqlite_store.migrate(self.conn)

    async def insert(self, rows: Sequence[Row]) -> int:
        return sqlite_store.insert_rows(self.conn, rows)

    async def fetch(self, sql: str) -> list[Any]:
        return self.conn.execute(sql).fetchall()


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, dsn: str, conn: Any) -> None:
        self.dsn = dsn
        self.conn = conn

    async def migrate(self) -> list[str]:
        return await pg_store.migrate(self.conn)

    async def insert(self, rows: Sequence[Row]) -> int:
        return await pg_store.insert_rows(self.conn, rows)

    async def fetch(self, sql: str) -> list[Any]:
        return list(await self.conn.fetch(sql))


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """A fresh, unmigrated SQLite store in a temporary directory."""
    backend = SqliteBackend(tmp_path / "store" / "audit.db")
    yield backend
    backend.conn.close()


@pytest.fixture
async def postgres_backend(pg_dsn: str) -> AsyncIterator[Backend]:
    """A fresh, unmigrated PostgreSQL store in its own database."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield PostgresBackend(pg_dsn, conn)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each store in turn."""
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


async def test_migrations_are_applied_once_and_recorded(backend: Backend) -> None:
    """The first run applies every migration in order and records it; a second run is a no-op."""
    first = await backend.migrate()
    second = await backend.migrate()
    recorded = await backend.fetch(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY name")
    assert (first, second, [r[0] for r in recorded]) == (ALL_MIGRATIONS, [], ALL_MIGRATIONS)


async def test_every_field_round_trips(backend: Backend) -> None:
    """Full, minimal, NUL-bearing, surrogate-bearing and extreme records come back equal."""
    await backend.migrate()
    published = [
        make_record(1),
        minimal_record(2),
        nul_record(3),
        surrogate_record(4),
        extreme_record(5),
        make_record(6, tenant=None, metadata={}, usage={"prompt_tokens": 1}),
    ]
    inserted = await backend.insert([row_from_record(r) for r in published])
    assert (6, by_id(published)) == (inserted, by_id(await backend.records()))


async def test_replaying_a_batch_adds_nothing(backend: Backend) -> None:
    """The same batch twice, and a batch holding one record twice, store each record once."""
    await backend.migrate()
    published = [make_record(i) for i in range(20)]
    rows = [row_from_record(r) for r in published]
    counts = [
        await backend.insert(rows),
        await backend.insert(rows),
        await backend.insert([*rows[:5], *rows[:5]]),
    ]
    assert ([20, 0, 0], published) == (counts, await backend.records())


async def test_unknown_fields_round_trip(backend: Backend) -> None:
    """A record line with fields of a newer version comes back whole, unknown fields included."""
    await backend.migrate()
    line = msgspec.json.decode(encode_record(make_record(7)))
    line["future"] = {"nested": ["a", 1, None]}
    await backend.insert([row_from_json(msgspec.json.encode(line))])
    rows = await backend.fetch(f"SELECT {SELECT_COLUMNS} FROM {TABLE}")
    assert [line] == [record_dict_from_row(row) for row in rows]


async def test_reused_response_id_is_stored_under_its_own_id(backend: Backend) -> None:
    """Two requests whose engine reused one response id are both stored; the second is renamed."""
    await backend.migrate()
    first = make_record(1, response={"id": "chatcmpl-same"})
    second = make_record(2, response={"id": "chatcmpl-same"})
    await backend.insert([row_from_record(first)])
    inserted = await backend.insert([row_from_record(second)])
    ids = await backend.fetch(f"SELECT request_id, response_id FROM {TABLE} ORDER BY seq")
    assert (
        1,
        [(first.request_id, "chatcmpl-same"), (second.request_id, f"chatcmpl-{second.request_id}")],
    ) == (
        inserted,
        [tuple(r) for r in ids],
    )
    assert [first, second] == await backend.records()


async def test_sqlite_metadata_index_follows_updates(tmp_path: Path) -> None:
    """SQLite's metadata side table tracks inserts, metadata updates and deletes."""
    conn = sqlite_store.connect(tmp_path / "audit.db")
    sqlite_store.migrate(conn)
    record = make_record(1, metadata={"team": "a", "run": "1"})
    sqlite_store.insert_rows(conn, [row_from_record(record), row_from_record(minimal_record(2))])
    query = f"SELECT key, value FROM {METADATA_TABLE} ORDER BY key"
    after_insert = [tuple(r) for r in conn.execute(query)]
    conn.execute(
        f"UPDATE {TABLE} SET metadata = ? WHERE request_id = ?", ('{"x": "y"}', record.request_id)
    )
    after_update = [tuple(r) for r in conn.execute(query)]
    conn.execute(f"DELETE FROM {TABLE} WHERE request_id = ?", (record.request_id,))
    after_delete = [tuple(r) for r in conn.execute(query)]
    conn.close()
    assert (
        after_insert,
        after_update,
        after_delete,
    ) == ([("run", "1"), ("team", "a")], [("x", "y")], [])


async def test_sqlite_replay_does_not_bring_back_replaced_metadata(tmp_path: Path) -> None:
    """A record replayed after its metadata was replaced leaves the side table as it is."""
    conn = sqlite_store.connect(tmp_path / "audit.db")
    sqlite_store.migrate(conn)
    record = make_record(1, metadata={"team": "a"})
    sqlite_store.insert_rows(conn, [row_from_record(record)])
    conn.execute(
        f"UPDATE {TABLE} SET metadata = ? WHERE request_id = ?", ('{"x": "y"}', record.request_id)
    )
    replayed = sqlite_store.insert_rows(conn, [row_from_record(record)])
    pairs = [tuple(r) for r in conn.execute(f"SELECT request_id, key, value FROM {METADATA_TABLE}")]
    conn.close()
    assert (0, [(record.request_id, "x", "y")]) == (replayed, pairs)


async def test_sqlite_m003_keeps_metadata_rows_and_indexes_tenant_rows(tmp_path: Path) -> None:
    """A database made before m003 keeps its metadata rows; new rows get theirs without the
    insert trigger, and tenant reads use the partial tenant index."""
    conn = sqlite_store.connect(tmp_path / "audit.db")
    old = make_record(1, metadata={"team": "a"})
    with sqlite_store.write_transaction(conn):
        conn.execute(MIGRATIONS_TABLE_SQL["sqlite"])
        for migration in MIGRATIONS[:2]:
            migration.sqlite(conn)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, 0)", (migration.name,))
        conn.execute(sqlite_store.INSERT_SQL, row_from_record(old))  # the old trigger's rows
    applied = sqlite_store.migrate(conn)
    new = make_record(2, metadata={"team": "b"}, tenant="t")
    sqlite_store.insert_rows(conn, [row_from_record(new), row_from_record(minimal_record(3))])
    pairs = sorted(
        tuple(r) for r in conn.execute(f"SELECT request_id, key, value FROM {METADATA_TABLE}")
    )
    triggers = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    sql = Sql("sqlite")
    statement = page_sql(sql, "request_id", Filter(tenant="t"), cursor=None, limit=5, order="asc")
    plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {statement}", sql.params)]
    tenant_rows = [r[0] for r in conn.execute(statement, sql.params)]
    conn.close()
    assert (
        ALL_MIGRATIONS[2:],
        sorted([(old.request_id, "team", "a"), (new.request_id, "team", "b")]),
        sorted([f"{TABLE}_metadata_update", f"{TABLE}_metadata_delete", f"{TABLE}_text_delete"]),
        [f"SEARCH {TABLE} USING INDEX {TABLE}_tenant (tenant=?)"],
        [new.request_id],
    ) == (applied, pairs, sorted(triggers), plan, tenant_rows)


def test_sqlite_concurrent_migrators_do_not_conflict(tmp_path: Path) -> None:
    """Two connections migrating the same new file at once: one applies all, the other none."""
    path = tmp_path / "audit.db"
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        conn = sqlite_store.connect(path)
        try:
            barrier.wait(5)
            results.append(sqlite_store.migrate(conn))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (errors, sorted(results)) == ([], [[], ALL_MIGRATIONS])


def test_sqlite_connect_waits_for_a_writer_to_switch_to_wal(tmp_path: Path) -> None:
    """connect waits out another connection's write lock on a file not yet in WAL mode."""
    path = tmp_path / "audit.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # SQLite answers a switch to WAL "locked" at once now
    release = threading.Timer(0.2, holder.execute, ("COMMIT",))
    release.start()
    try:
        conn = sqlite_store.connect(path, busy_timeout_s=10)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
    finally:
        release.join()
        holder.close()
    assert mode == "wal"


async def test_postgres_concurrent_migrators_do_not_conflict(pg_dsn: str) -> None:
    """Four connections migrating one new database at once: one applies all, the others none."""
    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(pg_store.migrate(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(results) == [[], [], [], ALL_MIGRATIONS]


async def test_postgres_named_schema(pg_dsn: str) -> None:
    """With a schema name, the migrations create it and put every table in it."""
    conn = await asyncpg.connect(pg_dsn, server_settings=pg_store.server_settings("audit_x"))
    try:
        applied = await pg_store.migrate(conn, "audit_x")
        tables = await conn.fetch(
            "SELECT c.relname AS table_name FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'audit_x' AND c.relkind IN ('r', 'p') "
            "AND NOT c.relispartition"
        )
    finally:
        await conn.close()
    assert (
        applied,
        sorted(r["table_name"] for r in tables),
    ) == (
        ALL_MIGRATIONS,
        sorted(
            [
                MIGRATIONS_TABLE,
                TABLE,
                TOTALS_TABLE,
                LATENCY_TABLE,
                TENANT_LATENCY_TABLE,
                HOLDS_TABLE,
                METADATA_TABLE,
                f"{TABLE}_text",
                f"{TABLE}_text_queue",
            ]
        ),
    )


async def test_postgres_indexes(pg_dsn: str) -> None:
    """PostgreSQL has the model, tenant, usage and GIN metadata indexes; pages in created-time
    order walk the primary key (m015 dropped m002's copy of it)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
        rows = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            TABLE,
        )
    finally:
        await conn.close()
    names = {r["indexname"]: r["indexdef"] for r in rows}
    assert sorted(names) == [
        "completions_metadata",
        "completions_model",
        "completions_pkey",
        "completions_tenant",
        "completions_usage",
    ]
    assert "USING gin (metadata jsonb_path_ops)" in names["completions_metadata"]
    assert "(created_at, request_id)" in names["completions_pkey"]


async def test_metadata_update_with_nul_stays_lossless(backend: Backend) -> None:
    """An UPDATE through ``column_update`` (the API's path) keeps a NUL-bearing value exactly."""
    await backend.migrate()
    record = nul_record(1)
    await backend.insert([row_from_record(record)])
    rows = await backend.fetch(f"SELECT originals FROM {TABLE}")
    metadata = {"new\x00": "value\x00", "plain": "x"}
    column, originals = column_update("metadata", metadata, rows[0][0])
    if isinstance(backend, SqliteBackend):
        sql = f"UPDATE {TABLE} SET metadata = ?, originals = ? WHERE request_id = ?"
        backend.conn.execute(sql, (column, originals, record.request_id))
    else:
        assert isinstance(backend, PostgresBackend)
        sql = f"UPDATE {TABLE} SET metadata = $1::jsonb, originals = $2 WHERE request_id = $3"
        await backend.conn.execute(sql, column, originals, record.request_id)
    record.metadata = metadata
    assert [record] == await backend.records()
