"""Retention on both stores: whole days go (PostgreSQL: whole partitions), per tenant where asked,
never under a legal hold, and the rollups stay equal to the exact statistics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from auditgate.audit.metrics import AuditMetrics
from auditgate.cli.main import main
from auditgate.cli.stats import collect
from auditgate.sinks.sqlite import SqliteSink
from auditgate.store import partitions, retention
from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.partitions import DAY_MS, day_of, partition_name
from auditgate.store.queries import Filter
from auditgate.store.schema import TABLE, row_from_record
from auditgate.store.url import open_store
from tests.store.records import make_record
from tests.store.test_rollups import tenant_latency
from tests.support.gateway import running_gateway

DAY0 = 1758672000000
"""2025-09-24 00:00 UTC."""


def dataset() -> list[Any]:
    """Six records a day over four days, tenants a, b and none."""
    return [
        make_record(
            i,
            created_at=DAY0 + (i % 4) * DAY_MS + i * 1000,
            tenant=(None, "a", "b")[i % 3],
            duration_ms=1.0 + i,
        )
        for i in range(24)
    ]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite store holding :func:`dataset`."""
    path = tmp_path / "audit.db"
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
async def postgres_url(pg_dsn: str) -> str:
    """A PostgreSQL store holding :func:`dataset`."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
        await pg_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """Each store in turn, filled."""
    chosen: str = request.getfixturevalue(f"{request.param}_url")
    return chosen


async def left(url: str) -> list[int]:
    """``seq`` of the records still stored (deleted-through-the-API ones too)."""
    where = Filter(stored_only=False, live_only=False)
    store = open_store(url)
    await store.open()
    try:
        return [row["seq"] async for row in store.scan(where)]
    finally:
        await store.close()


async def rollups_match(url: str) -> bool:
    """Whether ``stats`` from the rollups counts what the exact path counts, per tenant."""
    where = Filter(stored_only=False, live_only=False, requests_only=True)
    exact = await collect(url, where, "tenant", exact=True)
    rolled = await collect(url, where, "tenant")

    def counts(doc: dict[str, Any]) -> list[tuple[str, int, int]]:
        return [(g["key"], g["requests"], g["prompt_tokens"]) for g in doc["groups"]]

    held, expected = await tenant_latency(url)
    return (counts(exact), held) == (counts(rolled), expected)


def ids_from(day: int, tenant: str | None = "*") -> list[int]:
    """``seq`` of the :func:`dataset` records a retention with cutoff ``DAY0 + day`` days (of
    ``tenant`` only, unless ``"*"``) keeps."""
    return [
        r.seq
        for r in dataset()
        if r.created_at >= DAY0 + day * DAY_MS or (tenant != "*" and r.tenant != tenant)
    ]


async def test_retention_deletes_whole_days(url: str) -> None:
    """Days before the cutoff go whole; PostgreSQL drops their partitions; rollups follow."""
    outcome = await retention.retain(url, DAY0 + 2 * DAY_MS)
    expected_parts = (
        [partition_name(day_of(DAY0)), partition_name(day_of(DAY0) + 1)]
        if url.startswith("postgres")
        else []
    )
    assert (12, expected_parts) == (outcome.rows, outcome.partitions)
    assert sorted(ids_from(2)) == sorted(await left(url))
    assert await rollups_match(url)


async def test_tenant_retention_deletes_only_that_tenant(url: str) -> None:
    """--tenant deletes that tenant's old rows and nothing of the others'."""
    outcome = await retention.retain(url, DAY0 + 3 * DAY_MS, "a")
    assert (outcome.rows, outcome.partitions) == (6, [])
    assert sorted(ids_from(3, "a")) == sorted(await left(url))
    assert await rollups_match(url)


async def test_legal_holds_refuse_retention(url: str) -> None:
    """A hold on the store refuses all; a hold on tenant a refuses a and the whole store, not b;
    nothing is deleted by a refused run, and clearing the hold lets retention run."""
    cutoff = DAY0 + 4 * DAY_MS
    await retention.set_hold(url, "case-1", "a", "litigation 42")
    refused = []
    for tenant in (None, "a"):
        with pytest.raises(retention.LegalHoldError) as caught:
            await retention.retain(url, cutoff, tenant)
        refused.append(str(caught.value))
    other = await retention.retain(url, cutoff, "b")
    holds = await retention.list_holds(url)
    assert len(await left(url)) == 16
    assert [h.name for h in holds] == ["case-1"]
    assert (holds[0].tenant, holds[0].reason) == ("a", "litigation 42")
    assert other.rows == 8
    assert all("case-1" in message for message in refused)
    assert await retention.clear_hold(url, "case-1")
    assert not await retention.clear_hold(url, "case-1")
    assert (await retention.retain(url, cutoff)).rows == 16


async def test_sqlite_retention_runs_in_batches(sqlite_url: str) -> None:
    """Small batches delete everything older, one short transaction each."""
    conn = sqlite_store.connect(sqlite_url[len("sqlite:///") :])
    try:
        outcome = retention.sqlite_retain(conn, DAY0 + 4 * DAY_MS, batch=5)
        pairs = conn.execute("SELECT count(*) FROM completion_metadata").fetchone()[0]
    finally:
        conn.close()
    assert (outcome.rows, pairs) == (24, 0)


async def test_postgres_retention_keeps_partitions_ahead(postgres_url: str) -> None:
    """Retention never drops today's partition or those made ahead."""
    conn = await asyncpg.connect(postgres_url)
    try:
        before = [p.name for p in await partitions.partitions(conn)]
        outcome = await retention.postgres_retain(conn, retention.cutoff_of(DAY0 + 400 * DAY_MS, 0))
        after = [p.name for p in await partitions.partitions(conn)]
        count = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
    finally:
        await conn.close()
    assert (24, before[4:], 0) == (outcome.rows, after, count)


def test_cli_retention_and_holds(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The commands: hold set/list/clear print the holds; retention exits 3 under a hold,
    then deletes and prints what it deleted."""
    store = ["--store", sqlite_url]
    codes = [
        main(["hold", "set", "audit-2026", "--reason", "regulator", *store]),
        main(["retention", "--older-than", "30", *store]),
    ]
    held = capsys.readouterr()
    codes += [main(["hold", "clear", "audit-2026", *store])]
    capsys.readouterr()
    codes += [main(["retention", "--older-than", "30", *store])]
    done = json.loads(capsys.readouterr().out)
    codes += [main(["hold", "clear", "audit-2026", *store])]
    assert codes == [0, 3, 0, 0, 2]
    assert "audit-2026" in json.loads(held.out.splitlines()[0])[0]["name"]
    assert "legal hold 'audit-2026' (regulator)" in held.err
    assert (done["rows"], done["tenant"]) == (24, None)


async def test_sqlite_sink_runs_retention_and_counts_it(tmp_path: Path) -> None:
    """A sink with retention days deletes old records at once and counts them; a hold set later
    is counted as a refusal, not an error."""
    path = tmp_path / "audit.db"
    metrics = AuditMetrics()
    sink = SqliteSink(str(path), retention_days=30, maintenance_interval_s=0.05, metrics=metrics)
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    sqlite_store.insert_rows(conn, [row_from_record(r) for r in dataset()])
    await sink.open()
    try:
        while sink.maintenance.runs < 1:
            await asyncio.sleep(0.01)
        retention.sqlite_set_hold(conn, "h", None, "why")
        runs = sink.maintenance.runs
        while sink.maintenance.runs < runs + 2:
            await asyncio.sleep(0.01)
    finally:
        await sink.close()
        left_rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        conn.close()
    sample = metrics.registry.get_sample_value
    assert (
        left_rows,
        sample("auditgate_store_retention_deleted_total", {"sink": "sqlite"}),
    ) == (0, 24.0)
    refused = sample("auditgate_store_retention_refused_total", {"sink": "sqlite"})
    assert refused is not None and refused >= 1


async def test_gateway_retention_days_drops_old_partitions(
    postgres_url: str, tmp_path: Path
) -> None:
    """A gateway with DYN_AUDIT_RETENTION_DAYS drops the old days' partitions at start and
    counts them in /metrics; what it stores now stays and lists through the SDK."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "postgres",
        "DYN_AUDIT_POSTGRES_URL": postgres_url,
        "DYN_AUDIT_RETENTION_DAYS": "30",
    }

    def run() -> tuple[list[str], list[str], str]:
        with running_gateway(env, log_dir=tmp_path) as g:
            client = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
            made = client.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "hi"}], store=True
            )
            deadline = time.monotonic() + 20
            while True:
                text = g.metrics()
                listed = [c.id for c in client.chat.completions.list().data]
                if 'retention_deleted_total{sink="postgres"} 24.0' in text and listed:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            return [made.id], listed, text

    made, listed, text = await asyncio.to_thread(run)
    assert made == listed
    assert 'auditgate_store_retention_partitions_dropped_total{sink="postgres"} 4.0' in text
    assert len(await left(postgres_url)) == 1


async def test_postgres_drop_waits_for_a_reader_instead_of_deadlocking(postgres_url: str) -> None:
    """A reader holds the table and then asks for a partition (as every query over the whole
    table does) while retention drops that partition: the reader gets it and retention goes on
    after it.  Retention once locked the partition first and the table at DROP: a deadlock."""
    reader = await asyncpg.connect(postgres_url)
    try:
        victim = (await partitions.partitions(reader))[0].name
        async with reader.transaction():
            await reader.execute(f"LOCK TABLE ONLY {TABLE} IN ACCESS SHARE MODE")
            dropping = asyncio.ensure_future(retention.retain(postgres_url, DAY0 + DAY_MS))
            await asyncio.sleep(0.5)  # retention is now waiting for the table
            await asyncio.wait_for(
                reader.execute(f"LOCK TABLE {victim} IN ACCESS SHARE MODE"), timeout=5
            )
        outcome = await asyncio.wait_for(dropping, timeout=20)
    finally:
        await reader.close()
    assert (outcome.partitions, sorted(await left(postgres_url))) == ([victim], ids_from(1))


async def test_a_failed_maintenance_run_is_tried_again_soon() -> None:
    """A run that fails (a lock timeout, a deadlock) is retried after ``retry_s``, not an
    interval later; a successful one waits the interval."""
    calls: list[float] = []

    async def step() -> retention.Outcome | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return None

    metrics = AuditMetrics()
    maintenance = retention.Maintenance(
        "postgres", step, interval_s=60, retry_s=0.05, metrics=metrics
    )
    maintenance.start()
    try:
        deadline = time.monotonic() + 5
        while maintenance.runs < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    finally:
        await maintenance.stop()
    errors = metrics.registry.get_sample_value(
        "auditgate_store_maintenance_errors_total", {"sink": "postgres"}
    )
    assert (len(calls), errors) == (2, 1.0)
