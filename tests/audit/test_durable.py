"""The durable bus's in-memory tail: what a reader keeps in memory, and when it reads the spool."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from auditgate.audit.bus import Backoff
from auditgate.audit.durable import DurableBus
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import MemorySink
from auditgate.audit.spool import Spool

FAST = Backoff(initial_s=0.01, maximum_s=0.05, factor=2.0)


class Body(dict[str, Any]):
    """A request body a weak reference can follow (a plain dict cannot be referenced weakly)."""


class ForgetfulSink(MemorySink):
    """Stores request ids only, so whatever still holds a written record is the bus."""

    def __init__(self, name: str = "forgetful") -> None:
        super().__init__(name)
        self.ids: list[str] = []

    async def write(self, batch: Sequence[Envelope]) -> None:
        await self.block.wait()
        if self.fail is not None:
            raise self.fail
        self.ids.extend(e.request_id for e in batch)


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

    def __init__(self, directory: Path, *, capacity: int = 64) -> None:
        self.metrics = AuditMetrics()
        self.sink = ForgetfulSink()
        self.bus = DurableBus(
            [self.sink],
            spool=Spool(directory, max_bytes=64 << 20),
            capacity=capacity,
            metrics=self.metrics,
            backoff=FAST,
        )

    async def publish(self, seqs: range, size: int = 100) -> None:
        """Publish one record of about ``size`` bytes per seq and wait until each is durable."""
        commits = [self.bus.publish(envelope(i, body(size))) for i in seqs]
        await asyncio.gather(*[c for c in commits if c is not None])


def body(size: int) -> Body:
    return Body(messages=[{"role": "user", "content": "x" * size}])


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
    await asyncio.sleep(0.01)  # the reader is back waiting for commits
    assert (harness.sink.ids, alive()) == (["req-000000"], None)
