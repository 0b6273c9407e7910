"""Ordered schema migrations, recorded in ``schema_migrations`` (after simonw/llm).

Each :class:`Migration` is a named pair of functions, one per database, that move the schema one
step forward; the runners (:func:`auditgate.store.sqlite.migrate`,
:func:`auditgate.store.postgres.migrate`) apply, in order, every migration whose name is not yet
in ``schema_migrations`` and record it there, all in one transaction that holds a lock, so two
processes that migrate at once never conflict: the second one waits and finds nothing to do.

Rules: never edit or reorder a migration that shipped; add a new one at the end.  Both databases
get the same migrations (same names), so the two stores stay one logical schema.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from auditgate.store import rollups
from auditgate.store.partitions import DAY_MS, create_ahead, ensure_days, partitions
from auditgate.store.schema import HOLDS_TABLE, METADATA_TABLE, MIGRATIONS_TABLE, TABLE

SqliteStep = Callable[[sqlite3.Connection], None]
PostgresStep = Callable[[Any], Awaitable[None]]
"""Takes an ``asyncpg.Connection`` inside the migration transaction."""


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema."""

    name: str
    """Recorded in ``schema_migrations.name``; unique, never changed once shipped."""
    sqlite: SqliteStep
    """Applies the step to a SQLite connection (inside the migration transaction)."""
    postgres: PostgresStep
    """Applies the step to an asyncpg connection (inside the migration transaction)."""


def _table_sql(types: dict[str, str]) -> str:
    t = types
    return f"""
CREATE TABLE {TABLE} (
    request_id           {t["text"]} PRIMARY KEY,
    response_id          {t["text"]} NOT NULL UNIQUE,
    schema_version       {t["int"]} NOT NULL,
    requested_streaming  {t["bool"]} NOT NULL,
    mode                 {t["text"]} NOT NULL,
    model                {t["text"]} NOT NULL,
    usage                {t["json"]},
    request              {t["json"]},
    response             {t["json"]},
    endpoint             {t["text"]} NOT NULL,
    transport            {t["text"]} NOT NULL,
    engine               {t["text"]} NOT NULL,
    status               {t["text"]} NOT NULL,
    complete             {t["bool"]} NOT NULL,
    error                {t["json"]},
    created_at           {t["int"]} NOT NULL,
    completed_at         {t["int"]} NOT NULL,
    ttft_ms              {t["float"]},
    duration_ms          {t["float"]},
    tenant               {t["text"]},
    metadata             {t["json"]} NOT NULL,
    client_request_id    {t["text"]},
    engine_response_id   {t["text"]},
    http_request_headers {t["json"]},
    writer               {t["text"]} NOT NULL,
    seq                  {t["int"]} NOT NULL,
    integrity            {t["json"]},
    prompt_tokens        {t["int"]},
    completion_tokens    {t["int"]},
    total_tokens         {t["int"]},
    extra                {t["json"]},
    originals            {t["text"]},
    deleted_at           {t["int"]}
)"""


_SQLITE_TYPES: Final = {
    "text": "TEXT",
    "int": "INTEGER",
    "bool": "INTEGER",
    "float": "REAL",
    "json": "TEXT",
}
_POSTGRES_TYPES: Final = {
    "text": "text",
    "int": "bigint",
    "bool": "boolean",
    "float": "double precision",
    "json": "jsonb",
}

# Listing pages by (created_at, request_id), optionally narrowed by model or tenant: the
# stored-completions API's and the stats' access paths.
_BTREE_INDEXES: Final = (
    f"CREATE INDEX {TABLE}_created ON {TABLE} (created_at, request_id)",
    f"CREATE INDEX {TABLE}_model ON {TABLE} (model, created_at, request_id)",
    f"CREATE INDEX {TABLE}_tenant ON {TABLE} (tenant, created_at, request_id)",
)


def _m001_sqlite(db: sqlite3.Connection) -> None:
    db.execute(_table_sql(_SQLITE_TYPES))


async def _m001_postgres(db: Any) -> None:
    await db.execute(_table_sql(_POSTGRES_TYPES))


_SQLITE_METADATA_ROWS: Final = (
    f"INSERT OR IGNORE INTO {METADATA_TABLE} (request_id, key, value) "
    "SELECT NEW.request_id, j.key, j.value FROM json_each(NEW.metadata) AS j WHERE j.type = 'text'"
)


def _m002_sqlite(db: sqlite3.Connection) -> None:
    for statement in _BTREE_INDEXES:
        db.execute(statement)
    # SQLite has no GIN: a side table, kept by triggers, indexes metadata key/value filters.
    db.execute(
        f"CREATE TABLE {METADATA_TABLE} (request_id TEXT NOT NULL, key TEXT NOT NULL, "
        "value TEXT NOT NULL, PRIMARY KEY (key, value, request_id)) WITHOUT ROWID"
    )
    db.execute(f"CREATE INDEX {METADATA_TABLE}_request ON {METADATA_TABLE} (request_id)")
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_insert AFTER INSERT ON {TABLE} "
        f"WHEN NEW.metadata <> '{{}}' BEGIN {_SQLITE_METADATA_ROWS}; END"
    )
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_update AFTER UPDATE OF metadata ON {TABLE} BEGIN "
        f"DELETE FROM {METADATA_TABLE} WHERE request_id = OLD.request_id; "
        f"{_SQLITE_METADATA_ROWS}; END"
    )
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_delete AFTER DELETE ON {TABLE} BEGIN "
        f"DELETE FROM {METADATA_TABLE} WHERE request_id = OLD.request_id; END"
    )


async def _m002_postgres(db: Any) -> None:
    for statement in _BTREE_INDEXES:
        await db.execute(statement)
    # jsonb_path_ops serves the API's filter `metadata @> '{"key": "value"}'`.
    await db.execute(
        f"CREATE INDEX {TABLE}_metadata ON {TABLE} USING gin (metadata jsonb_path_ops)"
    )


def _m003_sqlite(db: sqlite3.Connection) -> None:
    # The insert trigger cost every insert (SQLite copies the whole new row, ~4 KiB of bodies,
    # for a trigger), even the many rows without metadata: about a third of the sink's time.
    # :func:`auditgate.store.sqlite.insert_rows` now fills the side table itself, in the same
    # transaction, and only for rows that have metadata.  The update and delete triggers stay:
    # they never run on the sink's path.
    db.execute(f"DROP TRIGGER {TABLE}_metadata_insert")
    # Rows without a tenant (open mode: all of them) no longer pay for this index; a tenant's
    # reads (`tenant = ?`, which implies `tenant IS NOT NULL`) still use it.
    db.execute(f"DROP INDEX {TABLE}_tenant")
    db.execute(
        f"CREATE INDEX {TABLE}_tenant ON {TABLE} (tenant, created_at, request_id) "
        "WHERE tenant IS NOT NULL"
    )


async def _m003_postgres(db: Any) -> None:
    """Nothing to do: PostgreSQL has no trigger, and its indexes stay as they are."""


def _m004_sqlite(db: sqlite3.Connection) -> None:
    # The stored-completions API replaces a record's metadata; the metadata the record was
    # hashed with is kept for ``auditgate verify`` (schema.API_COLUMNS).
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN recorded_metadata TEXT")
    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN metadata_updated_at INTEGER")


async def _m004_postgres(db: Any) -> None:
    # Nullable columns without a default: PostgreSQL adds them without rewriting the table.
    await db.execute(
        f"ALTER TABLE {TABLE} ADD COLUMN recorded_metadata text, "
        "ADD COLUMN metadata_updated_at bigint"
    )


_OLD_TABLE: Final = f"{TABLE}_unpartitioned"
_LZ4_COLUMNS: Final = (
    "usage",
    "request",
    "response",
    "error",
    "metadata",
    "http_request_headers",
    "integrity",
    "extra",
    "originals",
    "recorded_metadata",
)
"""Columns whose large values PostgreSQL TOASTs: lz4 where the server has it (compresses about
as well as pglz, several times faster)."""


def _m005_sqlite(db: sqlite3.Connection) -> None:
    """Nothing to do: SQLite has no partitions (its retention deletes in batches)."""


async def _m005_postgres(db: Any) -> None:
    # Converts the table in place, inside the migration transaction: the rows are copied into
    # day partitions (a store with many rows takes about as long as writing them took; the
    # README says how to plan it).  Indexes the table has (m002's and any later migration's) are
    # re-created on the partitioned table from their own definitions.
    keys = (f"{TABLE}_pkey", f"{TABLE}_response_id_key")
    definitions = [
        (r["indexname"], r["indexdef"])
        for r in await db.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname",
            TABLE,
        )
        if r["indexname"] not in keys
    ]
    for name, _ in definitions:
        await db.execute(f'DROP INDEX "{name}"')
    await db.execute(f"ALTER TABLE {TABLE} RENAME TO {_OLD_TABLE}")
    for constraint in keys:
        await db.execute(f'ALTER TABLE {_OLD_TABLE} DROP CONSTRAINT "{constraint}"')
    await db.execute(
        f"CREATE TABLE {TABLE} (LIKE {_OLD_TABLE} INCLUDING DEFAULTS INCLUDING STORAGE, "
        "PRIMARY KEY (created_at, request_id)) PARTITION BY RANGE (created_at)"
    )
    lz4 = await db.fetchval(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    if lz4:
        await db.execute(
            f"ALTER TABLE {TABLE} "
            + ", ".join(f"ALTER COLUMN {c} SET COMPRESSION lz4" for c in _LZ4_COLUMNS)
        )
    for _, definition in definitions:
        await db.execute(definition)
    days = await db.fetch(f"SELECT DISTINCT floor(created_at / {DAY_MS}.0) FROM {_OLD_TABLE}")
    await ensure_days(db, [int(r[0]) for r in days])
    await create_ahead(db, int(time.time() * 1000))
    await db.execute(f"INSERT INTO {TABLE} SELECT * FROM {_OLD_TABLE}")
    await db.execute(f"DROP TABLE {_OLD_TABLE}")


def _m006_sqlite(db: sqlite3.Connection) -> None:
    for statement in rollups.tables_sql(_SQLITE_TYPES):
        db.execute(statement)
    delta = rollups.Delta()
    for row in db.execute(rollups.BACKFILL_SQL):
        delta.add(tuple(row)[:-1], deleted=row["deleted_at"] is not None)
    db.executemany(rollups.upsert_totals_sql("sqlite"), delta.totals_rows())
    db.executemany(rollups.upsert_latency_sql("sqlite"), delta.latency_rows())


async def _m006_postgres(db: Any) -> None:
    for statement in rollups.tables_sql(_POSTGRES_TYPES):
        await db.execute(statement)
    # The backfill reads the rollup columns only (no body), through a server-side cursor.
    delta = rollups.Delta()
    async for row in db.cursor(rollups.BACKFILL_SQL, prefetch=5000):
        delta.add(tuple(row)[:-1], deleted=row["deleted_at"] is not None)
    await db.executemany(rollups.upsert_totals_sql("postgres"), delta.totals_rows())
    await db.executemany(rollups.upsert_latency_sql("postgres"), delta.latency_rows())


def _m007_sqlite(db: sqlite3.Connection) -> None:
    db.execute(
        f"CREATE TABLE {HOLDS_TABLE} (name TEXT PRIMARY KEY, tenant TEXT, "
        "reason TEXT NOT NULL, created_at INTEGER NOT NULL)"
    )


async def _m007_postgres(db: Any) -> None:
    await db.execute(
        f"CREATE TABLE {HOLDS_TABLE} (name text PRIMARY KEY, tenant text, "
        "reason text NOT NULL, created_at bigint NOT NULL)"
    )


def _m008_sqlite(db: sqlite3.Connection) -> None:
    # The side table gains created_at in its key: a metadata filter then walks one key/value's
    # rows in (created_at, request_id) order and stops at the page's end, instead of fetching
    # and sorting every match (1.7-3.1 s for a value a third of a million rows hold).
    db.execute(
        f"CREATE TABLE {METADATA_TABLE}_new (request_id TEXT NOT NULL, key TEXT NOT NULL, "
        "value TEXT NOT NULL, created_at INTEGER NOT NULL, "
        "PRIMARY KEY (key, value, created_at, request_id)) WITHOUT ROWID"
    )
    db.execute(
        f"INSERT INTO {METADATA_TABLE}_new (request_id, key, value, created_at) "
        f"SELECT m.request_id, m.key, m.value, c.created_at FROM {METADATA_TABLE} AS m "
        f"JOIN {TABLE} AS c ON c.request_id = m.request_id"
    )
    db.execute(f"DROP TRIGGER {TABLE}_metadata_update")
    db.execute(f"DROP TRIGGER {TABLE}_metadata_delete")
    db.execute(f"DROP TABLE {METADATA_TABLE}")
    db.execute(f"ALTER TABLE {METADATA_TABLE}_new RENAME TO {METADATA_TABLE}")
    db.execute(f"CREATE INDEX {METADATA_TABLE}_request ON {METADATA_TABLE} (request_id)")
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_update AFTER UPDATE OF metadata ON {TABLE} BEGIN "
        f"DELETE FROM {METADATA_TABLE} WHERE request_id = OLD.request_id; "
        f"INSERT OR IGNORE INTO {METADATA_TABLE} (request_id, key, value, created_at) "
        "SELECT NEW.request_id, j.key, j.value, NEW.created_at FROM json_each(NEW.metadata) AS j "
        "WHERE j.type = 'text'; END"
    )
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_delete AFTER DELETE ON {TABLE} BEGIN "
        f"DELETE FROM {METADATA_TABLE} WHERE request_id = OLD.request_id; END"
    )


async def _m008_postgres(db: Any) -> None:
    """Nothing to do: PostgreSQL has no side table (see README, metadata filters)."""


TEXT_TABLE: Final = f"{TABLE}_text"
"""The full-text index of every string in a row's request and response bodies.  SQLite: an FTS5
table (``rowid`` the row's; a trigger takes out a row the table deletes); PostgreSQL:
``(request_id, words tsvector)`` with a GIN index.  Filled by the console in the background
(:func:`auditgate.store.sqlite.index_text`, :func:`auditgate.store.postgres.index_text`; a
search reads what it holds), never by a sink: bodies are immutable, and
computing every row's words on insert took PostgreSQL's sink from ~2,900 to ~700 rows/s."""
TEXT_STATE_TABLE: Final = f"{TABLE}_text_state"
"""SQLite only: one row, the highest ``rowid`` :data:`TEXT_TABLE` holds: the rows above it are
exactly the ones to index (new rows get higher rowids; when the newest rows are deleted, the
delete trigger lowers it, as SQLite may then give their rowids to new rows)."""
TEXT_QUEUE_TABLE: Final = f"{TABLE}_text_queue"
"""PostgreSQL only: ``(created_at, request_id)`` of rows not yet in :data:`TEXT_TABLE` (the
time since ``m012_text_queue_by_time``), added by a statement-level insert trigger in the
inserting transaction (so no row is ever missed, whatever the commit order), taken out, newest
first, by the indexer in the transaction that indexes them."""
POSTGRES_TEXT_VECTOR: Final = (
    "(jsonb_to_tsvector('simple'::regconfig, coalesce(request, '{}'::jsonb), '[\"string\"]') "
    "|| jsonb_to_tsvector('simple'::regconfig, coalesce(response, '{}'::jsonb), '[\"string\"]'))"
)
"""PostgreSQL: the words of every string in a row's bodies (no JSON key)."""


# The console's usage charts aggregate a time range by these columns; holding them all, the
# index answers without reading the rows (whose JSON bodies are most of the table, in SQLite
# before the columns aggregated).  Appended in time order, so it costs inserts little.
_USAGE_INDEX: Final = (
    f"CREATE INDEX {TABLE}_usage ON {TABLE} (created_at, model, tenant, status, mode, endpoint, "
    "deleted_at, prompt_tokens, completion_tokens, duration_ms, ttft_ms)"
)


def _m009_sqlite(db: sqlite3.Connection) -> None:
    db.execute(_USAGE_INDEX)
    # unicode61 folds case and diacritics, like PostgreSQL's 'simple' configuration (no stems).
    # The index keeps its text, so a deleted row's entry can be deleted (retention deletes rows).
    db.execute(
        f"CREATE VIRTUAL TABLE {TEXT_TABLE} USING fts5(body, "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    db.execute(f"CREATE TABLE {TEXT_STATE_TABLE} (last_rowid INTEGER NOT NULL)")
    db.execute(f"INSERT INTO {TEXT_STATE_TABLE} (last_rowid) VALUES (0)")
    # A deleted row leaves the index; when it was the newest, SQLite may give its rowid to the
    # next row, so the rows past the newest left are indexed again.
    db.execute(
        f"CREATE TRIGGER {TEXT_TABLE}_delete AFTER DELETE ON {TABLE} BEGIN "
        f"DELETE FROM {TEXT_TABLE} WHERE rowid = OLD.rowid; "
        f"UPDATE {TEXT_STATE_TABLE} SET last_rowid = "
        f"(SELECT coalesce(max(rowid), 0) FROM {TABLE}) WHERE last_rowid > "
        f"(SELECT coalesce(max(rowid), 0) FROM {TABLE}); END"
    )


async def _m009_postgres(db: Any) -> None:
    await db.execute(_USAGE_INDEX)
    await db.execute(
        f"CREATE TABLE {TEXT_TABLE} (request_id text PRIMARY KEY, words tsvector NOT NULL)"
    )
    await db.execute(f"CREATE INDEX {TEXT_TABLE}_words ON {TEXT_TABLE} USING gin (words)")
    await db.execute(f"CREATE TABLE {TEXT_QUEUE_TABLE} (request_id text PRIMARY KEY)")
    # One call per INSERT statement (a sink's batch), not per row: the trigger copies the new
    # rows' ids from the statement's transition table.
    await db.execute(
        f"CREATE FUNCTION {TEXT_QUEUE_TABLE}_add() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {TEXT_QUEUE_TABLE} (request_id) SELECT request_id FROM added "
        "ON CONFLICT DO NOTHING; RETURN NULL; END $$"
    )
    await db.execute(
        f"CREATE TRIGGER {TEXT_QUEUE_TABLE}_add AFTER INSERT ON {TABLE} "
        "REFERENCING NEW TABLE AS added FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {TEXT_QUEUE_TABLE}_add()"
    )
    await db.execute(f"INSERT INTO {TEXT_QUEUE_TABLE} (request_id) SELECT request_id FROM {TABLE}")


# The console's usage page sums the rollups of a time range per hour (and model and tenant, or
# latency bucket). The primary keys lead with hour but then model and tenant, so grouping by
# hour and latency bucket needed a sort of every row of the range, and each row was looked up
# in the table: 850 ms for a week of 200k records on SQLite.  These indexes hold every column
# those reads touch, in the order they group by: the database streams them (150 ms).
_ROLLUP_READ_INDEXES: Final = (
    f"CREATE INDEX {rollups.TOTALS_TABLE}_read ON {rollups.TOTALS_TABLE} (hour, model, tenant, "
    "deleted, endpoint, requests, prompt_tokens, completion_tokens, errors, cancelled)",
    f"CREATE INDEX {rollups.LATENCY_TABLE}_read ON {rollups.LATENCY_TABLE} (hour, metric, "
    "bucket, deleted, model, tenant, endpoint, count)",
)


def _m010_sqlite(db: sqlite3.Connection) -> None:
    for statement in _ROLLUP_READ_INDEXES:
        db.execute(statement)


async def _m010_postgres(db: Any) -> None:
    for statement in _ROLLUP_READ_INDEXES:
        await db.execute(statement)


# The usage page of a week read one histogram row per hour, model, tenant, endpoint and latency
# bucket from usage_latency: about a row per record at 200k records a week, so its time grew with
# the store.  This table holds the same histograms per hour and tenant, and per hour for all
# tenants; filled here from usage_latency (the same counts, summed), kept by every writer with the
# other rollups (rollups.Delta.tenant_latency_rows).


def _m011_sqlite(db: sqlite3.Connection) -> None:
    for statement in rollups.tenant_latency_sql(_SQLITE_TYPES, after=" WITHOUT ROWID"):
        db.execute(statement)


async def _m011_postgres(db: Any) -> None:
    for statement in rollups.tenant_latency_sql(_POSTGRES_TYPES, include=" INCLUDE (count)"):
        await db.execute(statement)


def _m012_sqlite(db: sqlite3.Connection) -> None:
    """Nothing to do: SQLite indexes the rows above a rowid, each found by its key."""


async def _m012_postgres(db: Any) -> None:
    # The queue held request ids only, and the table's key is (created_at, request_id): each
    # batch the indexer took was looked up by scanning every day partition's key (220 rows/s
    # at 200k rows, slower the bigger the store).  Keyed (created_at, request_id), a batch is
    # found by one probe per row in its partition, and taken newest first (a backward walk of
    # the queue's key): after a bulk load, the recent records become searchable first.
    q = TEXT_QUEUE_TABLE
    await db.execute(f"ALTER TABLE {q} ADD COLUMN created_at bigint")
    await db.execute(
        f"UPDATE {q} SET created_at = c.created_at FROM {TABLE} AS c "
        f"WHERE c.request_id = {q}.request_id"
    )
    await db.execute(f"DELETE FROM {q} WHERE created_at IS NULL")  # rows deleted since
    await db.execute(f"ALTER TABLE {q} ALTER COLUMN created_at SET NOT NULL")
    await db.execute(f"ALTER TABLE {q} DROP CONSTRAINT {q}_pkey")
    await db.execute(f"ALTER TABLE {q} ADD PRIMARY KEY (created_at, request_id)")
    await db.execute(
        f"CREATE OR REPLACE FUNCTION {q}_add() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {q} (created_at, request_id) SELECT created_at, request_id FROM added "
        "ON CONFLICT DO NOTHING; RETURN NULL; END $$"
    )


# SQLite's full-text index kept a copy of every row's text (m009: an FTS5 table with content),
# one 4 KiB row per 8 KiB page: 8.2 KB per record on top of the 2.2 KB index itself, when the
# console has indexed the store.  Contentless, it keeps only the index; a deleted row is taken
# out with FTS5's 'delete' command, which needs the text the row was indexed with: the trigger
# recomputes it from the deleted row's bodies (immutable, so it is the same text), and only for
# rows the index holds (rowid <= last_rowid; the rows above were never indexed).
SQLITE_BODY_TEXT: Final = (
    "coalesce((SELECT group_concat(value, ' ') FROM json_tree({0}) WHERE type = 'text'), '')"
)
"""SQLite: the words of one body column (every string value, no JSON key)."""


def sqlite_text_of(prefix: str) -> str:
    """SQLite: the text :data:`TEXT_TABLE` indexes for a row, from ``{prefix}request`` and
    ``{prefix}response`` (``""``: the table's columns; ``"OLD."``: a trigger's deleted row)."""
    request = SQLITE_BODY_TEXT.format(f"{prefix}request")
    response = SQLITE_BODY_TEXT.format(f"{prefix}response")
    return f"{request} || ' ' || {response}"


def _m013_sqlite(db: sqlite3.Connection) -> None:
    db.execute(f"DROP TRIGGER {TEXT_TABLE}_delete")
    db.execute(f"DROP TABLE {TEXT_TABLE}")
    db.execute(
        f"CREATE VIRTUAL TABLE {TEXT_TABLE} USING fts5(body, content='', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    # The console's background indexing fills it again, 2,000 rows a
    # transaction, so the sink's writes interleave: the migration itself stays quick.
    db.execute(f"UPDATE {TEXT_STATE_TABLE} SET last_rowid = 0")
    db.execute(
        f"CREATE TRIGGER {TEXT_TABLE}_delete AFTER DELETE ON {TABLE} BEGIN "
        f"INSERT INTO {TEXT_TABLE} ({TEXT_TABLE}, rowid, body) "
        f"SELECT 'delete', OLD.rowid, {sqlite_text_of('OLD.')} "
        f"WHERE OLD.rowid <= (SELECT last_rowid FROM {TEXT_STATE_TABLE}); "
        f"UPDATE {TEXT_STATE_TABLE} SET last_rowid = "
        f"(SELECT coalesce(max(rowid), 0) FROM {TABLE}) WHERE last_rowid > "
        f"(SELECT coalesce(max(rowid), 0) FROM {TABLE}); END"
    )
    # The side table's own request_id index (137 B a record) served only the update and delete
    # triggers; they now delete a row's pairs through the primary key, from the metadata the
    # pairs were made of (the side table is always derived from the stored metadata).
    db.execute(f"DROP TRIGGER {TABLE}_metadata_update")
    db.execute(f"DROP TRIGGER {TABLE}_metadata_delete")
    db.execute(f"DROP INDEX {METADATA_TABLE}_request")
    pairs_of_old = (
        f"DELETE FROM {METADATA_TABLE} WHERE (key, value, created_at, request_id) IN "
        "(SELECT j.key, j.value, OLD.created_at, OLD.request_id FROM json_each(OLD.metadata) "
        "AS j WHERE j.type = 'text')"
    )
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_update AFTER UPDATE OF metadata ON {TABLE} BEGIN "
        f"{pairs_of_old}; "
        f"INSERT OR IGNORE INTO {METADATA_TABLE} (request_id, key, value, created_at) "
        "SELECT NEW.request_id, j.key, j.value, NEW.created_at FROM json_each(NEW.metadata) AS j "
        "WHERE j.type = 'text'; END"
    )
    db.execute(
        f"CREATE TRIGGER {TABLE}_metadata_delete AFTER DELETE ON {TABLE} "
        f"WHEN OLD.metadata <> '{{}}' BEGIN {pairs_of_old}; END"
    )


async def _m013_postgres(db: Any) -> None:
    """Nothing to do: PostgreSQL's text index holds no copy of the text (a tsvector)."""


# PostgreSQL's metadata filter read a value's matches through the GIN index and sorted them all
# (a third of the store: every third row), or walked the table in created_at order until a page
# of matches came (a value no row holds: the whole table); a generic plan picks one of the two
# for every value.  The side table SQLite has had since m008, partitioned by day with the table
# (retention drops both), walks one key and value's rows in page order instead, whatever their
# number.  Kept by statement-level triggers, so every writer (sinks, consumers, imports, the
# API's updates, retention's deletes of one tenant) keeps it.
_PG_PAIRS_OF: Final = (
    "SELECT j.key, j.value #>> '{{}}', r.created_at, r.request_id FROM {0} AS r "
    "CROSS JOIN LATERAL jsonb_each(r.metadata) AS j WHERE jsonb_typeof(j.value) = 'string'"
)
_PG_DELETE_PAIRS_OF: Final = (
    f"DELETE FROM {METADATA_TABLE} AS m USING {{0}} AS r CROSS JOIN LATERAL "
    "jsonb_each(r.metadata) AS j WHERE m.key = j.key AND m.value = j.value #>> '{{}}' "
    "AND m.created_at = r.created_at AND m.request_id = r.request_id"
)
_PG_METADATA_TRIGGERS: Final = (
    (
        "add",
        "INSERT",
        "NEW TABLE AS added",
        (
            f"INSERT INTO {METADATA_TABLE} (key, value, created_at, request_id) "
            f"{_PG_PAIRS_OF.format('added')} ON CONFLICT DO NOTHING",
        ),
    ),
    (
        "change",
        "UPDATE",
        "OLD TABLE AS before NEW TABLE AS after",
        (
            f"{_PG_DELETE_PAIRS_OF.format('before')} AND NOT EXISTS (SELECT 1 FROM after AS a "
            "WHERE a.created_at = r.created_at AND a.request_id = r.request_id "
            "AND a.metadata = r.metadata)",
            f"INSERT INTO {METADATA_TABLE} (key, value, created_at, request_id) "
            f"{_PG_PAIRS_OF.format('after')} AND NOT EXISTS (SELECT 1 FROM before AS b "
            "WHERE b.created_at = r.created_at AND b.request_id = r.request_id "
            "AND b.metadata = r.metadata) ON CONFLICT DO NOTHING",
        ),
    ),
    ("remove", "DELETE", "OLD TABLE AS gone", (_PG_DELETE_PAIRS_OF.format("gone"),)),
)


def _m014_sqlite(db: sqlite3.Connection) -> None:
    """Nothing to do: SQLite has had its side table since m008."""


async def _m014_postgres(db: Any) -> None:
    await db.execute(
        f"CREATE TABLE {METADATA_TABLE} (key text NOT NULL, value text NOT NULL, "
        "created_at bigint NOT NULL, request_id text NOT NULL, "
        "PRIMARY KEY (key, value, created_at, request_id)) PARTITION BY RANGE (created_at)"
    )
    days = [p.start_ms // DAY_MS for p in await partitions(db)]
    await ensure_days(db, days)  # the side table's partitions of the days the table has
    for name, event, tables, statements in _PG_METADATA_TRIGGERS:
        body = "; ".join(statements)
        await db.execute(
            f"CREATE FUNCTION {METADATA_TABLE}_{name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {body}; RETURN NULL; END $$"
        )
        await db.execute(
            f"CREATE TRIGGER {METADATA_TABLE}_{name} AFTER {event} ON {TABLE} "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {METADATA_TABLE}_{name}()"
        )
    await db.execute(
        f"INSERT INTO {METADATA_TABLE} (key, value, created_at, request_id) "
        f"{_PG_PAIRS_OF.format(TABLE)}"
    )


def _m015_sqlite(db: sqlite3.Connection) -> None:
    """Nothing to do: SQLite's primary key is ``request_id`` alone, and pages walk
    ``completions_created``."""


async def _m015_postgres(db: Any) -> None:
    # Since m005 the primary key is (created_at, request_id): m002's index on the same columns
    # duplicates it (68 B a record at 100k, and one more index write per insert).  Dropping an
    # index takes a moment's exclusive lock; pages walk the primary key instead.
    await db.execute(f"DROP INDEX IF EXISTS {TABLE}_created")


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration("m001_completions", _m001_sqlite, _m001_postgres),
    Migration("m002_indexes", _m002_sqlite, _m002_postgres),
    Migration("m003_lean_sqlite_inserts", _m003_sqlite, _m003_postgres),
    Migration("m004_recorded_metadata", _m004_sqlite, _m004_postgres),
    Migration("m005_partitions", _m005_sqlite, _m005_postgres),
    Migration("m006_rollups", _m006_sqlite, _m006_postgres),
    Migration("m007_legal_holds", _m007_sqlite, _m007_postgres),
    Migration("m008_metadata_in_time_order", _m008_sqlite, _m008_postgres),
    Migration("m009_console", _m009_sqlite, _m009_postgres),
    Migration("m010_rollup_read_indexes", _m010_sqlite, _m010_postgres),
    Migration("m011_tenant_latency", _m011_sqlite, _m011_postgres),
    Migration("m012_text_queue_by_time", _m012_sqlite, _m012_postgres),
    Migration("m013_sqlite_lean_text_index", _m013_sqlite, _m013_postgres),
    Migration("m014_postgres_metadata_in_time_order", _m014_sqlite, _m014_postgres),
    Migration("m015_postgres_no_duplicate_index", _m015_sqlite, _m015_postgres),
)
"""Every migration, in the order it must be applied."""

MIGRATIONS_TABLE_SQL: Final = {
    "sqlite": f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
    "(name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    "postgres": f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
    "(name text PRIMARY KEY, applied_at bigint NOT NULL)",
}
