"""Memory with a sink down, through a real gateway: bounded in bytes, whatever the record size.

``DYN_AUDIT_CAPACITY_BYTES`` bounds the JSON bytes each sink keeps in memory.  A queued record
also has its decoded form (about as large as its JSON for text bodies), so the gateway's
resident memory may grow by up to twice the bound over its idle size; :data:`MARGIN` is room
for the request in flight (a 1 MiB body is held about three times while it is handled), the
batch a sink builds its rows from once it is back (at most 8 MiB of JSON) and the allocator's
slack.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from openai import OpenAI

from tests.server.test_lifecycle import metric
from tests.support.gateway import Gateway, start_gateway
from tests.support.postgres import PgCluster, pg_cluster

BOUND = 32 << 20
"""``DYN_AUDIT_CAPACITY_BYTES`` of these tests."""
MARGIN = 24 << 20
"""Resident memory allowed over the idle size beyond twice the bound."""
RECORDS = 150
"""1 MiB records sent while the sink is down: about five bounds' worth."""
CONTENT = "x" * (1 << 20)


def rss(gateway: Gateway) -> int:
    """The gateway process's resident memory in bytes (``VmRSS``)."""
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


class PeakRss:
    """The largest resident memory of a gateway while a ``with`` block runs, sampled every
    5 ms on a thread (a batch being written lasts longer than that)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss(self.gateway))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def send(gateway: Gateway, count: int, content: str) -> list[str]:
    """``count`` stored chat completions through the SDK, one at a time; their request ids."""
    client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=60)
    ids: list[str] = []
    for i in range(count):
        completion = client.chat.completions.create(
            model="mock", store=True, messages=[{"role": "user", "content": f"{i} {content}"}]
        )
        ids.append(completion.id.removeprefix("chatcmpl-"))
    return ids


def stored_ids(dsn: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r[0] for r in await conn.fetch("SELECT request_id FROM completions")]
        finally:
            await conn.close()

    return asyncio.run(read())


def settled(gateway: Gateway, published: int, timeout: float = 120.0) -> str:
    """The metrics once the postgres sink's queue is empty and every published record is
    written or dropped."""
    deadline = time.monotonic() + timeout
    while True:
        text = gateway.metrics()
        written = metric(text, "auditgate_audit_written_total", sink="postgres")
        dropped = metric(
            text, "auditgate_audit_dropped_total", sink="postgres", reason="queue_full_bytes"
        )
        if metric(text, "auditgate_audit_queue_depth", sink="postgres") == 0 and (
            written + dropped == published
        ):
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.2)


def down_gateway(
    cluster: PgCluster, tmp_path: Path, durability: str
) -> tuple[Gateway, list[str], int]:
    """A gateway whose postgres sink's server is down, the ids of two small records it was
    warmed up with, and its resident memory then."""
    cluster.stop("immediate")
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "postgres",
        "DYN_AUDIT_POSTGRES_URL": cluster.dsn,
        "DYN_AUDIT_DURABILITY": durability,
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "DYN_AUDIT_CAPACITY_BYTES": str(BOUND),
    }
    gateway = start_gateway(env, log_dir=tmp_path)
    warm = send(gateway, 2, "warm up")  # lazy imports and first-request allocations
    return gateway, warm, rss(gateway)


def test_best_effort_with_the_sink_down_drops_past_the_byte_bound(tmp_path: Path) -> None:
    """Best effort: 150 records of 1 MiB behind a PostgreSQL that is down keep the gateway within
    the bound, also while the queue drains once the server is back; the records past the bound
    are counted as ``queue_full_bytes`` and logged, and what was kept is stored."""
    with pg_cluster() as cluster:
        gateway, warm, idle = down_gateway(cluster, tmp_path, "best_effort")
        try:
            with PeakRss(gateway) as memory:
                ids = send(gateway, RECORDS, CONTENT)
                held = metric(gateway.metrics(), "auditgate_audit_queue_bytes", sink="postgres")
                cluster.start()
                text = settled(gateway, RECORDS + 2)
            grown = memory.peak - idle
            assert (grown <= 2 * BOUND + MARGIN, 0 < held <= BOUND) == (True, True), (grown, held)
            written = metric(text, "auditgate_audit_written_total", sink="postgres")
            dropped = metric(
                text, "auditgate_audit_dropped_total", sink="postgres", reason="queue_full_bytes"
            )
            stored = stored_ids(cluster.dsn)
            assert (len(stored), dropped) == (written, RECORDS + 2 - written)
            assert 0 < written < RECORDS and set(stored) <= set(warm + ids)
            assert "audit sink postgres: queue full (" in gateway.log()
        finally:
            assert gateway.stop() == 0


def test_durable_with_the_sink_down_reads_the_spool_and_loses_nothing(tmp_path: Path) -> None:
    """Durable: 150 records of 1 MiB behind a PostgreSQL that is down keep the gateway within
    the bound (the reader reads them back from the spool), also while they are delivered once
    the server is back, and every one is stored."""
    with pg_cluster() as cluster:
        gateway, warm, idle = down_gateway(cluster, tmp_path, "durable")
        try:
            with PeakRss(gateway) as memory:
                ids = send(gateway, RECORDS, CONTENT)
                held = metric(gateway.metrics(), "auditgate_audit_queue_bytes", sink="postgres")
                cluster.start()
                text = settled(gateway, RECORDS + 2)
            grown = memory.peak - idle
            assert (grown <= 2 * BOUND + MARGIN, held <= BOUND) == (True, True), (grown, held)
            stored = stored_ids(cluster.dsn)
            assert sorted(warm + ids) == sorted(stored)
            assert metric(text, "auditgate_audit_written_total", sink="postgres") == RECORDS + 2
        finally:
            assert gateway.stop() == 0


@pytest.mark.parametrize("durability", ["best_effort", "durable"])
def test_memory_of_large_bodies_is_given_back(tmp_path: Path, durability: str) -> None:
    """After 32 stored 7 MB bodies, 4 at a time, are written to a jsonl sink, the gateway's
    resident memory is back within :data:`MARGIN` of its idle size (it kept 135 MiB in best
    effort and 298 MiB in durable mode)."""
    env = {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "jsonl",
        "DYN_AUDIT_OUTPUT_PATH": str(tmp_path / "audit.jsonl"),
        "DYN_AUDIT_DURABILITY": durability,
        "DYN_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
    }
    gateway = start_gateway(env, log_dir=tmp_path)
    try:
        send(gateway, 2, "warm up")
        idle = rss(gateway)
        content = "y" * 7_000_000
        with ThreadPoolExecutor(4) as pool:
            sent = list(pool.map(lambda _: send(gateway, 8, content), range(4)))
        deadline = time.monotonic() + 60
        while metric(gateway.metrics(), "auditgate_audit_written_total", sink="jsonl") < 34:
            assert time.monotonic() < deadline, gateway.metrics()
            time.sleep(0.1)
        time.sleep(0.5)  # the sink worker is back waiting for records
        grown = rss(gateway) - idle
        lines = (tmp_path / "audit.jsonl").read_bytes().count(b"\n")
        assert (sum(len(ids) for ids in sent), lines, grown <= MARGIN) == (32, 34, True), grown
    finally:
        assert gateway.stop() == 0
