"""Retention of a day on PostgreSQL with the console's full-text index filled.

``python -m bench.retention_text [--n 1000000] [--days 30] [--rounds 3]`` fills a fresh database
with N rows spread evenly over DAYS days (small bodies of 40 words from a 5,000-word vocabulary,
written by SQL, not the sinks: the bench is about retention, not ingest), indexes all of them as
the console does, then drops the oldest days one at a time, alternating:

- ``with_text``: :func:`auditgate.store.retention.postgres_retain` (the partition, its rows'
  index entries and queued ids, its hours' rollups, one transaction);
- ``drop_only``: what it did before: the partition and the rollups only (the index entries stay);
- ``partitioned_text``: dropping the day's partition of a copy of the text index partitioned by
  day as the table is (the alternative design, which needs ``created_at`` in the index and a
  migration), for scale.

Prints one JSON line and a Markdown table: seconds per day dropped (median of ``--rounds``), and
the rows and text entries a day holds.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from auditgate.store import partitions, retention, rollups
from auditgate.store import postgres as pg_store
from auditgate.store.migrations import POSTGRES_TEXT_VECTOR, TEXT_QUEUE_TABLE, TEXT_TABLE
from auditgate.store.partitions import DAY_MS
from auditgate.store.schema import TABLE
from bench.sinks import pg_database

CHUNK = 100_000
_COPY = "bench_text_by_day"


def fill_sql(start_ms: int, step_ms: float, first: int, last: int) -> str:
    """Rows ``first..last`` of the bench (``created_at = start + i * step``)."""
    words = (
        "array_to_string(ARRAY(SELECT 'w' || ((i::bigint * 7919 + k * 104729) % 5000) "
        "FROM generate_series(1, 40) AS k), ' ')"
    )
    return f"""
INSERT INTO {TABLE} (request_id, response_id, schema_version, requested_streaming, mode, model,
    request, response, endpoint, transport, engine, status, complete, created_at, completed_at,
    metadata, writer, seq)
SELECT r, 'chatcmpl-' || r, 1, false, 'full', 'm',
    jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('content', {words}))),
    jsonb_build_object('object', 'chat.completion'), 'chat.completions', 'http', 'mock',
    'completed', true, c, c + 5, '{{}}'::jsonb, 'bench', i
FROM (SELECT i, md5(i::text)::uuid::text AS r, {start_ms} + floor(i * {step_ms})::bigint AS c
      FROM generate_series({first}, {last}) AS i) AS s"""


async def fill(conn: Any, n: int, days: int, start_ms: int) -> None:
    await pg_store.migrate(conn)
    await partitions.ensure_days(conn, range(start_ms // DAY_MS, start_ms // DAY_MS + days + 1))
    step = days * DAY_MS / n
    for first in range(0, n, CHUNK):
        await conn.execute(fill_sql(start_ms, step, first, min(first + CHUNK, n) - 1))
    await conn.execute(
        f"INSERT INTO {TEXT_TABLE} (request_id, words) "
        f"SELECT request_id, {POSTGRES_TEXT_VECTOR} FROM {TABLE}"
    )
    await conn.execute(f"TRUNCATE {TEXT_QUEUE_TABLE}")
    await conn.execute(
        f"CREATE TABLE {_COPY} (created_at bigint NOT NULL, request_id text NOT NULL, "
        "words tsvector NOT NULL, PRIMARY KEY (created_at, request_id)) "
        "PARTITION BY RANGE (created_at)"
    )
    await conn.execute(f"CREATE INDEX {_COPY}_words ON {_COPY} USING gin (words)")
    for day in range(start_ms // DAY_MS, start_ms // DAY_MS + days + 1):
        await conn.execute(
            f"CREATE TABLE {_COPY}_{day} PARTITION OF {_COPY} "
            f"FOR VALUES FROM ({day * DAY_MS}) TO ({(day + 1) * DAY_MS})"
        )
    await conn.execute(
        f"INSERT INTO {_COPY} SELECT c.created_at, t.request_id, t.words FROM {TEXT_TABLE} AS t "
        f"JOIN {TABLE} AS c USING (request_id)"
    )
    await conn.execute("VACUUM ANALYZE")


async def drop_only(conn: Any, part: partitions.Partition) -> None:
    """The oldest partition dropped as retention did before it deleted the text entries."""
    async with conn.transaction():
        await conn.execute(f"SELECT count(*) FROM {part.name}")
        await conn.execute(f"DROP TABLE {part.name}")
        for table in rollups.TABLES:
            await conn.execute(
                f"DELETE FROM {table} WHERE hour >= $1 AND hour < $2", part.start_ms, part.end_ms
            )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    now = int(time.time() * 1000)
    start = (now // DAY_MS - args.days - 5) * DAY_MS
    async with pg_database() as url:
        conn = await asyncpg.connect(url)
        try:
            began = time.perf_counter()
            await fill(conn, args.n, args.days, start)
            result: dict[str, Any] = {"n": args.n, "days": args.days}
            result["fill_s"] = round(time.perf_counter() - began, 1)
            result["text_entries"] = await conn.fetchval(f"SELECT count(*) FROM {TEXT_TABLE}")
            times: dict[str, list[float]] = {"with_text": [], "drop_only": [], "copy": []}
            deleted = []
            for _ in range(args.rounds):
                for mode in ("with_text", "drop_only"):
                    part = (await partitions.partitions(conn))[0]
                    began = time.perf_counter()
                    if mode == "with_text":
                        outcome = await retention.postgres_retain(conn, part.end_ms)
                        deleted.append(outcome.text_rows)
                    else:
                        await drop_only(conn, part)
                    times[mode].append(time.perf_counter() - began)
                    began = time.perf_counter()
                    await conn.execute(f"DROP TABLE {_COPY}_{part.start_ms // DAY_MS}")
                    times["copy"].append(time.perf_counter() - began)
        finally:
            await conn.close()
    result["rows_per_day"] = args.n // args.days
    result["text_entries_deleted_per_day"] = deleted
    for mode, values in times.items():
        result[f"{mode}_s"] = round(statistics.median(values), 3)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows (default 1,000,000)")
    p.add_argument("--days", type=int, default=30, help="days the rows span (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="days dropped in each mode")
    result = asyncio.run(run(p.parse_args(argv)))
    print(json.dumps(result))
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
