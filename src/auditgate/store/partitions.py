"""PostgreSQL: the stored-completions table's day partitions (asyncpg).

Since migration ``m005_partitions`` the table is partitioned by range of ``created_at``, one
partition per UTC day named ``completions_pYYYYMMDD``.  Keys (see the README, "PostgreSQL at
scale"):

- ``PRIMARY KEY (created_at, request_id)``: a unique key of a partitioned table must hold the
  partition key.  A replay is the same record, with the same ``created_at``, so it lands in the
  same partition and ``ON CONFLICT DO NOTHING`` still skips it; request ids are UUIDv7 made by
  the gateway, so two records never share one.
- ``UNIQUE (response_id)`` on each partition (not the parent, which cannot have it): an engine
  that reuses a response id within a day is caught as before
  (:func:`~auditgate.store.schema.with_own_response_id`); lookups by ``response_id`` probe each
  partition's index.

Partitions are made ahead of time (:func:`create_ahead`, at migration and by the sinks'
maintenance), and on demand when a batch holds a day that has none (an import of old records, a
clock far off): :func:`ensure_days`.  A partition is created as a plain table, then attached:
attaching takes only a ``SHARE UPDATE EXCLUSIVE`` lock on the parent, so readers and writers of
other days never wait for it.  Since m014 the metadata side table is partitioned the same way
(``completion_metadata_pYYYYMMDD``): each day's partition of it is made with the table's, and
retention drops both.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import re
from collections.abc import Iterable
from typing import Any, Final

from auditgate.store.schema import METADATA_TABLE, TABLE

log = logging.getLogger("auditgate.store")

DAY_MS: Final = 86_400_000
AHEAD_DAYS: Final = 3
"""Days after today whose partitions :func:`create_ahead` makes by default."""
_BOUND: Final = re.compile(r"FROM \('?(-?\d+|MINVALUE)'?\) TO \('?(-?\d+|MAXVALUE)'?\)")
_INT64_MAX: Final = 2**63 - 1


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Partition:
    """One attached partition: rows with ``start_ms <= created_at < end_ms``."""

    start_ms: int
    end_ms: int
    name: str


def day_of(ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of Unix milliseconds ``ms``."""
    return ms // DAY_MS


def partition_name(day: int, table: str = TABLE) -> str:
    """``completions_pYYYYMMDD`` for UTC day number ``day`` (``completions_d<day>``, ``m`` for a
    minus sign, for a day outside years 1-9999: a record may carry any 64-bit time); ``table``:
    the partitioned table (the metadata side table's partitions are named alike)."""
    try:
        date = datetime.date(1970, 1, 1) + datetime.timedelta(days=day)
    except OverflowError:
        return f"{table}_d{day}".replace("-", "m")
    return f"{table}_p{date:%Y%m%d}"


def metadata_partition(name: str) -> str:
    """The metadata side table's partition of the same day as table partition ``name``."""
    return METADATA_TABLE + name[len(TABLE) :]


def _bound(ms: int) -> str:
    # created_at is a bigint: the days at its ends are bounded by MINVALUE / MAXVALUE.
    if ms > _INT64_MAX:
        return "MAXVALUE"
    if ms < -_INT64_MAX - 1:
        return "MINVALUE"
    return str(ms)


async def partitioned(conn: Any, table: str = TABLE) -> bool:
    """Whether ``table`` in the search path is partitioned (the stored-completions table: since
    migration m005; the metadata side table: since m014)."""
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", table
    )
    return bool(kind == "p")


async def _attach(conn: Any, table: str, name: str, start: str, end: str) -> None:
    # The parent's indexes are built on the (empty) table as it is attached.
    await conn.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({start}) TO ({end})"
    )


async def partitions(conn: Any) -> list[Partition]:
    """The attached partitions, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
        TABLE,
    )
    found = []
    for row in rows:
        match = _BOUND.search(row["bound"])
        if match is not None:
            start = -_INT64_MAX - 1 if match[1] == "MINVALUE" else int(match[1])
            end = _INT64_MAX if match[2] == "MAXVALUE" else int(match[2])
            found.append(Partition(start, end, row["relname"]))
    return sorted(found)


async def ensure_days(conn: Any, days: Iterable[int]) -> list[str]:
    """Create (and attach) the partitions of UTC day numbers ``days`` that do not exist yet.

    One transaction under an advisory lock, so concurrent writers needing the same day create it
    once; returns the names created now.
    """
    created: list[str] = []
    async with conn.transaction():
        schema = await conn.fetchval("SELECT current_schema()")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        side = await partitioned(conn, METADATA_TABLE)
        for day in sorted(set(days)):
            start, end = _bound(day * DAY_MS), _bound((day + 1) * DAY_MS)
            name = partition_name(day)
            if await conn.fetchval("SELECT to_regclass($1)", name) is None:
                # INCLUDING COMPRESSION keeps the parent's lz4 TOAST columns; the new table is
                # empty, so ATTACH's check of its rows costs nothing.
                await conn.execute(
                    f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING STORAGE "
                    "INCLUDING COMPRESSION)"
                )
                await conn.execute(f"ALTER TABLE {name} ADD UNIQUE (response_id)")
                await _attach(conn, TABLE, name, start, end)
                created.append(name)
            side_name = partition_name(day, METADATA_TABLE)
            if side and await conn.fetchval("SELECT to_regclass($1)", side_name) is None:
                await conn.execute(f"CREATE TABLE {side_name} (LIKE {METADATA_TABLE})")
                await _attach(conn, METADATA_TABLE, side_name, start, end)
    if created:
        log.info("postgres store: created partitions %s", ", ".join(created))
    return created


async def create_ahead(conn: Any, now_ms: int, ahead_days: int = AHEAD_DAYS) -> list[str]:
    """Partitions for today (UTC) and the next ``ahead_days`` days; the names created now."""
    today = day_of(now_ms)
    return await ensure_days(conn, range(today, today + ahead_days + 1))


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"auditgate.partitions:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
