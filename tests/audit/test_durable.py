"""The durable bus's in-memory tail: what a reader keeps in memory, and when it reads the spool."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from auditgate.audit.bus import Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import BatchPolicy, MemorySink
from auditgate.audit.spool.durable import DurableBus
from auditgate.audit.spool.spool import Spool

FAST = Backoff(initial_s=0.01, maximum_s=0.05, factor=2.0)


class Body(dict[str, Any]):
    """A request body a weak reference can follow (a plain dict cannot be referenced weakly)."""


class ForgetfulSink(MemorySink):
    """Stores request ids only, so whatever still holds a written record is the bus."""

    def __init__(self, name: str = "forgetful", batching: BatchPolicy | None = None) -> None:
        super().__init__(name)
        if batching is not None:
            self.batching = batching
        self.ids: list[str] = []
        self.batches: list[int] = []

    async def write(self, batch: Sequence[Envelope]) -> None:
        await self.block.wait()
        if self.fail is not None:
            raise self.fail
        self.ids.extend(e.request_id for e in batch)
        self.batches.append(len(batch))


def envelope(seq: int, body: dict[str, Any]) -> Envelope:
    """A ``full`` record with a unique request id whose request body is ``body``."""
    return Envelope(
        AuditRecord(
            request_id=f"req-{seq:06d}",
            requested_streaming=False,
            mode="full",
            model="mock",
            usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            request=body,
            engine="mock",
            status="completed",
            complete=True,
            created_at=1_700_000_000_000 + seq,
            completed_at=1_700_000_000_010 + seq,
            ttft_ms=1.5,
            duration_ms=10.0,
            writer="test:1:abc",
            seq=seq,
        )
    )


class Harness:
    """A durable bus with one forgetful sink over a spool directory."""

    def __init__(
        self,
        directory: Path,
        *,
        capacity: int = 64,
        capacity_bytes: int = 1 << 20,
        batching: BatchPolicy | None = None,
    ) -> None:
        self.metrics = AuditMetrics()
        self.sink = ForgetfulSink(batching=batching)
        self.bus = DurableBus(
            [self.sink],
            spool=Spool(directory, max_bytes=64 << 20),
            capacity=capacity,
            capacity_bytes=capacity_bytes,
            metrics=self.metrics,
            backoff=FAST,
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value("auditgate_" + name, labels)

    async def publish(self, seqs: range, size: int = 100) -> None:
        """Publish one record of about ``size`` bytes per seq and wait until each is durable."""
        commits = [self.bus.publish(envelope(i, body(size))) for i in seqs]
        await asyncio.gather(*[c for c in commits if c is not None])


def body(size: int) -> Body:
    return Body(messages=[{"role": "user", "content": "x" * size}])


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.002)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "spool")
    await h.bus.start()
    yield h
    await h.bus.close(2.0)


async def test_a_written_batch_is_not_kept_by_an_idle_reader(harness: Harness) -> None:
    """Once its batch is stored, a reader waiting for more commits holds none of its records."""
    request = body(1000)
    alive = weakref.ref(request)
    commit = harness.bus.publish(envelope(0, request))
    del request
    assert commit is not None
    await commit

    assert await harness.bus.flush(2.0)
    assert (harness.sink.ids, alive()) == (["req-000000"], None)


async def test_a_reader_behind_a_blocked_sink_holds_at_most_the_byte_bound(tmp_path: Path) -> None:
    """Behind a sink that does not return, the records in memory stay within the byte bound (the
    rest are read back from the spool), and once it returns every record arrives, in order."""
    size = len(envelope(10, body(2000)).json)
    h = Harness(tmp_path / "spool", capacity=1000, capacity_bytes=10 * size)
    h.sink.block.clear()
    await h.bus.start()
    bodies = [body(2000) for _ in range(100)]
    alive = [weakref.ref(b) for b in bodies]
    for i, request in enumerate(bodies, start=10):
        commit = h.bus.publish(envelope(i, request))
        assert commit is not None
        await commit
        held = h.value("audit_queue_bytes", sink="forgetful")
        assert held is not None and held <= 10 * size, (i, held)
    del bodies, request
    in_memory = sum(1 for ref in alive if ref() is not None)

    h.sink.block.set()
    assert await h.bus.flush(5.0)
    await h.bus.close(2.0)
    assert in_memory <= 10, in_memory
    expected = ([f"req-{i:06d}" for i in range(10, 110)], 0.0)
    assert expected == (h.sink.ids, h.value("audit_queue_bytes", sink="forgetful"))


async def test_a_lingering_reader_writes_once_half_the_byte_bound_is_in_memory(
    tmp_path: Path,
) -> None:
    """A reader lingering for a fuller batch writes as soon as half the byte bound is in
    memory, rather than let large records push it back to reading the spool."""
    size = len(envelope(10, body(2000)).json)
    policy = BatchPolicy(max_records=100, linger_s=3.0)
    h = Harness(tmp_path / "spool", capacity=1000, capacity_bytes=4 * size, batching=policy)
    await h.bus.start()
    await h.publish(range(10, 11), 2000)
    await until(lambda: h.bus._readers[0].wake_at > 1)  # the reader took it and lingers
    await h.publish(range(11, 12), 2000)

    deadline = asyncio.get_running_loop().time() + 1.0
    while len(h.sink.ids) < 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)
    written = (list(h.sink.ids), list(h.sink.batches))  # before close() writes what is left
    await h.bus.close(2.0)
    assert written == (["req-000010", "req-000011"], [2])


async def test_batches_taken_from_memory_never_exceed_max_bytes(tmp_path: Path) -> None:
    """Records that waited in memory behind a slow write go out in batches of at most the sink's
    ``max_bytes`` of JSON."""
    size = len(envelope(10, body(2000)).json)
    policy = BatchPolicy(max_records=100, max_bytes=3 * size)
    h = Harness(tmp_path / "spool", capacity=1000, capacity_bytes=100 * size, batching=policy)
    h.sink.block.clear()
    await h.bus.start()
    await h.publish(range(10, 11), 2000)
    await until(lambda: h.bus._readers[0].taken_bytes > 0)  # the reader waits in write()
    await h.publish(range(11, 17), 2000)
    h.sink.block.set()

    assert await h.bus.flush(5.0)
    await h.bus.close(2.0)
    assert ([f"req-{i:06d}" for i in range(10, 17)], [1, 3, 3]) == (h.sink.ids, h.sink.batches)
