"""Sink micro-bench: records/s each audit sink sustains, next to its client library's raw rate.

``python bench/sinks.py [--seconds S] [--only NAME ...] [--schema-cost] [--varied]`` prints one
JSON line per sink:
``sink``, ``record_bytes``, ``batch``, ``sink_rps`` (records/s through the ``auditgate.sinks``
class, built from settings exactly as the gateway builds it), ``raw_rps`` (records/s of the same
library writing the same bytes in the same batches: the practical limit), ``note``.

Only the time inside the writes is counted: batches (unique ``request_id``\\s, JSON encoded) are
prepared before each timed call, and ``open``/``close`` are not timed, so the numbers compare the
writing paths alone.  Each side writes ``batch``-record batches for ``seconds`` of write time.
A sink whose module is not there yet (or whose server is unreachable) is reported with ``null``
rates and the reason in ``note``.  Raw writers:

- ``stderr``: one ``os.write`` of the joined lines per batch to ``/dev/null`` (the sink writes to
  a ``/dev/null`` stream too);
- ``jsonl``: one ``os.write`` per batch to an ``O_APPEND`` file; ``jsonl_gz``: one gzip member
  (``zlib`` level 6) per batch, written the same way;
- ``sqlite``: ``executemany`` of ``(request_id, json)`` into a keyed table, one transaction per
  batch, WAL, ``synchronous=NORMAL``;
- ``postgres``: ``asyncpg`` ``copy_records_to_table`` of ``(request_id, jsonb)`` per batch, into a
  fresh database on 127.0.0.1:5432 that is dropped after;
- ``nats``: ``js.publish`` of every record of a batch concurrently (``Nats-Msg-Id`` set), awaiting
  all acknowledgements, on a unique stream that is deleted after.
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
import sqlite3
import string
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import Sink
from auditgate.config import AuditSettings, Secret
from bench.servers import NATS_URL, PG_ADMIN_DSN

NAMES = ("stderr", "jsonl", "jsonl_gz", "sqlite", "postgres", "nats")
BATCH = 512
TARGET_RECORD_BYTES = 4096
MAX_BYTES = 1 << 30
"""Most bytes each side writes, so a fast disk run stays bounded on disk too."""


class Texts:
    """Pseudo-random prose: as compressible as real text, and different in every record.

    A repeated sentence (or the same text in every record) would let gzip and JSONB's
    compression find it again and flatter their rates.
    """

    def __init__(self, seed: int = 6) -> None:
        self.rng = random.Random(seed)
        letters = string.ascii_lowercase
        self.vocabulary = [
            "".join(self.rng.choices(letters, k=self.rng.randint(2, 9))) for _ in range(2000)
        ]

    def next(self, chars: int) -> str:
        return " ".join(self.rng.choices(self.vocabulary, k=chars // 4))[:chars]


MODELS = ("llama-3-8b", "llama-3-70b", "qwen-2.5-7b", "mistral-7b", "gpt-oss-20b", "phi-4")
VARIED_STEP_MS = 3000
"""``--varied``: records are this far apart in ``created_at`` (a 512-record batch spans ~25 min,
so batches cross hours as a gateway's would)."""


def make_record(texts: Texts, seq: int, *, varied: bool = False) -> AuditRecord:
    """A ``full`` record of about :data:`TARGET_RECORD_BYTES` bytes of JSON, unique ids.

    ``varied``: spread as real traffic is over the rollups' keys (6 models, 20 tenants, the
    hour of ``created_at``) and their latency buckets (random latencies), instead of every
    record in one key and one bucket."""
    request_id = str(uuid.uuid4())
    model, tenant, created = "mock", None, 1_700_000_000_000
    ttft, duration = 10.0, 100.0
    if varied:
        model, tenant = MODELS[seq % len(MODELS)], f"tenant-{seq % 20}"
        created += seq * VARIED_STEP_MS
        ttft, duration = texts.rng.uniform(20, 300), texts.rng.uniform(200, 4000)
    usage = {"prompt_tokens": 400, "completion_tokens": 400, "total_tokens": 800}
    message = {"role": "user", "content": texts.next(1700)}
    answer = {"role": "assistant", "content": texts.next(1700)}
    return AuditRecord(
        request_id=request_id,
        requested_streaming=False,
        mode="full",
        model=model,
        usage=usage,
        request={"model": model, "messages": [message], "store": True},
        response={
            # Unique: the stored-completions schema keys on the response id as well.
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "mock",
            "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
            "usage": usage,
        },
        engine="mock",
        status="completed",
        complete=True,
        created_at=created,
        completed_at=created + 100,
        ttft_ms=ttft,
        duration_ms=duration,
        tenant=tenant,
        writer="bench:1:abcdef01",
        seq=seq,
    )


class Batches:
    """Fresh batches of envelopes with unique ids and their JSON already encoded."""

    def __init__(self, size: int, *, varied: bool = False) -> None:
        self.texts = Texts()
        self.size = size
        self.seq = 0
        self.varied = varied

    def next(self) -> list[Envelope]:
        batch = []
        for _ in range(self.size):
            self.seq += 1
            envelope = Envelope(make_record(self.texts, self.seq, varied=self.varied))
            _ = envelope.json  # encode now, outside the timed write
            batch.append(envelope)
        return batch

    def record_bytes(self) -> int:
        return len(self.next()[0].json) + 1


Write = Callable[[list[Envelope]], Awaitable[None]]


async def alternate(
    sink: Write, raw: Write, seconds: float, max_records: int
) -> tuple[float, float]:
    """Records/s of ``sink`` and of ``raw``, fed alternate batches, over time spent inside each.

    Alternating makes both sides meet the same conditions (page-cache writeback, a busy
    database); each stops after ``seconds`` of its own write time or ``max_records`` records.
    """
    batches = Batches(BATCH)
    spent = [0.0, 0.0]
    records = [0, 0]
    wall_limit = time.monotonic() + 10 * seconds + 10
    while time.monotonic() < wall_limit:
        active = [i for i in (0, 1) if spent[i] < seconds and records[i] < max_records]
        if not active:
            break
        for i in active:
            batch = batches.next()
            start = time.perf_counter()
            await (sink, raw)[i](batch)
            spent[i] += time.perf_counter() - start
            records[i] += len(batch)
    return records[0] / spent[0], records[1] / spent[1]


def lines(batch: Sequence[Envelope]) -> bytes:
    return b"".join([e.json + b"\n" for e in batch])


# --- resources ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh database, dropped after."""
    import asyncpg

    name = f"agbench_sinks_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def nats_stream() -> AsyncIterator[tuple[str, str]]:
    """Unique (stream, subject); the stream is deleted after (if anyone created it)."""
    import nats
    from nats.js.errors import NotFoundError

    token = uuid.uuid4().hex[:10]
    stream, subject = f"AGBENCH_SINKS_{token.upper()}", f"agbench.sinks.{token}"
    try:
        yield stream, subject
    finally:
        nc = await nats.connect(NATS_URL)
        try:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()


# --- the sink side -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sink_writer(name: str, settings: AuditSettings) -> AsyncIterator[Write]:
    """The ``write`` of the sink the gateway would build for ``name``, opened and closed."""
    from auditgate.sinks import build_sinks

    async with contextlib.AsyncExitStack() as stack:
        sink: Sink
        if name == "stderr":
            from auditgate.sinks.stderr import StderrSink

            # The gateway's stderr sink writes to fd 2; here, to a /dev/null stream instead.
            devnull = os.fdopen(os.open(os.devnull, os.O_WRONLY), "wb")
            stack.callback(devnull.close)
            sink = StderrSink(devnull)
        else:
            (sink,) = build_sinks(settings)
        await sink.open()
        try:
            yield sink.write
        finally:
            await sink.close()


# --- the raw side ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_file(path: str, gzip: bool) -> AsyncIterator[Write]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def write(batch: list[Envelope]) -> None:
        data = lines(batch)
        if gzip:
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
            data = c.compress(data) + c.flush()
        os.write(fd, data)

    try:
        yield write
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def raw_sqlite(path: str) -> AsyncIterator[Write]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE records (request_id TEXT PRIMARY KEY, body TEXT NOT NULL)")

    async def write(batch: list[Envelope]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO records VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(e.request_id, e.json.decode()) for e in batch],
        )
        conn.execute("COMMIT")

    try:
        yield write
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def raw_postgres(dsn: str) -> AsyncIterator[Write]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE raw_records (request_id text PRIMARY KEY, body jsonb NOT NULL)"
    )
    # COPY uses the binary format; binary jsonb is a version byte (1) and the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda data: b"\x01" + data,
        decoder=lambda data: data[1:],
        schema="pg_catalog",
        format="binary",
    )

    async def write(batch: list[Envelope]) -> None:
        await conn.copy_records_to_table(
            "raw_records", records=[(e.request_id, e.json) for e in batch]
        )

    try:
        yield write
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def raw_nats(stream: str, subject: str) -> AsyncIterator[Write]:
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])

    async def write(batch: list[Envelope]) -> None:
        await asyncio.gather(
            *[js.publish(subject, e.json, headers={"Nats-Msg-Id": e.request_id}) for e in batch]
        )

    try:
        yield write
    finally:
        await nc.close()


# --- driver ------------------------------------------------------------------------------------


async def bench_one(name: str, seconds: float, tmp: Path) -> dict[str, Any]:
    """Sink and raw rates for one sink name (each side in its own fresh destination)."""
    row: dict[str, Any] = {
        "sink": name,
        "record_bytes": Batches(1).record_bytes(),
        "batch": BATCH,
        "sink_rps": None,
        "raw_rps": None,
        "note": None,
    }
    async with contextlib.AsyncExitStack() as stack:
        settings: dict[str, Any] = {"enabled": True, "sinks": (name,)}
        raw: contextlib.AbstractAsyncContextManager[Write]
        if name == "stderr":
            raw = raw_file(os.devnull, gzip=False)
        elif name in ("jsonl", "jsonl_gz"):
            settings["output_path"] = str(tmp / f"{name}-sink" / "audit.jsonl")
            raw = raw_file(str(tmp / f"{name}-raw.jsonl"), gzip=name == "jsonl_gz")
        elif name == "sqlite":
            settings["sqlite_path"] = str(tmp / "sink.db")
            raw = raw_sqlite(str(tmp / "raw.db"))
        elif name == "postgres":
            settings["postgres_url"] = Secret(await stack.enter_async_context(pg_database()))
            raw = raw_postgres(await stack.enter_async_context(pg_database()))
        else:
            stream, subject = await stack.enter_async_context(nats_stream())
            settings |= {"nats_url": NATS_URL, "nats_stream": stream, "nats_subject": subject}
            raw_stream, raw_subject = await stack.enter_async_context(nats_stream())
            raw = raw_nats(raw_stream, raw_subject)
        try:
            sink_write = await stack.enter_async_context(
                sink_writer(name, AuditSettings(**settings))
            )
        except ImportError as exc:
            row["note"] = f"sink not available here yet: {exc}"
            return row
        raw_write = await stack.enter_async_context(raw)
        try:
            sink_rps, raw_rps = await alternate(
                sink_write, raw_write, seconds, MAX_BYTES // row["record_bytes"]
            )
        except Exception as exc:  # a sink bug must not hide the other sinks' numbers
            row["note"] = f"write failed: {type(exc).__name__}: {exc}"
            return row
        row["sink_rps"], row["raw_rps"] = round(sink_rps), round(raw_rps)
    return row


# --- what the console's rollup schema costs a store sink (--schema-cost) ------------------------

VARIANTS = ("all", "no_m011", "no_m010_m011")
"""``all``: every migration; ``no_m011``: no ``usage_latency_tenant`` writes (m011); also without
m010's two covering read indexes on the rollups."""
_M010_INDEXES = ("usage_rollups_read", "usage_latency_read")


def _without_m011(write: Write) -> Write:
    """``write`` with the ``usage_latency_tenant`` upserts left out (as before m011)."""
    from auditgate.store import rollups

    def no_rows(self: rollups.Delta) -> list[tuple[Any, ...]]:
        return []

    async def patched(batch: list[Envelope]) -> None:
        saved = rollups.Delta.tenant_latency_rows
        rollups.Delta.tenant_latency_rows = no_rows  # type: ignore[method-assign]
        try:
            await write(batch)
        finally:
            rollups.Delta.tenant_latency_rows = saved  # type: ignore[method-assign]

    return patched


async def _drop_m010(name: str, destination: str) -> None:
    if name == "sqlite":
        conn = sqlite3.connect(destination, isolation_level=None)
        try:
            for index in _M010_INDEXES:
                conn.execute(f"DROP INDEX {index}")
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(destination)
    try:
        for index in _M010_INDEXES:
            await pg.execute(f"DROP INDEX {index}")
    finally:
        await pg.close()


async def bench_schema_cost(name: str, seconds: float, tmp: Path, varied: bool) -> dict[str, Any]:
    """Records/s of the ``name`` store sink with each of :data:`VARIANTS` (each its own fresh
    destination) and of the raw client, all fed alternate batches in one run."""
    row: dict[str, Any] = {"sink": name, "varied": varied, "batch": BATCH}
    async with contextlib.AsyncExitStack() as stack:
        writers: list[Write] = []
        for variant in VARIANTS:
            settings: dict[str, Any] = {"enabled": True, "sinks": (name,)}
            if name == "sqlite":
                destination = str(tmp / f"sink-{variant}.db")
                settings["sqlite_path"] = destination
            else:
                destination = await stack.enter_async_context(pg_database())
                settings["postgres_url"] = Secret(destination)
            write = await stack.enter_async_context(sink_writer(name, AuditSettings(**settings)))
            if variant == "no_m010_m011":
                await _drop_m010(name, destination)
            writers.append(write if variant == "all" else _without_m011(write))
        raw: contextlib.AbstractAsyncContextManager[Write]
        if name == "sqlite":
            raw = raw_sqlite(str(tmp / "raw.db"))
        else:
            raw = raw_postgres(await stack.enter_async_context(pg_database()))
        writers.append(await stack.enter_async_context(raw))
        rates = await alternate_many(writers, seconds, varied)
    for variant, rate in zip((*VARIANTS, "raw"), rates, strict=True):
        row[f"{variant}_rps"] = round(rate)
    return row


async def alternate_many(writers: Sequence[Write], seconds: float, varied: bool) -> list[float]:
    """Records/s of each writer, fed batches in turn, over the time spent inside each."""
    batches = Batches(BATCH, varied=varied)
    spent = [0.0] * len(writers)
    records = [0] * len(writers)
    wall_limit = time.monotonic() + 10 * seconds * len(writers) + 10
    while time.monotonic() < wall_limit and min(spent) < seconds:
        for i, write in enumerate(writers):
            if spent[i] >= seconds:
                continue
            batch = batches.next()
            start = time.perf_counter()
            await write(batch)
            spent[i] += time.perf_counter() - start
            records[i] += len(batch)
    return [n / t for n, t in zip(records, spent, strict=True)]


async def main_async(
    names: Sequence[str], seconds: float, schema_cost: bool = False, varied: bool = False
) -> None:
    with tempfile.TemporaryDirectory(prefix="agbench-sinks-") as tmp:
        for name in names:
            if schema_cost:
                if name in ("sqlite", "postgres"):
                    row = await bench_schema_cost(name, seconds, Path(tmp), varied)
                    print(json.dumps(row), flush=True)
                continue
            row = await bench_one(name, seconds, Path(tmp))
            print(json.dumps(row), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--seconds", type=float, default=3.0, help="timed write seconds per side")
    p.add_argument("--only", action="append", choices=NAMES, help="bench only these sinks")
    p.add_argument(
        "--schema-cost",
        action="store_true",
        help="sqlite/postgres: the sink with every migration, without m011's writes, and "
        "without m010's indexes too, next to the raw client, in one run",
    )
    p.add_argument(
        "--varied",
        action="store_true",
        help="records spread over models, tenants, hours and latencies (as traffic is)",
    )
    a = p.parse_args(argv)
    asyncio.run(main_async(a.only or NAMES, a.seconds, a.schema_cost, a.varied))


if __name__ == "__main__":
    main()
