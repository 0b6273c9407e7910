"""Store-scale bench: a store of N realistic records, written through the project's own sinks.

``python bench/store_scale.py --store postgres|sqlite [--n 100000] [--days 30] [--queries 200]``
prints one JSON line, then a Markdown table row per measure:

- ``ingest_rps``: records/s inside ``sink.write`` (``PostgresSink`` / ``SqliteSink``, 500-record
  batches in time order, as a gateway writes them); records are built before each timed write.
- ``bytes_per_row`` and ``raw_bytes_per_row``: the store's size on disk (PostgreSQL: every
  partition with its indexes and TOAST, the metadata side table's, and the rollups; SQLite: the
  file and its WAL) and the records' JSON, per record.  SQLite also
  ``bytes_per_row_text_indexed``: the same once the console has filled its full-text index
  (``text_index_s``: how long that took).
- p50/p99 ms of each read-API query shape through the store the API uses (``list`` first page,
  a page after a cursor, by model, by tenant, by a metadata value matching a third of the rows,
  by a rare one, by one no row holds, ``get`` by id), ``--queries`` times each with random
  arguments; on PostgreSQL
  the metadata shapes again under ``plan_cache_mode = force_generic_plan``.
- ``stats`` over the last 30 days from the rollups (and ``--exact``, unless ``--skip-exact``).
- ``export_rps``: rows/s of a whole-store scan decoded to records (``auditgate export``'s path),
  over at most ``--export-max`` rows.
- ``retention_s``: deleting the oldest day (PostgreSQL: dropping its partition).

Records (4.7 KB of JSON): spread evenly over ``--days`` days ending now, 4 models, 3 tenants and
none, metadata ``team`` (3 values: each a third of the rows) and ``batch`` (1,000 values), 3 %
errors, 2 % cancellations, random latencies.  PostgreSQL runs in a fresh database that is dropped
after; SQLite in a temporary directory.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.cli.stats import collect
from auditgate.store import retention
from auditgate.store.partitions import DAY_MS
from auditgate.store.queries import Filter, Sql, Store, page_sql
from auditgate.store.rollups import HOUR_MS
from auditgate.store.schema import SELECT_COLUMNS, record_dict_from_row
from auditgate.store.url import open_store
from bench.sinks import Texts, pg_database

MODELS = ("gpt-small", "gpt-large", "llama-70b", "mock")
TENANTS = (None, "acme", "globex", "initech")
BATCH = 500


def make_record(texts: Texts, rng: random.Random, seq: int, created_at: int) -> AuditRecord:
    """A ``full`` record of about 4.7 KB of JSON (see the module docstring)."""
    rid = f"{seq:08x}-0000-7000-8000-{rng.getrandbits(48):012x}"
    model = MODELS[seq % len(MODELS)]
    usage = {"prompt_tokens": rng.randint(50, 900), "completion_tokens": rng.randint(10, 600)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    roll = rng.random()
    status = "error" if roll < 0.03 else "cancelled" if roll < 0.05 else "completed"
    message = {"role": "user", "content": texts.next(2000)}
    answer = {"role": "assistant", "content": texts.next(2000)}
    duration = rng.lognormvariate(6, 0.8)
    return AuditRecord(
        request_id=rid,
        requested_streaming=seq % 2 == 0,
        mode="full",
        model=model,
        usage=usage,
        request={"model": model, "messages": [message], "store": True},
        response={
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": created_at // 1000,
            "model": model,
            "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
            "usage": usage,
        },
        engine="openai",
        status=status,  # type: ignore[arg-type]
        complete=status == "completed",
        created_at=created_at,
        completed_at=created_at + int(duration),
        ttft_ms=duration / 5,
        duration_ms=duration,
        tenant=TENANTS[seq % len(TENANTS)],
        metadata={"team": f"team-{seq % 3}", "batch": f"b{seq % 1000}"},
        writer="bench:1:store0001",
        seq=seq,
    )


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (
        round(statistics.median(ordered) * 1000, 2),
        round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    )


async def load(
    write: Callable[[list[Envelope]], Awaitable[None]], n: int, days: int
) -> dict[str, Any]:
    """Write ``n`` records; ``ingest_rps`` (time inside writes) and ``raw_bytes_per_row``."""
    texts, rng = Texts(), random.Random(21)
    now = int(time.time() * 1000)
    start = now - days * DAY_MS
    step = (now - start) / n
    spent, raw = 0.0, 0
    for first in range(0, n, BATCH):
        batch = [
            Envelope(make_record(texts, rng, seq, int(start + seq * step)))
            for seq in range(first, min(first + BATCH, n))
        ]
        raw += sum(len(e.json) + 1 for e in batch)
        began = time.perf_counter()
        await write(batch)
        spent += time.perf_counter() - began
        if first and first % 100_000 == 0:
            print(f"  loaded {first:,} ({first / spent:,.0f} rows/s)", file=sys.stderr)
    return {"ingest_rps": round(n / spent), "raw_bytes_per_row": round(raw / n), "start": start}


async def timed(fn: Callable[[], Awaitable[Any]], times: int) -> tuple[float, float]:
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - began)
    return percentiles(samples)


async def read_shapes(store: Store, n: int, queries: int) -> dict[str, Any]:
    """p50/p99 of each read-API query shape (random arguments)."""
    rng = random.Random(5)
    # Ids to look up and to page after: a sample from all over the store.
    known: list[str] = []
    async for row in store.scan(Filter(), chunk=2000):
        if rng.random() < 2000 / n:
            known.append(row["response_id"])
    out: dict[str, Any] = {}
    shapes: dict[str, Callable[[], Awaitable[Any]]] = {
        "list_first_page": lambda: store.list(Filter(), after=None, limit=20, order="desc"),
        "list_after_cursor": lambda: store.list(
            Filter(), after=rng.choice(known), limit=20, order="desc"
        ),
        "list_by_model": lambda: store.list(
            Filter(model=rng.choice(MODELS)), after=None, limit=20, order="desc"
        ),
        "list_by_tenant": lambda: store.list(
            Filter(tenant=rng.choice(TENANTS[1:])), after=None, limit=20, order="desc"
        ),
        "list_metadata_third": lambda: store.list(
            Filter(metadata={"team": f"team-{rng.randrange(3)}"}),
            after=None,
            limit=20,
            order="desc",
        ),
        "list_metadata_rare": lambda: store.list(
            Filter(metadata={"batch": f"b{rng.randrange(1000)}"}),
            after=None,
            limit=20,
            order="desc",
        ),
        "list_metadata_absent": lambda: store.list(
            Filter(metadata={"batch": f"none{rng.randrange(1000)}"}),
            after=None,
            limit=20,
            order="desc",
        ),
        "get_by_id": lambda: store.get(rng.choice(known), None),
    }
    for name, fn in shapes.items():
        out[name] = await timed(fn, queries)
    return out


async def generic_metadata(dsn: str, queries: int) -> dict[str, Any]:
    """The metadata shapes with PostgreSQL's generic plan forced (as a prepared statement gets
    after a few executions), read as the store reads them."""
    import asyncpg

    from auditgate.store.postgres_reader import fetch_page

    rng = random.Random(6)
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    out: dict[str, Any] = {}
    try:
        for name, key, values in (
            ("generic_metadata_third", "team", [f"team-{i}" for i in range(3)]),
            ("generic_metadata_rare", "batch", [f"b{i}" for i in range(1000)]),
            ("generic_metadata_absent", "batch", [f"none{i}" for i in range(1000)]),
        ):

            async def run(key: str = key, values: list[str] = values) -> Any:
                sql = Sql("postgres")
                where = Filter(metadata={key: rng.choice(values)})
                statement = page_sql(
                    sql, SELECT_COLUMNS, where, cursor=None, limit=21, order="desc"
                )
                return await fetch_page(conn, where, statement, sql.params)

            out[name] = await timed(run, queries)
    finally:
        await conn.close()
    return out


async def export_rate(store: Store, limit: int) -> float:
    encoder = msgspec.json.Encoder()
    rows = 0
    began = time.perf_counter()
    async for row in store.scan(Filter(stored_only=False, live_only=False)):
        encoder.encode(record_dict_from_row(row))
        rows += 1
        if rows >= limit:
            break
    return round(rows / (time.perf_counter() - began))


async def stats_times(url: str, skip_exact: bool) -> dict[str, Any]:
    now = int(time.time() * 1000)
    until = now - now % HOUR_MS + HOUR_MS
    where = Filter(
        since_ms=until - 30 * DAY_MS, until_ms=until, stored_only=False, requests_only=True
    )
    out: dict[str, Any] = {}
    began = time.perf_counter()
    doc = await collect(url, where, "model")
    out["stats_rollups_s"] = round(time.perf_counter() - began, 3)
    out["stats_requests"] = doc["total"]["requests"]
    if not skip_exact:
        began = time.perf_counter()
        exact = await collect(url, where, "model", exact=True)
        out["stats_exact_s"] = round(time.perf_counter() - began, 3)
        out["stats_equal_counts"] = exact["total"]["requests"] == doc["total"]["requests"]
    return out


async def bench_postgres(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from auditgate.sinks.postgres import PostgresSink

    async with pg_database() as dsn:
        sink = PostgresSink(dsn)
        await sink.open()
        try:
            result = await load(sink.write, args.n, args.days)
        finally:
            await sink.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("VACUUM ANALYZE")
            # The table's partitions and the metadata side table's (m014), with their indexes.
            size = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('completions')"
            )
            if await conn.fetchval("SELECT to_regclass('completion_metadata')") is not None:
                size += await conn.fetchval(
                    "SELECT sum(pg_total_relation_size(relid)) "
                    "FROM pg_partition_tree('completion_metadata')"
                )
            size += await conn.fetchval(
                "SELECT pg_total_relation_size('usage_rollups') "
                "+ pg_total_relation_size('usage_latency')"
            )
        finally:
            await conn.close()
        result["bytes_per_row"] = round(size / args.n)
        result |= await measure_reads(dsn, args)
        result |= await generic_metadata(dsn, args.queries)
        result |= await stats_times(dsn, args.skip_exact)
        result["retention_s"], result["retention_rows"] = await retain_oldest_day(
            dsn, result["start"]
        )
    return result


async def bench_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    from auditgate.sinks.sqlite import SqliteSink

    with tempfile.TemporaryDirectory(prefix="agbench-store-") as tmp:
        path = str(Path(tmp) / "audit.db")
        sink = SqliteSink(path)
        await sink.open()
        try:
            result = await load(sink.write, args.n, args.days)
        finally:
            await sink.close()
        result["bytes_per_row"] = round(file_bytes(path) / args.n)
        url = f"sqlite:///{path}"
        result["text_index_s"] = await index_text(url)
        result["bytes_per_row_text_indexed"] = round(file_bytes(path) / args.n)
        result |= await measure_reads(url, args)
        result |= await stats_times(url, args.skip_exact)
        result["retention_s"], result["retention_rows"] = await retain_oldest_day(
            url, result["start"]
        )
    return result


async def index_text(url: str) -> float:
    """Seconds to fill the full-text index as the console does (the store closed after, so its
    WAL is checkpointed into the file)."""
    store = open_store(url)
    await store.open()
    try:
        began = time.perf_counter()
        await store.index_text()
        return round(time.perf_counter() - began, 2)
    finally:
        await store.close()


def file_bytes(path: str) -> int:
    """Bytes of a SQLite database and its WAL."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def measure_reads(url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url)
    await store.open()
    try:
        out = await read_shapes(store, args.n, args.queries)
        out["export_rps"] = await export_rate(store, args.export_max)
    finally:
        await store.close()
    return out


async def retain_oldest_day(url: str, start: int) -> tuple[float, int]:
    cutoff = (start // DAY_MS + 1) * DAY_MS
    began = time.perf_counter()
    outcome = await retention.retain(url, cutoff)
    return round(time.perf_counter() - began, 3), outcome.rows


def table(result: dict[str, Any]) -> list[str]:
    rows = [
        f"| {k} | {v[0]} / {v[1]} ms |" for k, v in result.items() if isinstance(v, (list, tuple))
    ]
    rows += [f"| {k} | {v} |" for k, v in result.items() if not isinstance(v, (list, tuple))]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", choices=("postgres", "sqlite"), required=True)
    p.add_argument("--n", type=int, default=100_000, help="records (default 100,000; up to 10M)")
    p.add_argument("--days", type=int, default=30, help="days the records span (default 30)")
    p.add_argument("--queries", type=int, default=200, help="runs of each query shape")
    p.add_argument("--export-max", type=int, default=200_000, help="rows the export reads")
    p.add_argument("--skip-exact", action="store_true", help="no stats --exact (slow at scale)")
    args = p.parse_args(argv)
    run = bench_postgres if args.store == "postgres" else bench_sqlite
    result = {"store": args.store, "n": args.n} | asyncio.run(run(args))
    result.pop("start", None)
    print(json.dumps(result))
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
