"""Console bench: how long each console page takes on a store of a million records.

``python bench/console.py [--records N] [--only sqlite|postgres] [--repeat R] [--keep PATH]``
loads N synthetic records (default 1,000,000: 6 models, 20 tenants, 3 % errors, 2 % cancels,
every 10th with metadata, prompts of words from a 2,000-word vocabulary, spread over the last 7
days) into a fresh SQLite file and a fresh PostgreSQL database through the sinks' own insert
paths, then serves the console in-process (open mode, the store opened as ``auditgate ui``
opens it) and times each page through ``httpx``'s ASGI transport: the server's whole work for a
page (queries, rendering), not a network.  Prints one JSON line per store and page: the median
and the worst of R runs in ms, and the load time.  Search is timed cold (right after the load:
nothing indexed; a search answers from the index as it is and says how far it is behind), then
the whole store is indexed as the console's background indexer would (``index_text_all``, timed
once), then warm.  ``usage_*_fine`` pages filter on the endpoint every record has: the same
numbers, read from the per-model/tenant/endpoint histograms (``usage_latency``) instead of
``usage_latency_tenant``.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from auditgate.audit.integrity import GENESIS, canonical, link
from auditgate.audit.record import AuditRecord, Integrity
from auditgate.console.app import Console, ConsoleConfig
from auditgate.store import sqlite as sqlite_db
from auditgate.store.schema import row_from_record
from auditgate.store.url import open_store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MODELS = ("llama-3-8b", "llama-3-70b", "qwen-2.5-7b", "mistral-7b", "gpt-oss-20b", "phi-4")
DAY_MS = 86_400_000
BATCH = 5000


def _vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(2000)]


def records(count: int, now_ms: int, seed: int = 7) -> Iterator[AuditRecord]:
    """``count`` synthetic records, oldest first, over the 7 days before ``now_ms``."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    start = now_ms - 7 * DAY_MS
    prev = GENESIS
    for i in range(count):
        created = start + i * 7 * DAY_MS // count
        model = MODELS[i % len(MODELS)]
        prompt = " ".join(rng.choices(words, k=24))
        answer = " ".join(rng.choices(words, k=60))
        roll = rng.random()
        status = "error" if roll < 0.03 else "cancelled" if roll < 0.05 else "completed"
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        record = AuditRecord(
            request_id=request_id,
            requested_streaming=i % 2 == 0,
            mode="full",
            model=model,
            usage={"prompt_tokens": 40, "completion_tokens": 90, "total_tokens": 130},
            request={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "store": True,
            },
            response={
                "id": f"chatcmpl-{request_id}",
                "object": "chat.completion",
                "created": created // 1000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
            },
            engine="openai",
            status=status,
            complete=status == "completed",
            created_at=created,
            completed_at=created + 800,
            ttft_ms=rng.uniform(20, 300),
            duration_ms=rng.uniform(200, 4000),
            tenant=f"tenant-{i % 20}",
            metadata={"team": f"team-{i % 7}"} if i % 10 == 0 else {},
            writer="bench:1:00000000",
            seq=i,
        )
        # Chained as a gateway with DYN_AUDIT_INTEGRITY=1 chains them, so verify has work.
        digest = link(prev, canonical(record))
        yield msgspec.structs.replace(record, integrity=Integrity(prev=prev, hash=digest))
        prev = digest


def _batches(count: int, now_ms: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for record in records(count, now_ms):
        batch.append(row_from_record(record))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def load_sqlite(path: str, count: int, now_ms: int) -> None:
    if os.path.exists(path):  # --keep: loaded by an earlier run
        return
    conn = sqlite_db.connect(path)
    sqlite_db.migrate(conn)
    for rows in _batches(count, now_ms):
        sqlite_db.insert_rows(conn, rows)
    conn.close()


async def load_postgres(dsn: str, count: int, now_ms: int) -> None:
    import asyncpg

    from auditgate.store import postgres as pg_db

    conn = await asyncpg.connect(dsn)
    try:
        await pg_db.migrate(conn)
        for rows in _batches(count, now_ms):
            await pg_db.insert_rows(conn, rows)
        await conn.execute("VACUUM (ANALYZE)")  # as autovacuum would: index-only scans
    finally:
        await conn.close()


async def time_pages(url: str, now_ms: int, repeat: int) -> dict[str, list[float]]:
    """ms per run of each page, through the console app in this process."""
    store = open_store(url, must_exist=True)
    await store.open()
    console = Console(ConsoleConfig(store_url=url, keys=None), store)
    transport = httpx.ASGITransport(app=console)
    times: dict[str, list[float]] = {}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", follow_redirects=True
        ) as client:
            await client.get("/ui/records")  # the open-mode session cookie
            first = (await client.get("/ui/records")).text
            record_path = first.split('href="/ui/records/', 1)[1].split('"', 1)[0]
            day_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((now_ms - DAY_MS) / 1000))
            week_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((now_ms - 7 * DAY_MS) / 1000))
            pages = {
                "records": "/ui/records",
                "records_model": f"/ui/records?model={MODELS[2]}",
                "records_tenant": "/ui/records?tenant=tenant-7",
                "records_status_error": "/ui/records?status=error",
                "records_metadata": "/ui/records?meta=team%3Dteam-3",
                "records_last_day_model": f"/ui/records?since={day_ago}&model={MODELS[4]}",
                "search_cold": "/ui/records?q=" + _word(),
                "search_warm": "/ui/records?q=" + _word(),
                "search_rare_two_words": "/ui/records?q=" + _word() + "+" + _word(3),
                "record": f"/ui/records/{record_path}",
                "usage_last_day": "/ui/usage",
                "usage_tenant_last_day": "/ui/usage?tenant=tenant-3",
                "usage_7_days": f"/ui/usage?since={week_ago}",
                "usage_7_days_tenant": f"/ui/usage?since={week_ago}&tenant=tenant-3",
                "usage_7_days_model": f"/ui/usage?since={week_ago}&model={MODELS[1]}",
                "usage_last_day_fine": "/ui/usage?endpoint=chat.completions",
                "usage_7_days_fine": f"/ui/usage?since={week_ago}&endpoint=chat.completions",
            }
            for name, path in pages.items():
                runs = 1 if name == "search_cold" else repeat
                if name == "search_warm":
                    started = time.perf_counter()
                    await store.index_text()
                    times["index_text_all"] = [(time.perf_counter() - started) * 1000]
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await client.get(path)
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code != 200:
                        raise RuntimeError(f"{path}: {response.status_code}")
                    times.setdefault(name, []).append(elapsed)
            times["records_page_20_deep"] = [await _deep(client, 20)]
            export_ms, lines = await _export(client)
            times[f"export_tenant_finetune_{lines}_lines"] = [export_ms]
    finally:
        await store.close()
    return times


PAIRED_PAGES = (
    "records",
    "records_tenant",
    "search_warm",
    "usage_last_day",
    "usage_tenant_last_day",
    "usage_7_days",
    "usage_7_days_tenant",
    "usage_7_days_model",
    "usage_last_day_fine",
    "usage_7_days_fine",
)
"""The pages ``--paired`` times at every size in turn."""


def page_paths(now_ms: int) -> dict[str, str]:
    """Paths of :data:`PAIRED_PAGES` (windows relative to ``now_ms``)."""
    week_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((now_ms - 7 * DAY_MS) / 1000))
    return {
        "records": "/ui/records",
        "records_tenant": "/ui/records?tenant=tenant-7",
        "search_warm": "/ui/records?q=" + _word(),
        "usage_last_day": "/ui/usage",
        "usage_tenant_last_day": "/ui/usage?tenant=tenant-3",
        "usage_7_days": f"/ui/usage?since={week_ago}",
        "usage_7_days_tenant": f"/ui/usage?since={week_ago}&tenant=tenant-3",
        "usage_7_days_model": f"/ui/usage?since={week_ago}&model={MODELS[1]}",
        "usage_last_day_fine": "/ui/usage?endpoint=chat.completions",
        "usage_7_days_fine": f"/ui/usage?since={week_ago}&endpoint=chat.completions",
    }


async def bench_paired(kind: str, sizes: list[int], repeat: int, keep: str | None) -> None:
    """Load a store of each size, then time :data:`PAIRED_PAGES` at each size in turn, ``repeat``
    rounds: the sizes meet the same load on a shared machine, so their ratio is what grows
    with the store.  Also once per size: the search right after the load, and indexing it all.
    SQLite files are kept (and reused) in ``keep``; their records' end sets the clock."""
    directory = Path(keep or tempfile.mkdtemp(prefix="console-bench-"))
    paths = {n: directory / f"bench-{n}.db" for n in sizes}
    now_ms = int(time.time() * 1000)
    if kind == "sqlite":
        for file in paths.values():
            if file.exists():
                conn = sqlite_db.connect(file)
                newest = conn.execute("SELECT max(created_at) FROM completions").fetchone()[0]
                conn.close()
                now_ms = min(now_ms, int(newest) + 1)
    urls: dict[int, str] = {}
    databases: list[str] = []
    once: dict[tuple[int, str], float] = {}
    try:
        for n in sizes:
            started = time.perf_counter()
            if kind == "sqlite":
                await asyncio.to_thread(load_sqlite, str(paths[n]), n, now_ms)
                urls[n] = f"sqlite:///{paths[n]}"
            else:
                database = f"ag_console_bench_{uuid.uuid4().hex[:8]}"
                urls[n] = await _database(database, create=True)
                databases.append(database)
                await load_postgres(urls[n], n, now_ms)
            once[(n, "load")] = (time.perf_counter() - started) * 1000
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[int, httpx.AsyncClient] = {}
            for n in sizes:
                store = open_store(urls[n], must_exist=True)
                await store.open()
                stack.push_async_callback(store.close)
                console = Console(ConsoleConfig(store_url=urls[n], keys=None), store)
                client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=console),
                        base_url="http://bench",
                        follow_redirects=True,
                    )
                )
                await client.get("/ui/records")  # the open-mode session cookie
                clients[n] = client
                once[(n, "search_cold")] = await _timed(client, "/ui/records?q=" + _word())
                started = time.perf_counter()
                await store.index_text()
                once[(n, "index_text_all")] = (time.perf_counter() - started) * 1000
            times: dict[tuple[int, str], list[float]] = {}
            for _ in range(repeat):
                for name, page in page_paths(now_ms).items():
                    for n in sizes:
                        times.setdefault((n, name), []).append(await _timed(clients[n], page))
    finally:
        for database in databases:
            await _database(database, create=False)
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    for (n, name), ms in once.items():
        line = {"store": kind, "records": n, "page": name, "ms": round(ms, 1), "paired": True}
        print(json.dumps(line), flush=True)
    for (n, name), runs in times.items():
        line = {
            "store": kind,
            "records": n,
            "page": name,
            "median_ms": round(statistics.median(runs), 1),
            "max_ms": round(max(runs), 1),
            "runs": len(runs),
            "paired": True,
        }
        print(json.dumps(line), flush=True)


async def _timed(client: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    response = await client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code}")
    return elapsed


def _word(skip: int = 0) -> str:
    """A word of the records' vocabulary (each in about 4 % of the records)."""
    return _vocabulary(random.Random(7))[11 + skip]


async def _deep(client: httpx.AsyncClient, pages: int) -> float:
    """ms to walk ``pages`` pages of the list by its next links (one page on average)."""
    path = "/ui/records"
    started = time.perf_counter()
    for _ in range(pages):
        html = (await client.get(path)).text
        path = "/ui/records?" + html.split('rel="next" href="?', 1)[1].split('"', 1)[0]
        path = path.replace("&amp;", "&")
    return (time.perf_counter() - started) * 1000 / pages


async def _export(client: httpx.AsyncClient) -> tuple[float, int]:
    """ms for a whole tenant's finetune export (httpx's ASGI transport hands the body over
    whole, so time to first byte is not measurable here), and its lines."""
    started = time.perf_counter()
    lines = 0
    async with client.stream("GET", "/ui/export?format=finetune&tenant=tenant-5") as response:
        async for chunk in response.aiter_bytes():
            lines += chunk.count(b"\n")
    return (time.perf_counter() - started) * 1000, lines


async def _database(name: str, *, create: bool) -> str:
    """Create (or drop) a database on the local server; its DSN."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'{"CREATE" if create else "DROP"} DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def bench_store(kind: str, count: int, repeat: int, keep: str | None) -> None:
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    if kind == "sqlite":
        directory = keep or tempfile.mkdtemp(prefix="console-bench-")
        path = str(Path(directory) / "bench.db")
        await asyncio.to_thread(load_sqlite, path, count, now_ms)
        url = f"sqlite:///{path}"
        database = None
    else:
        database = f"ag_console_bench_{uuid.uuid4().hex[:8]}"
        url = await _database(database, create=True)
        await load_postgres(url, count, now_ms)
    load_s = time.perf_counter() - started
    try:
        times = await time_pages(url, now_ms, repeat)
    finally:
        if database is not None:
            await _database(database, create=False)
        elif keep is None:  # a 1M-record file is ~3 GB: not left behind in /tmp
            shutil.rmtree(directory, ignore_errors=True)
    for name, runs in times.items():
        line = {
            "store": kind,
            "records": count,
            "page": name,
            "median_ms": round(statistics.median(runs), 1),
            "max_ms": round(max(runs), 1),
            "runs": len(runs),
            "load_s": round(load_s, 1),
        }
        print(json.dumps(line), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", help="directory of a SQLite bench.db to reuse (or create)")
    parser.add_argument(
        "--paired",
        metavar="N,N",
        help="store sizes to load, then time the usage and list pages at each in turn",
    )
    args = parser.parse_args()
    for kind in ("sqlite", "postgres"):
        if args.only not in (None, kind):
            continue
        if args.paired:
            sizes = [int(n) for n in args.paired.split(",")]
            asyncio.run(bench_paired(kind, sizes, args.repeat, args.keep))
        else:
            asyncio.run(bench_store(kind, args.records, args.repeat, args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
