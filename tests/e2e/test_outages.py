"""A sink's server goes down mid-load: requests keep succeeding, no loss is silent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import nats

from tests.server.test_lifecycle import metric
from tests.support.gateway import Gateway, start_gateway
from tests.support.nats import private_nats
from tests.support.postgres import pg_cluster

N = 300


def load(gateway: Gateway, statuses: list[int], stop_after: int) -> None:
    """``stop_after`` stored requests, alternating stream and non-stream, ~200 per second."""
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        for i in range(stop_after):
            body = {
                "model": "mock",
                "messages": [{"role": "user", "content": f"n{i}"}],
                "store": True,
                "stream": i % 2 == 1,
            }
            statuses.append(client.post("/chat/completions", json=body).status_code)
            time.sleep(0.005)


def run_with_outage(
    gateway: Gateway, stop: Callable[[], None], start: Callable[[], None]
) -> list[int]:
    """Run the load; stop the server a third of the way in and start it 2 s later."""
    statuses: list[int] = []
    worker = threading.Thread(target=load, args=(gateway, statuses, N))
    worker.start()
    while len(statuses) < N // 3:
        time.sleep(0.01)
    stop()
    time.sleep(2.0)
    start()
    worker.join(120)
    assert not worker.is_alive()
    return statuses


def accounted(gateway: Gateway, sink: str) -> tuple[float, float]:
    """(written, dropped for any reason) for ``sink`` once its queue is empty."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = gateway.metrics()
        if metric(text, "auditgate_audit_queue_depth", sink=sink) == 0:
            written = metric(text, "auditgate_audit_written_total", sink=sink)
            dropped = sum(
                metric(text, "auditgate_audit_dropped_total", sink=sink, reason=reason)
                for reason in ("queue_full", "shutdown")
            )
            if written + dropped == N:
                return written, dropped
        time.sleep(0.1)
    raise AssertionError(gateway.metrics())


def test_nats_outage_under_load_loses_nothing_silently(tmp_path: Path, unique: str) -> None:
    """NATS down for 2 s mid-load: every request is 200 and written + dropped == N exactly."""
    stream, subject = f"OUT_{unique.upper()}", f"out.{unique}"
    with private_nats(tmp_path) as server:
        env = {
            "DYN_AUDIT_ENABLED": "1",
            "DYN_AUDIT_SINKS": "nats",
            "DYN_AUDIT_NATS_URL": server.url,
            "DYN_AUDIT_NATS_STREAM": stream,
            "DYN_AUDIT_NATS_SUBJECT": subject,
            "DYN_AUDIT_CAPACITY": "64",
        }
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            statuses = run_with_outage(gateway, server.stop, server.start)
            assert statuses == [200] * N
            written, dropped = accounted(gateway, "nats")
            assert metric(gateway.metrics(), "auditgate_audit_sink_errors_total", sink="nats") >= 1

            async def stored() -> int:
                nc = await nats.connect(server.url)
                try:
                    info = await nc.jetstream().stream_info(stream)
                    return int(info.state.messages)
                finally:
                    await nc.close()

            assert asyncio.run(stored()) == written
            if dropped:
                assert "queue full" in gateway.log()
        finally:
            assert gateway.stop() == 0


def test_postgres_outage_under_load_loses_nothing_silently(tmp_path: Path) -> None:
    """PostgreSQL down for 2 s mid-load: every request is 200 and written + dropped == N."""
    with pg_cluster() as cluster:
        env = {
            "DYN_AUDIT_ENABLED": "1",
            "DYN_AUDIT_SINKS": "postgres",
            "DYN_AUDIT_POSTGRES_URL": cluster.dsn,
            "DYN_AUDIT_CAPACITY": "64",
        }
        gateway = start_gateway(env, log_dir=tmp_path)
        try:
            statuses = run_with_outage(gateway, lambda: cluster.stop("immediate"), cluster.start)
            assert statuses == [200] * N
            written, _ = accounted(gateway, "postgres")
            assert (
                metric(gateway.metrics(), "auditgate_audit_sink_errors_total", sink="postgres") >= 1
            )

            async def stored() -> int:
                conn = await asyncpg.connect(cluster.dsn)
                try:
                    return int(await conn.fetchval("SELECT count(*) FROM completions"))
                finally:
                    await conn.close()

            assert asyncio.run(stored()) == written
        finally:
            assert gateway.stop() == 0
