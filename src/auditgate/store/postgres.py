"""The PostgreSQL store: DSN checks, migrations and idempotent batch inserts (asyncpg).

Functions take an ``asyncpg`` connection (from a pool or not).  The table lives in the
connection's ``search_path`` schema; :func:`server_settings` builds the connection setting that
puts it in a chosen schema.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg

from auditgate.errors import ConfigError
from auditgate.store import partitions, rollups
from auditgate.store.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE_SQL,
    POSTGRES_TEXT_VECTOR,
    TEXT_QUEUE_TABLE,
    TEXT_TABLE,
)
from auditgate.store.schema import (
    COLUMN_NAMES,
    COLUMNS,
    MIGRATIONS_TABLE,
    TABLE,
    Row,
    with_own_response_id,
)

log = logging.getLogger("auditgate.store")

UNREACHABLE: Final[tuple[type[BaseException], ...]] = (
    OSError,  # refused, unreachable, DNS, TLS handshake
    TimeoutError,
    asyncpg.PostgresConnectionError,  # connection lost or never established
    asyncpg.exceptions.OperatorInterventionError,  # starting up, shutting down
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)
"""Errors that mean "the server is down or busy right now": retried or
answered with 503, never a startup error."""

SCHEMES: Final = ("postgresql", "postgres")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PG_TYPES: Final = {
    "text": "text",
    "json": "jsonb",
    "int": "bigint",
    "bool": "boolean",
    "float": "double precision",
}
_NAMES: Final = ", ".join(name for name, _ in COLUMNS)
_CREATED_AT: Final = COLUMN_NAMES.index("created_at")
_UPSERT_TOTALS: Final = rollups.upsert_totals_sql("postgres")
_UPSERT_LATENCY: Final = rollups.upsert_latency_sql("postgres")
_UPSERT_TENANT_LATENCY: Final = rollups.upsert_tenant_latency_sql("postgres")
INCOMING: Final = f"{TABLE}_incoming"
"""Per-connection temporary table a batch is copied into before the idempotent insert."""
# COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING: measured
# ~25% faster than a single multi-row INSERT over unnest() arrays for ~4 KiB records, and COPY
# cannot itself skip conflicting rows.  ON COMMIT DELETE ROWS empties it after every batch.
_INCOMING_SQL: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {INCOMING} "
    f"({', '.join(f'{name} {_PG_TYPES[kind]}' for name, kind in COLUMNS)}) ON COMMIT DELETE ROWS"
)
_MOVE_SQL: Final = (
    f"INSERT INTO {TABLE} ({_NAMES}) SELECT {_NAMES} FROM pg_temp.{INCOMING} "
    "ON CONFLICT DO NOTHING RETURNING request_id"
)


def check_dsn(dsn: str) -> None:
    """Raise :class:`ConfigError` unless ``dsn`` is a ``postgresql://`` (or ``postgres://``) URL.

    The message never holds the password.
    """
    try:
        parts = urlsplit(dsn)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"PostgreSQL URL {redact_dsn(dsn)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"PostgreSQL URL {redact_dsn(dsn)!r}: scheme must be postgresql:// or postgres://"
        )


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (if any) replaced by ``***``, for messages and reprs."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if password is None and "password=" not in parts.query:
        return dsn
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def hide_password(text: str, dsn: str) -> str:
    """``text`` with every occurrence of ``dsn``'s password (raw or URL-decoded) replaced."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return text.replace(dsn, "<unparseable URL>")
    secrets = parse_qs(parts.query).get("password", [])
    if password:
        secrets += [password, unquote(password)]
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_schema(schema: str) -> str:
    """``schema`` if it is a plain identifier (letters, digits, ``_``); else ConfigError."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigError(f"PostgreSQL schema {schema!r}: expected a plain identifier [A-Za-z0-9_]")
    return schema


def server_settings(schema: str | None) -> dict[str, str]:
    """asyncpg ``server_settings`` that make ``schema`` the connection's search path."""
    return {} if schema is None else {"search_path": check_schema(schema)}


async def migrate(conn: Any, schema: str | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now (often none).

    ``conn`` is an asyncpg connection whose search path selects ``schema`` (``None``: its
    default schema); a named schema is created if missing.  Runs in one transaction under a
    transaction-level advisory lock keyed on the schema, so concurrent migrators serialise and
    the later ones find nothing left to do.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{check_schema(schema)}"')
        await conn.execute(MIGRATIONS_TABLE_SQL["postgres"])
        done = {r["name"] for r in await conn.fetch(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for migration in MIGRATIONS:
            if migration.name in done:
                continue
            await migration.postgres(conn)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES ($1, $2)",
                migration.name,
                int(time.time() * 1000),
            )
            applied.append(migration.name)
    if applied:
        log.info("postgres store: applied migrations %s", ", ".join(applied))
    if await partitions.partitioned(conn):
        await partitions.create_ahead(conn, int(time.time() * 1000))
    return applied


async def insert_rows(conn: Any, rows: Sequence[Row]) -> int:
    """Store ``rows`` in one transaction; returns how many were new.

    Idempotent on ``request_id``: rows already stored (replays) are skipped.  A row whose
    ``response_id`` is already taken by another request is stored under its own id instead
    (:func:`~auditgate.store.schema.with_own_response_id`) and logged.
    """
    if not rows:
        return 0
    try:
        return await _insert(conn, rows)
    except asyncpg.CheckViolationError as exc:
        if "no partition" not in str(exc):
            raise
    # A day without a partition yet (old records imported, a clock far off): create it, again.
    await partitions.ensure_days(conn, {partitions.day_of(row[_CREATED_AT]) for row in rows})
    return await _insert(conn, rows)


async def _insert(conn: Any, rows: Sequence[Row]) -> int:
    async with conn.transaction():
        inserted = await _copy_in(conn, rows)
        if len(inserted) < len(rows):
            inserted |= await _insert_clashes(conn, rows)
        # Only the rows inserted now count (RETURNING names them): a replay adds nothing.
        delta = rollups.Delta()
        delta.add_rows({row[0]: row for row in rows if row[0] in inserted}.values())
        await apply_rollups(conn, delta)
    return len(inserted)


async def apply_rollups(conn: Any, delta: rollups.Delta) -> None:
    """Add ``delta`` to the rollups, inside the caller's transaction."""
    if delta.totals:
        await conn.executemany(_UPSERT_TOTALS, delta.totals_rows())
    if delta.latency:
        await conn.executemany(_UPSERT_LATENCY, delta.latency_rows())
        tenant_rows = delta.tenant_latency_rows()
        if tenant_rows:
            await conn.executemany(_UPSERT_TENANT_LATENCY, tenant_rows)


async def _copy_in(conn: Any, rows: Sequence[Row]) -> set[str]:
    await conn.execute(_INCOMING_SQL)
    await conn.copy_records_to_table(
        INCOMING, records=rows, columns=COLUMN_NAMES, schema_name="pg_temp"
    )
    return {r[0] for r in await conn.fetch(_MOVE_SQL)}


async def _insert_clashes(conn: Any, rows: Sequence[Row]) -> set[str]:
    unique_rows = {row[0]: row for row in rows}
    # By the primary key (created_at, request_id): one index probe in one partition per row.
    found = await conn.fetch(
        f"SELECT request_id FROM {TABLE} WHERE (created_at, request_id) IN "
        "(SELECT * FROM unnest($1::bigint[], $2::text[]))",
        [row[_CREATED_AT] for row in unique_rows.values()],
        list(unique_rows),
    )
    present = {r["request_id"] for r in found}
    clashes = [with_own_response_id(r) for rid, r in unique_rows.items() if rid not in present]
    if not clashes:
        return set()
    for row in clashes:
        log.warning(
            "postgres store: response id of request %s is already stored for another request; "
            "stored as %s",
            row[0],
            row[1],
        )
    await conn.execute(f"DELETE FROM pg_temp.{INCOMING}")
    inserted = await _copy_in(conn, clashes)
    if len(inserted) != len(clashes):
        raise asyncpg.UniqueViolationError("a response id clash could not be resolved")
    return inserted


TEXT_BATCH: Final = 2000
"""Rows indexed per transaction by :func:`index_text`."""


async def index_text(conn: Any, *, batch: int = TEXT_BATCH, batches: int | None = None) -> int:
    """Index every row still queued for the full-text index (at most ``batches`` batches);
    returns how many were added.

    Each batch is taken off the queue, newest first (``FOR UPDATE SKIP LOCKED``: concurrent
    indexers share the work), and indexed in one transaction, so a failure leaves it queued.
    """
    added = 0
    for _ in itertools.count() if batches is None else range(batches):
        async with conn.transaction():
            taken = await conn.fetch(
                f"DELETE FROM {TEXT_QUEUE_TABLE} WHERE (created_at, request_id) IN "
                f"(SELECT created_at, request_id FROM {TEXT_QUEUE_TABLE} "
                "ORDER BY created_at DESC, request_id DESC LIMIT $1 FOR UPDATE SKIP LOCKED) "
                "RETURNING created_at, request_id",
                batch,
            )
            if not taken:
                return added
            # By the table's key: one probe per row, in its day partition.
            added += _count(
                await conn.execute(
                    f"INSERT INTO {TEXT_TABLE} (request_id, words) SELECT request_id, "
                    f"{POSTGRES_TEXT_VECTOR} FROM {TABLE} WHERE (created_at, request_id) IN "
                    "(SELECT * FROM unnest($1::bigint[], $2::text[])) ON CONFLICT DO NOTHING",
                    [r["created_at"] for r in taken],
                    [r["request_id"] for r in taken],
                )
            )
    return added


async def text_index_lag(conn: Any, *, limit: int) -> tuple[int, bool]:
    """``(rows queued for the full-text index (at most limit), whether more are)``."""
    pending = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {TEXT_QUEUE_TABLE} LIMIT $1) AS q", limit + 1
    )
    return min(int(pending), limit), int(pending) > limit


def _count(status: str) -> int:
    # "INSERT 0 <rows>"
    return int(status.rsplit(" ", 1)[-1])


def _lock_key(schema: str | None) -> int:
    digest = hashlib.sha256(f"auditgate.migrations:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
