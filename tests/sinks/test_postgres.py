"""The ``postgres`` sink through the real bus, on the shared server and on a private cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest

from auditgate.audit.bus import AuditBus, Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.config import Secret
from auditgate.errors import ConfigError
from auditgate.sinks.postgres import PostgresSink
from tests.store.records import (
    make_record,
    minimal_record,
    nul_record,
    read_postgres,
    surrogate_record,
)
from tests.support.gateway import free_port
from tests.support.postgres import PgCluster, pg_cluster

FAST = Backoff(initial_s=0.02, maximum_s=0.2)


def counters(metrics: AuditMetrics) -> tuple[float | None, float | None]:
    """(written, sink_errors) of the postgres sink."""
    registry = metrics.registry
    return (
        registry.get_sample_value("auditgate_audit_written_total", {"sink": "postgres"}),
        registry.get_sample_value("auditgate_audit_sink_errors_total", {"sink": "postgres"}),
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server this test may stop and start."""
    with pg_cluster() as running:
        yield running


async def test_bus_round_trips_every_record(pg_dsn: str) -> None:
    """Records published through the bus are stored whole, NUL and surrogate ones included."""
    metrics = AuditMetrics()
    bus = AuditBus([PostgresSink(pg_dsn)], capacity=2000, metrics=metrics)
    await bus.start()
    published: list[AuditRecord] = [make_record(i) for i in range(1000)]
    published += [minimal_record(1000), nul_record(1001), surrogate_record(1002)]
    for record in published:
        bus.publish(Envelope(record))
    assert await bus.flush(timeout=30)
    assert await bus.close(timeout=5) == {"postgres": 0}
    assert (published, (1003.0, 0.0)) == (await read_postgres(pg_dsn), counters(metrics))


async def test_replayed_batch_is_stored_once(pg_dsn: str) -> None:
    """Writing the same batch twice (a retry) leaves one row per record."""
    sink = PostgresSink(pg_dsn, schema="audit")
    await sink.open()
    batch = [Envelope(make_record(i)) for i in range(10)]
    await sink.write(batch)
    await sink.write(batch[5:] + batch)
    await sink.close()
    assert [e.record for e in batch] == await read_postgres(pg_dsn, "audit")


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mysql://u:hunter2@127.0.0.1/db", "scheme must be postgresql:// or postgres://"),
        ("postgresql://u:hunter2@127.0.0.1:notaport/db", "is not a valid URL"),
        ("postgresql://u:hunter2@127.0.0.1/db?sslmode=bogus", "sslmode"),
    ],
)
async def test_bad_url_is_a_config_error(dsn: str, message: str) -> None:
    """A malformed URL fails ``open`` clearly, and the message never shows the password."""
    sink = PostgresSink(dsn)
    with pytest.raises(ConfigError) as caught:
        await sink.open()
    text = str(caught.value)
    assert (message in text, "hunter2" in text) == (True, False)


async def test_missing_database_is_a_config_error(pg_dsn: str) -> None:
    """A server that answers but has no such database fails ``open`` with a ConfigError."""
    sink = PostgresSink(pg_dsn + "_missing")
    with pytest.raises(ConfigError) as caught:
        await sink.open()
    assert "InvalidCatalogNameError" in str(caught.value)


def test_repr_hides_the_password() -> None:
    """Neither the repr nor the URL property shows the password, given as str or Secret."""
    plain = PostgresSink("postgresql://u:hunter2@127.0.0.1:5432/db")
    secret = PostgresSink(Secret("postgresql://u:hunter2@127.0.0.1:5432/db?password=hunter2"))
    assert (repr(plain), secret.url) == (
        "PostgresSink(dsn='postgresql://u:***@127.0.0.1:5432/db', schema=None)",
        "postgresql://u:***@127.0.0.1:5432/db?password=***",
    )


async def test_down_server_does_not_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    """With nothing listening, ``open`` logs a warning and returns; ``write`` raises."""
    port = free_port()
    sink = PostgresSink(f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres")
    with caplog.at_level(logging.WARNING, "auditgate.sinks"):
        await sink.open()
    with pytest.raises(OSError):
        await sink.write([Envelope(make_record(1))])
    await sink.close()
    assert (
        sum("unreachable" in r.getMessage() for r in caplog.records),
        any("hunter2" in r.getMessage() for r in caplog.records),
    ) == (1, False)


async def test_outage_under_the_bus_loses_nothing(cluster: PgCluster) -> None:
    """Server stopped mid-stream: writes fail and count, then every record lands exactly once."""
    metrics = AuditMetrics()
    bus = AuditBus([PostgresSink(cluster.dsn)], capacity=1000, metrics=metrics, backoff=FAST)
    await bus.start()
    before = [make_record(i) for i in range(100)]
    for record in before:
        bus.publish(Envelope(record))
    assert await bus.flush(timeout=20)
    cluster.stop()
    during = [make_record(i) for i in range(100, 300)]
    for record in during:
        bus.publish(Envelope(record))
    assert await wait_for(lambda: (counters(metrics)[1] or 0) >= 3)
    stored_while_down = counters(metrics)[0]
    cluster.start()
    assert await bus.flush(timeout=30)
    assert await bus.close(timeout=5) == {"postgres": 0}
    assert (100.0, 300.0, before + during) == (
        stored_while_down,
        counters(metrics)[0],
        await read_postgres(cluster.dsn),
    )


async def test_server_down_at_start_then_up(cluster: PgCluster) -> None:
    """A sink opened while the server is down migrates and writes once it comes up."""
    cluster.stop()
    metrics = AuditMetrics()
    bus = AuditBus([PostgresSink(cluster.dsn)], capacity=1000, metrics=metrics, backoff=FAST)
    await bus.start()
    records = [make_record(i) for i in range(50)]
    for record in records:
        bus.publish(Envelope(record))
    assert await wait_for(lambda: (counters(metrics)[1] or 0) >= 2)
    cluster.start()
    assert await bus.flush(timeout=30)
    await bus.close(timeout=5)
    assert (50.0, records) == (counters(metrics)[0], await read_postgres(cluster.dsn))
