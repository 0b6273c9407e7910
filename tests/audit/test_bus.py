"""The bounded per-sink bus: non-blocking publish, isolation, retries, drain, accounting."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import pytest

from auditgate.audit.bus import AuditBus, Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope
from auditgate.audit.sink import BatchPolicy, MemorySink, Sink
from auditgate.errors import ConfigError

FAST = Backoff(initial_s=0.01, maximum_s=0.05, factor=2.0)


def envelope(seq: int) -> Envelope:
    """A small usage-only record with a unique request id."""
    return Envelope(
        AuditRecord(
            request_id=f"req-{seq:06d}",
            requested_streaming=False,
            mode="usage_only",
            model="mock",
            usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
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


class RecordingSink(MemorySink):
    """A MemorySink that remembers every write attempt: its time and its request ids."""

    def __init__(self, name: str = "memory", batching: BatchPolicy | None = None) -> None:
        super().__init__(name)
        if batching is not None:
            self.batching = batching
        self.attempts: list[tuple[float, list[str]]] = []
        self.stored_batches: list[int] = []
        self.failures_left = 0
        self.delay_s = 0.0

    async def write(self, batch: Sequence[Envelope]) -> None:
        self.attempts.append((time.monotonic(), [e.request_id for e in batch]))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("sink is down")
        await super().write(batch)
        self.stored_batches.append(len(batch))


class Harness:
    """Builds buses on one metrics registry and closes whatever a test left open."""

    def __init__(self) -> None:
        self.metrics = AuditMetrics()
        self.open_buses: list[AuditBus] = []

    async def start(
        self, *sinks: Sink, capacity: int = 64, capacity_bytes: int = 1 << 20
    ) -> AuditBus:
        bus = AuditBus(
            sinks,
            capacity=capacity,
            capacity_bytes=capacity_bytes,
            metrics=self.metrics,
            backoff=FAST,
        )
        await bus.start()
        self.open_buses.append(bus)
        return bus

    async def close(self, bus: AuditBus, timeout: float) -> dict[str, int]:
        self.open_buses.remove(bus)
        return await bus.close(timeout)

    def value(self, metric: str, **labels: str) -> float:
        """A sample of ``auditgate_<metric>``; 0.0 when the labelled child was never created."""
        sample = self.metrics.registry.get_sample_value("auditgate_" + metric, labels)
        return 0.0 if sample is None else sample

    def accounting(self, sink: str) -> dict[str, float]:
        return {
            "written": self.value("audit_written_total", sink=sink),
            "queue_full": self.value("audit_dropped_total", sink=sink, reason="queue_full"),
            "shutdown": self.value("audit_dropped_total", sink=sink, reason="shutdown"),
        }


def counts(*, written: int = 0, queue_full: int = 0, shutdown: int = 0) -> dict[str, float]:
    """The accounting of one sink, as :meth:`Harness.accounting` reports it."""
    return {"written": float(written), "queue_full": float(queue_full), "shutdown": float(shutdown)}


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A harness whose leftover buses are closed at the end of the test."""
    h = Harness()
    yield h
    for bus in list(h.open_buses):
        await h.close(bus, 0.5)


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def lingering(bus: AuditBus) -> bool:
    """The first lane's worker waits for a fuller batch (it raised its wake-up threshold)."""
    return bus._lanes[0].wake_at > 1


async def test_publish_never_blocks_and_counts_queue_full(harness: Harness) -> None:
    """With a blocked sink of capacity N, publishing 10*N returns at once and drops 9*N, counted."""
    capacity = 16
    sink = MemorySink("blocked")
    sink.block.clear()
    bus = await harness.start(sink, capacity=capacity)
    envelopes = [envelope(i) for i in range(10 * capacity)]

    started = time.perf_counter()
    for e in envelopes:
        bus.publish(e)
    elapsed = time.perf_counter() - started

    assert elapsed < 0.5
    assert counts(queue_full=9 * capacity) == harness.accounting("blocked")
    sink.block.set()
    assert await bus.flush(timeout=2.0)
    assert [e.record for e in envelopes[:capacity]] == sink.records
    report = await harness.close(bus, 1.0)
    assert (counts(written=capacity, queue_full=9 * capacity), 0) == (
        harness.accounting("blocked"),
        report["blocked"],
    )


async def test_slow_sink_never_delays_another(harness: Harness) -> None:
    """A sink that never returns does not hold back delivery to a healthy sink."""
    stuck = MemorySink("stuck")
    stuck.block.clear()
    healthy = MemorySink("healthy")
    bus = await harness.start(stuck, healthy)
    envelopes = [envelope(i) for i in range(20)]
    for e in envelopes:
        bus.publish(e)

    assert await wait_until(lambda: len(healthy.records) == 20)
    assert [e.record for e in envelopes] == healthy.records
    assert not stuck.records
    undelivered = {"stuck": 20, "healthy": 0}
    assert undelivered == await harness.close(bus, 0.1)


async def test_failing_sink_retries_with_backoff_then_delivers_everything_once(
    harness: Harness,
) -> None:
    """A sink that fails three times gets the same batch again after growing, capped delays."""
    sink = RecordingSink("flaky")
    sink.failures_left = 3
    bus = await harness.start(sink)
    envelopes = [envelope(i) for i in range(5)]
    for e in envelopes:
        bus.publish(e)

    assert await bus.flush(timeout=5.0)
    ids = [e.request_id for e in envelopes]
    assert [ids, ids, ids, ids] == [attempt for _, attempt in sink.attempts]
    times = [t for t, _ in sink.attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Backoff 0.01 doubling, capped at 0.05: 0.01, 0.02, 0.04 before the 2nd, 3rd, 4th attempt.
    waited_enough = [gap >= 0.9 * want for gap, want in zip(gaps, (0.01, 0.02, 0.04), strict=True)]
    assert all(waited_enough), gaps
    assert [e.record for e in envelopes] == sink.records
    errors = harness.value("audit_sink_errors_total", sink="flaky")
    report = await harness.close(bus, 1.0)
    assert (counts(written=5), 3.0, 0) == (harness.accounting("flaky"), errors, report["flaky"])


async def test_backoff_is_capped(harness: Harness) -> None:
    """Once the delay reaches ``maximum_s`` it stops growing."""
    sink = RecordingSink("down")
    sink.failures_left = 6
    bus = await harness.start(sink)
    bus.publish(envelope(0))

    assert await bus.flush(timeout=5.0)
    times = [t for t, _ in sink.attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.01, 0.02, 0.04, then 0.05 (capped) twice more: the last gaps stay well under 0.08.
    assert all(0.045 <= gap < 0.5 for gap in gaps[-2:]), gaps
    assert len(sink.attempts) == 7
    assert [envelope(0).record] == sink.records


async def test_close_drains_within_deadline(harness: Harness) -> None:
    """close() delivers everything queued when the sink can keep up, then closes the sink."""
    sink = RecordingSink("slow", batching=BatchPolicy(max_records=10))
    sink.delay_s = 0.01
    bus = await harness.start(sink, capacity=100)
    envelopes = [envelope(i) for i in range(50)]
    for e in envelopes:
        bus.publish(e)

    started = time.monotonic()
    report = await harness.close(bus, 5.0)

    assert time.monotonic() - started < 5.0
    assert [e.record for e in envelopes] == sink.records
    assert (counts(written=50), 0, True) == (
        harness.accounting("slow"),
        report["slow"],
        sink.closed,
    )


async def test_close_reports_and_counts_undelivered_as_shutdown(harness: Harness) -> None:
    """close() gives up at the deadline and counts queued plus in-flight records as shutdown."""
    sink = MemorySink("stuck")
    sink.block.clear()
    bus = await harness.start(sink, capacity=100)
    for i in range(10):
        bus.publish(envelope(i))
    assert await wait_until(lambda: bool(bus._lanes[0].inflight))  # a batch in flight

    started = time.monotonic()
    report = await harness.close(bus, 0.2)
    elapsed = time.monotonic() - started

    assert 0.15 < elapsed < 2.0
    assert (counts(shutdown=10), 10, True, 0) == (
        harness.accounting("stuck"),
        report["stuck"],
        sink.closed,
        bus.pending(),
    )


async def test_written_plus_dropped_equals_published_per_sink(harness: Harness) -> None:
    """For every sink, written + queue_full + shutdown is exactly what was published."""
    flaky = RecordingSink("flaky")
    flaky.failures_left = 2
    stuck = MemorySink("stuck")
    stuck.block.clear()
    healthy = MemorySink("healthy")
    bus = await harness.start(flaky, stuck, healthy, capacity=8)
    published = 0
    for burst in range(6):
        for i in range(7):
            bus.publish(envelope(burst * 100 + i))
            published += 1
        await asyncio.sleep(0.02)
    await harness.close(bus, 0.3)

    totals = {
        name: sum(harness.accounting(name).values()) for name in ("flaky", "stuck", "healthy")
    }
    assert dict.fromkeys(("flaky", "stuck", "healthy"), float(published)) == totals
    assert float(len(healthy.records)) == harness.value("audit_written_total", sink="healthy")
    assert float(len(flaky.records)) == harness.value("audit_written_total", sink="flaky")


async def test_publish_after_close_is_counted_not_raised(harness: Harness) -> None:
    """A record published after close() is dropped and counted, and publish() does not raise."""
    sink = MemorySink("late")
    bus = await harness.start(sink)
    await harness.close(bus, 1.0)

    bus.publish(envelope(1))

    assert not sink.records
    assert sum(harness.accounting("late").values()) == 1.0


async def test_publish_after_close_counts_reason_shutdown(harness: Harness) -> None:
    """A record refused because the bus is closing is a shutdown drop, not a full queue."""
    sink = MemorySink("late")
    bus = await harness.start(sink, capacity=8)
    await harness.close(bus, 1.0)

    bus.publish(envelope(1))

    assert counts(shutdown=1) == harness.accounting("late")


async def test_linger_groups_records_into_one_batch(harness: Harness) -> None:
    """Records published during the linger window are written as one batch."""
    sink = RecordingSink("files", batching=BatchPolicy(max_records=100, linger_s=0.1))
    bus = await harness.start(sink)
    bus.publish(envelope(0))
    assert await wait_until(lambda: lingering(bus))
    for i in range(1, 10):
        bus.publish(envelope(i))

    assert await bus.flush(timeout=2.0)
    expected = [10]
    assert expected == sink.stored_batches
    assert [envelope(i).record for i in range(10)] == sink.records


async def test_batches_never_exceed_max_records(harness: Harness) -> None:
    """A long queue is written in batches of at most ``max_records``."""
    sink = RecordingSink("files", batching=BatchPolicy(max_records=4, linger_s=0.01))
    sink.block.clear()
    bus = await harness.start(sink)
    for i in range(10):
        bus.publish(envelope(i))
    sink.block.set()

    assert await bus.flush(timeout=2.0)
    expected = [4, 4, 2]
    assert expected == sink.stored_batches


async def test_linger_ends_once_a_full_batch_is_queued(harness: Harness) -> None:
    """When ``max_records`` records are queued during the linger, the batch is written at once."""
    sink = RecordingSink("files", batching=BatchPolicy(max_records=4, linger_s=3.0))
    bus = await harness.start(sink, capacity=8)
    bus.publish(envelope(0))
    assert await wait_until(lambda: lingering(bus))
    for i in range(1, 4):
        bus.publish(envelope(i))

    assert await wait_until(lambda: len(sink.records) == 4, timeout=1.0)
    expected = [4]
    assert expected == sink.stored_batches


async def test_linger_ends_when_the_queue_is_full(harness: Harness) -> None:
    """A lane whose queue reaches capacity during the linger writes instead of dropping."""
    sink = RecordingSink("files", batching=BatchPolicy(max_records=100, linger_s=3.0))
    bus = await harness.start(sink, capacity=4)
    bus.publish(envelope(0))
    # A quarter of the capacity is one record: the worker writes it without lingering.
    assert await wait_until(lambda: len(sink.records) == 1, timeout=1.0)
    for i in range(1, 4):
        bus.publish(envelope(i))  # the queue is at capacity
    assert await wait_until(lambda: len(sink.records) == 4, timeout=1.0)
    for i in range(4, 8):
        bus.publish(envelope(i))

    assert await wait_until(lambda: len(sink.records) == 8, timeout=1.0)
    assert counts(written=8) == harness.accounting("files")


async def test_failed_start_closes_the_sinks_already_opened() -> None:
    """When one sink cannot open, those opened before it are closed and the error surfaces."""

    class Unopenable(MemorySink):
        async def open(self) -> None:
            raise ConfigError("no such place")

    first, broken = MemorySink("first"), Unopenable("broken")
    bus = AuditBus([first, broken], capacity=4, metrics=AuditMetrics())
    with pytest.raises(ConfigError, match="no such place"):
        await bus.start()
    assert (first.closed, broken.closed) == (True, False)


class Body(dict[str, Any]):
    """A request body a weak reference can follow (a plain dict cannot be referenced weakly)."""


class ForgetfulSink(MemorySink):
    """Stores request ids only, so whatever still holds a written record is the bus."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ids: list[str] = []

    async def write(self, batch: Sequence[Envelope]) -> None:
        await self.block.wait()
        self.ids.extend(e.request_id for e in batch)


def full_envelope(seq: int, body: dict[str, Any]) -> Envelope:
    """A ``full`` record whose request body is ``body``."""
    record = envelope(seq).record
    record.mode = "full"
    record.request = body
    return Envelope(record)


async def test_a_written_batch_is_not_kept_by_an_idle_worker(harness: Harness) -> None:
    """Once its batch is written, a worker waiting for more holds none of its records."""
    sink = ForgetfulSink("forgetful")
    bus = await harness.start(sink)
    body = Body(messages=[{"role": "user", "content": "x" * 1000}])
    alive = weakref.ref(body)
    bus.publish(full_envelope(0, body))
    del body

    assert await bus.flush(timeout=2.0)
    assert (sink.ids, alive()) == (["req-000000"], None)


def sized(seqs: range, content: int) -> list[Envelope]:
    """``full`` records whose JSON is of one length (``seqs`` of one digit count)."""
    return [
        full_envelope(i, {"messages": [{"role": "user", "content": "x" * content}]}) for i in seqs
    ]


async def test_a_lane_full_in_bytes_drops_and_counts_queue_full_bytes(harness: Harness) -> None:
    """With a blocked sink, records past the byte bound are dropped as ``queue_full_bytes``,
    the queue's bytes are reported, and written + dropped == published once it is unblocked."""
    sink = MemorySink("blocked")
    sink.block.clear()
    envelopes = sized(range(10, 40), 1000)
    size = len(envelopes[0].json)
    assert {size} == {len(e.json) for e in envelopes}
    bus = await harness.start(sink, capacity=1000, capacity_bytes=10 * size)
    for e in envelopes:
        bus.publish(e)

    held = harness.value("audit_queue_bytes", sink="blocked")
    dropped = harness.value("audit_dropped_total", sink="blocked", reason="queue_full_bytes")
    assert (10.0 * size, 20.0) == (held, dropped)
    sink.block.set()
    assert await bus.flush(timeout=2.0)
    assert [e.record for e in envelopes[:10]] == sink.records
    assert (counts(written=10), 0.0) == (
        harness.accounting("blocked"),
        harness.value("audit_queue_bytes", sink="blocked"),
    )


async def test_a_record_larger_than_the_byte_bound_goes_through_alone(harness: Harness) -> None:
    """An empty lane takes a record larger than the byte bound (it is never refused outright);
    the next one, published while it is held, is dropped."""
    sink = MemorySink("blocked")
    sink.block.clear()
    large, small = sized(range(10, 12), 5000)
    bus = await harness.start(sink, capacity=1000, capacity_bytes=1000)
    bus.publish(large)
    bus.publish(small)

    sink.block.set()
    assert await bus.flush(timeout=2.0)
    dropped = harness.value("audit_dropped_total", sink="blocked", reason="queue_full_bytes")
    assert ([large.record], 1.0) == (sink.records, dropped)


async def test_linger_ends_once_a_quarter_of_the_byte_bound_is_queued(harness: Harness) -> None:
    """A lingering worker writes as soon as a quarter of the byte bound is queued, rather than
    let large records fill the lane and drop while the sink is healthy."""
    sink = RecordingSink("files", batching=BatchPolicy(max_records=100, linger_s=3.0))
    first, second = sized(range(10, 12), 1000)
    bus = await harness.start(sink, capacity=1000, capacity_bytes=8 * len(first.json))
    bus.publish(first)
    assert await wait_until(lambda: lingering(bus))
    bus.publish(second)

    assert await wait_until(lambda: len(sink.records) == 2, timeout=1.0)
    assert sink.stored_batches == [2]


async def test_a_record_that_cannot_be_encoded_is_dropped_and_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A record with a value JSON cannot hold is dropped for every sink, counted and logged at
    publish, and the records after it are delivered (a sink used to retry it for ever)."""
    first, second = MemorySink("first"), MemorySink("second")
    bus = await harness.start(first, second)
    bad = full_envelope(10, {"messages": [{"role": "user", "content": object()}]})
    good = envelope(11)
    bus.publish(bad)
    bus.publish(good)

    assert await bus.flush(timeout=2.0)
    dropped = [
        harness.value("audit_dropped_total", sink=name, reason="unencodable")
        for name in ("first", "second")
    ]
    assert ([good.record], [good.record], [1.0, 1.0]) == (first.records, second.records, dropped)
    assert "record req-000010 cannot be encoded" in caplog.text


async def test_a_record_with_a_lone_surrogate_is_sized_and_delivered(harness: Harness) -> None:
    """A lone surrogate (legal in a client's JSON; the database sinks store it) has no UTF-8
    encoding: the record is sized by its escaped JSON and delivered, not dropped."""
    sink = ForgetfulSink("forgetful")
    bus = await harness.start(sink)
    content = "\ud800 " + "x" * 100
    record = full_envelope(10, {"messages": [{"role": "user", "content": content}]})
    sink.block.clear()
    bus.publish(record)

    held = harness.value("audit_queue_bytes", sink="forgetful")
    sink.block.set()
    assert await bus.flush(timeout=2.0)
    escaped = json.dumps(msgspec.to_builtins(record.record), ensure_ascii=True)
    assert (["req-000010"], float(len(escaped)), 0.0) == (
        sink.ids,
        held,
        harness.value("audit_dropped_total", sink="forgetful", reason="unencodable"),
    )


async def test_batches_never_exceed_max_bytes(harness: Harness) -> None:
    """A queue of large records is written in batches of at most ``max_bytes`` of JSON; a record
    larger than that is a batch by itself."""
    envelopes = sized(range(10, 17), 1000)
    size = len(envelopes[0].json)
    [large] = sized(range(17, 18), 10 * size)
    sink = RecordingSink("db", batching=BatchPolicy(max_records=100, max_bytes=3 * size))
    sink.block.clear()
    bus = await harness.start(sink, capacity=100, capacity_bytes=100 * size)
    for e in [*envelopes, large]:
        bus.publish(e)
    sink.block.set()

    assert await bus.flush(timeout=2.0)
    assert sink.stored_batches == [3, 3, 1, 1]
