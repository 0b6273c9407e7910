"""The usage page read from the hourly rollups, served by ``auditgate ui`` on each store: its
tables equal ``auditgate stats --exact`` for the same window (partial hours at both ends
included), its latency percentiles are the exact ones' histogram buckets, and a user key sees
its own tenant only."""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from auditgate.auth.keys import add_key
from auditgate.cli.stats import NO_TENANT, collect
from auditgate.store import postgres as pg_store
from auditgate.store import sqlite as sqlite_store
from auditgate.store.queries import Filter
from auditgate.store.rollups import HOUR_MS, bucket_of, bucket_upper
from auditgate.store.schema import row_from_record
from auditgate.store.url import open_store
from tests.store.records import make_record
from tests.support.gateway import clean_env, free_port

BASE = 1758740068000 - 1758740068000 % HOUR_MS
"""A whole UTC hour; records are every 37 minutes from here, for about 37 hours."""
SINCE = BASE + 20 * 60_000
UNTIL = BASE + 30 * HOUR_MS + 25 * 60_000
"""The page's window: 30 h 5 min (hourly points), starting and ending inside an hour."""


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "audit.db"
    conn = sqlite_store.connect(path)
    sqlite_store.migrate(conn)
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
async def postgres_url(pg_dsn: str) -> str:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await pg_store.migrate(conn)
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """Each store in turn, holding :func:`dataset` with two records deleted through the API."""
    chosen: str = request.getfixturevalue(f"{request.param}_url")
    return chosen


def dataset() -> list[Any]:
    records = []
    for i in range(60):
        records.append(
            make_record(
                i,
                created_at=BASE + i * 37 * 60_000 + i,
                model=f"m{i % 3}",
                tenant=None if i % 5 == 0 else f"t{i % 2}",
                status=("completed", "error", "cancelled")[i % 7 % 3],
                duration_ms=0.5 + (i * 7919 % 1000) * 1.7,
                ttft_ms=None if i % 6 == 0 else 0.2 + i,
            )
        )
    return records


async def load(url: str, records: list[Any]) -> None:
    rows = [row_from_record(r) for r in records]
    if url.startswith("sqlite:///"):
        conn = sqlite_store.connect(url[len("sqlite:///") :])
        try:
            sqlite_store.insert_rows(conn, rows)
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(url)
        try:
            await pg_store.insert_rows(pg, rows)
        finally:
            await pg.close()
    store = open_store(url)
    await store.open()
    try:
        for record in records[7:9]:
            assert await store.delete(f"chatcmpl-{record.request_id}", None)
    finally:
        await store.close()


@contextlib.contextmanager
def console(url: str, keys: Path) -> Iterator[str]:
    """``auditgate ui`` on ``url``; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "auditgate", "ui", "--port", str(port), "--store", url]
    process = subprocess.Popen(
        [*command, "--api-keys-file", str(keys)],
        env=clean_env({}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/ui/login", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def usage_page(base: str, key: str) -> str:
    def field(ms: int) -> str:
        return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M"
        )

    with httpx.Client(base_url=base) as client:
        login = client.post("/ui/login", data={"key": key, "next": "/ui/usage"})
        assert login.status_code == 303, login.text
        page = client.get("/ui/usage", params={"since": field(SINCE), "until": field(UNTIL)})
        assert page.status_code == 200, page.text
        return page.text


def tables(page: str) -> dict[str, dict[str, list[int]]]:
    """``{caption: {name: [requests, prompt, completion, errors, cancelled]}}`` of the page."""
    out: dict[str, dict[str, list[int]]] = {}
    for caption, body in re.findall(r"<caption>(.*?)</caption>.*?<tbody>(.*?)</tbody>", page, re.S):
        rows: dict[str, list[int]] = {}
        for cells in re.findall(r"<tr>(.*?)</tr>", body, re.S):
            values = [html.unescape(v) for v in re.findall(r"<td[^>]*>(.*?)</td>", cells)]
            if len(values) == 6:
                rows[values[0]] = [int(v) for v in values[1:]]
        out[caption] = rows
    return out


async def exact(url: str, by: str, tenant: str | None) -> dict[str, list[int]]:
    """``stats --exact`` of the window: ``{name: [requests, prompt, completion, errors]}``."""
    where = Filter(
        tenant=tenant,
        since_ms=SINCE,
        until_ms=UNTIL,
        stored_only=False,
        live_only=True,
        requests_only=True,
    )
    doc = await collect(url, where, by, exact=True)
    assert doc["source"] == "exact"
    return {
        ("(none)" if g["key"] == NO_TENANT else g["key"]): [
            g["requests"],
            g["prompt_tokens"],
            g["completion_tokens"],
            g["errors"],
        ]
        for g in doc["groups"]
    }


def hourly_p50_p99(records: list[Any], tenant: str | None) -> dict[float, list[float]]:
    """Per hour (Unix s) of the window: nearest-rank p50 and p99 of the live records'
    ``duration_ms``, as their latency bucket's upper bound."""
    hours: dict[int, list[float]] = {}
    for i, r in enumerate(records):
        if 7 <= i < 9 or not SINCE <= r.created_at < UNTIL:
            continue
        if tenant is not None and r.tenant != tenant:
            continue
        hours.setdefault(r.created_at // HOUR_MS * HOUR_MS, []).append(r.duration_ms)
    out = {}
    for hour, values in hours.items():
        ordered = sorted(values)
        out[hour / 1000] = [
            bucket_upper(bucket_of(ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]))
            for p in (50, 99)
        ]
    return out


async def test_usage_page_equals_exact_stats_and_scopes_users(url: str, tmp_path: Path) -> None:
    """Admin: the page's model and tenant tables equal ``stats --exact`` of the same
    (not hour-aligned) window, its hourly p50/p99 are the exact percentiles' buckets, and it
    says it read the rollups.  A user key: the same for its tenant, and no other tenant."""
    records = dataset()
    await load(url, records)
    keys = tmp_path / "keys.json"
    admin = add_key(str(keys), name="boss", tenant="t0", role="admin")
    user = add_key(str(keys), name="ann", tenant="t1", role="user")
    with console(url, keys) as base:
        pages = {"admin": usage_page(base, admin), "user": usage_page(base, user)}
    seen = {}
    for who, tenant in (("admin", None), ("user", "t1")):
        page = pages[who]
        shown = tables(page)
        charts = json.loads(
            html.unescape(re.search(r'id="chart-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
        )
        latency = {
            x: [p50, p99]
            for x, p50, p99 in zip(
                charts["x"], charts["latency_ms"]["p50"], charts["latency_ms"]["p99"], strict=True
            )
            if p50 is not None
        }
        seen[who] = (
            {name: row[:4] for name, row in shown["By model"].items()},
            {name: row[:4] for name, row in shown["By tenant"].items()},
            latency,
            "from the hourly rollups" in page,
        )
        expected = (
            await exact(url, "model", tenant),
            await exact(url, "tenant", tenant),
            hourly_p50_p99(records, tenant),
            True,
        )
        assert seen[who] == expected, who
    assert sorted(seen["admin"][1]) == ["(none)", "t0", "t1"]
    assert list(seen["user"][1]) == ["t1"]
    assert sum(r[0] for r in seen["admin"][0].values()) == sum(
        1 for i, r in enumerate(records) if SINCE <= r.created_at < UNTIL and not 7 <= i < 9
    )
