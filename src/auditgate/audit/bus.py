"""The bounded per-sink bus: ``publish()`` never blocks, a slow sink never delays another.

Modelled on OpenTelemetry's ``BatchProcessor``: each sink has its own lane — a bounded queue and
one worker task that writes batches.  Contracts:

- :meth:`AuditBus.publish` is synchronous and O(number of sinks); it never awaits and never
  raises.  A full lane drops the record *for that sink only*, counts it in
  ``audit_dropped_total{reason="queue_full"}`` and logs (rate-limited).
- A lane is full at ``capacity`` records, or when the record would take the JSON bytes it
  holds (queued and in flight) over ``capacity_bytes``: then the drop's reason is
  ``queue_full_bytes``.  A lane that holds nothing takes any record, so one record larger than
  the bound still goes through, alone.  The JSON is encoded at publish (once, shared by every
  sink, which would encode it anyway); its length is the record's size.
- A failed write is retried with capped exponential backoff; the batch is kept while new
  records queue behind it (and drop, counted, once the lane is full).
- :meth:`AuditBus.close` drains every lane within a deadline, then counts and reports what it
  could not deliver (``reason="shutdown"``) and closes the sinks.

For every record and sink, exactly one of ``audit_written_total`` and ``audit_dropped_total``
is incremented once the bus is closed, so ``written + dropped == published`` per sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope, Mode
from auditgate.audit.sink import BatchPolicy, Sink
from auditgate.config import DEFAULT_CAPACITY_BYTES
from auditgate.logs import RateLimitedLog

log = logging.getLogger("auditgate.audit")


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff between retries of a failed write."""

    initial_s: float = 0.05
    maximum_s: float = 5.0
    factor: float = 2.0


class RecordBus(Protocol):
    """What the :class:`~auditgate.audit.capture.Auditor` hands records to.

    ``publish`` never blocks and never raises.  It returns ``None`` when there is nothing to
    wait for, or a commit (:mod:`auditgate.audit.commit`): an awaitable that completes once the
    record is durable and raises :class:`~auditgate.audit.commit.CommitError` if it could not
    be made durable.  ``durable`` declares which: a durable bus returns a commit for every
    record it accepts, and a transport releases the end of a response only once it completed.
    """

    durable: bool
    """``publish`` returns a commit for every record it accepts (the spooled bus)."""

    @property
    def sink_names(self) -> tuple[str, ...]: ...

    @property
    def last_recovered(self) -> AuditRecord | None:
        """The newest record a previous process left in this bus's storage, found at
        :meth:`start` (None: none, or nothing is kept across processes)."""
        ...

    async def start(self) -> None: ...

    def admit(self, mode: Mode) -> bool:
        """Whether a request whose record has ``mode`` may start now; a refusal is counted
        (the spool is full and the record could not be kept)."""
        ...

    def publish(self, envelope: Envelope) -> Awaitable[None] | None: ...

    def pending(self) -> int:
        """Records accepted and not yet stored by every sink."""
        ...

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`pending` is 0; True if that happened before ``timeout``."""
        ...

    async def close(self, timeout: float) -> dict[str, int]: ...


class _Lane:
    """One sink's queue and worker state."""

    def __init__(self, sink: Sink, capacity: int, capacity_bytes: int, policy: BatchPolicy) -> None:
        self.sink = sink
        self.name = sink.name
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.policy = policy
        self.queue: deque[Envelope] = deque()
        self.sizes: deque[int] = deque()
        """JSON bytes of each record in ``queue``, in the same order."""
        self.bytes = 0
        """JSON bytes of the records queued and in flight."""
        self.wake_bytes = max(1, min(capacity_bytes // 4, policy.max_bytes))
        """``bytes`` at which ``publish`` wakes a lingering worker (as ``wake_at`` in records):
        a full batch, or a quarter of the bound."""
        self.wakeup = asyncio.Event()
        self.inflight: Sequence[Envelope] = ()
        self.task: asyncio.Task[None] | None = None
        self.wake_at = 1
        """Queue length at which ``publish`` wakes the worker (1, or a batch while lingering)."""

    def held_bytes(self) -> float:
        """``bytes``, for the ``audit_queue_bytes`` gauge."""
        return float(self.bytes)


class AuditBus:
    """Fans published records out to sinks through bounded lanes (best effort)."""

    durable = False
    """Nothing to wait for: a full lane drops (counted), it never holds a response."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        capacity: int,
        metrics: AuditMetrics,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        backoff: Backoff = Backoff(),
    ) -> None:
        if capacity <= 0 or capacity_bytes <= 0:
            raise ValueError("capacity and capacity_bytes must be > 0")
        self.metrics = metrics
        self.backoff = backoff
        self._lanes = [_Lane(s, capacity, capacity_bytes, policy_of(s)) for s in sinks]
        self._closing = asyncio.Event()
        self._drop_log = RateLimitedLog()
        self._started = False
        self._flushing = 0
        """Callers in :meth:`flush`: workers do not linger meanwhile."""
        # Label children resolved once: publish() must not pay for label lookups.
        self._queue_full = {
            lane.name: metrics.dropped.labels(lane.name, "queue_full") for lane in self._lanes
        }
        self._queue_full_bytes = {
            lane.name: metrics.dropped.labels(lane.name, "queue_full_bytes") for lane in self._lanes
        }
        for lane in self._lanes:
            metrics.watch(metrics.queue_depth.labels(lane.name), lane.queue.__len__)
            metrics.watch(metrics.queue_bytes.labels(lane.name), lane.held_bytes)
            metrics.written.labels(lane.name)
            metrics.sink_errors.labels(lane.name)

    @property
    def sink_names(self) -> tuple[str, ...]:
        return tuple(lane.name for lane in self._lanes)

    @property
    def last_recovered(self) -> AuditRecord | None:
        """Nothing survives a process: always None."""
        return None

    def admit(self, mode: Mode) -> bool:
        """Every request: a full lane drops the record (counted), it never refuses one."""
        return True

    async def start(self) -> None:
        """Open every sink and start its worker.  A sink whose ``open`` fails aborts startup;
        the sinks opened before it are closed again."""
        opened: list[Sink] = []
        try:
            for lane in self._lanes:
                await lane.sink.open()
                opened.append(lane.sink)
        except BaseException:
            for sink in reversed(opened):
                try:
                    await sink.close()
                except Exception:
                    log.exception("audit sink %s: close after a failed start failed", sink.name)
            raise
        for lane in self._lanes:
            lane.task = asyncio.get_running_loop().create_task(
                self._run(lane), name=f"audit-sink-{lane.name}"
            )
        self.metrics.start_refresh()
        self._started = True

    def publish(self, envelope: Envelope) -> None:
        """Queue one record for every sink; never blocks, never raises."""
        try:
            size = len(envelope.json)  # encoded once here, for every sink
        except Exception:  # noqa: BLE001 - publish never raises; see _escaped_size
            escaped = self._escaped_size(envelope)
            if escaped is None:
                return
            size = escaped
        for lane in self._lanes:
            if self._closing.is_set():
                self.metrics.dropped.labels(lane.name, "shutdown").inc()
                log.error(
                    "audit sink %s: record %s published after shutdown began",
                    lane.name,
                    envelope.request_id,
                )
                continue
            if len(lane.queue) >= lane.capacity:
                self._queue_full[lane.name].inc()
                self._drop_log.warning(
                    lane.name,
                    "audit sink %s: queue full (capacity %d), record %s dropped",
                    lane.name,
                    lane.capacity,
                    envelope.request_id,
                )
                continue
            if lane.bytes + size > lane.capacity_bytes and lane.bytes:
                self._drop_bytes(lane, envelope, size)
                continue
            lane.queue.append(envelope)
            lane.sizes.append(size)
            lane.bytes += size
            if (
                len(lane.queue) >= lane.wake_at or lane.bytes >= lane.wake_bytes
            ) and not lane.wakeup.is_set():
                lane.wakeup.set()

    def _escaped_size(self, envelope: Envelope) -> int | None:
        """The size of a record UTF-8 cannot encode: its JSON with ``\\uXXXX`` escapes.  A lone
        surrogate is legal in a Python string and in a client's JSON, and the database sinks
        store it losslessly.  None when the record is not JSON at all: then it is dropped for
        every sink (a sink would fail on it for ever), counted and logged."""
        try:
            return len(json.dumps(msgspec.to_builtins(envelope.record), ensure_ascii=True))
        except Exception as exc:  # noqa: BLE001 - publish never raises; counted and logged
            for lane in self._lanes:
                self.metrics.dropped.labels(lane.name, "unencodable").inc()
            log.error("audit: record %s cannot be encoded, dropped: %s", envelope.request_id, exc)
            return None

    def _drop_bytes(self, lane: _Lane, envelope: Envelope, size: int) -> None:
        self._queue_full_bytes[lane.name].inc()
        self._drop_log.warning(
            lane.name + ":bytes",
            "audit sink %s: queue full (%d of %d bytes), record %s of %d bytes dropped",
            lane.name,
            lane.bytes,
            lane.capacity_bytes,
            envelope.request_id,
            size,
        )

    def pending(self) -> int:
        """Records queued or being written, over all sinks."""
        return sum(len(lane.queue) + len(lane.inflight) for lane in self._lanes)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record published so far is written (or dropped, counted); True if
        that happened before ``timeout``.  Lingering workers write at once while it waits."""
        self._flushing += 1
        try:
            for lane in self._lanes:
                lane.wakeup.set()
            return await drained(self.pending, timeout)
        finally:
            self._flushing -= 1

    async def close(self, timeout: float) -> dict[str, int]:
        """Drain within ``timeout`` seconds, then stop; returns undelivered counts per sink."""
        self._closing.set()
        for lane in self._lanes:
            lane.wake_at = 1
            lane.wakeup.set()
        await finish_tasks([lane.task for lane in self._lanes if lane.task is not None], timeout)
        report: dict[str, int] = {}
        for lane in self._lanes:
            lost = len(lane.queue) + len(lane.inflight)
            lane.queue.clear()
            lane.sizes.clear()
            lane.inflight = ()
            lane.bytes = 0
            if lost:
                self.metrics.dropped.labels(lane.name, "shutdown").inc(lost)
                log.error(
                    "audit sink %s: %d record(s) not delivered before the %.1fs shutdown deadline",
                    lane.name,
                    lost,
                    timeout,
                )
            report[lane.name] = lost
            try:
                await lane.sink.close()
            except Exception:
                log.exception("audit sink %s: close failed", lane.name)
        await self.metrics.stop_refresh()
        return report

    async def _linger(self, lane: _Lane) -> None:
        """Wait up to ``linger_s`` for a full batch; a full batch, a quarter-full queue or
        shutdown ends the wait early.  ``publish`` wakes the worker only at that threshold, so
        lingering costs one wake-up per batch, not one per record."""
        # A quarter of the capacity, not all of it: records keep arriving while the batch is
        # written, and a thread-offloaded write may wait milliseconds for the GIL under load.
        target = min(lane.policy.max_records, max(1, lane.capacity // 4))
        if (
            len(lane.queue) >= target
            or lane.bytes >= lane.wake_bytes
            or self._closing.is_set()
            or self._flushing
        ):
            return
        await wait_for_batch(lane, target, lane.policy.linger_s)

    async def _run(self, lane: _Lane) -> None:
        policy = lane.policy
        while True:
            if not lane.queue:
                if self._closing.is_set():
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            if policy.linger_s:
                await self._linger(lane)
            count, size = batch_of(lane.sizes, policy)
            # No local name for the batch: this frame waits for the next records, and a name
            # would keep the last batch (up to max_records bodies of up to 8 MiB) alive.
            lane.inflight = [lane.queue.popleft() for _ in range(count)]
            for _ in range(count):
                lane.sizes.popleft()
            await write_until_stored(
                lane.sink, lane.inflight, self.backoff, self.metrics, self._drop_log
            )
            lane.bytes -= size
            lane.inflight = ()


def batch_of(sizes: Iterable[int], policy: BatchPolicy) -> tuple[int, int]:
    """How many of the records whose JSON sizes are ``sizes`` (in queue order) make the next
    batch — at most ``policy.max_records`` and ``policy.max_bytes``, at least one — and their
    bytes."""
    count = total = 0
    for size in sizes:
        if count == policy.max_records or (count and total + size > policy.max_bytes):
            break
        count += 1
        total += size
    return count, total


def policy_of(sink: Sink) -> BatchPolicy:
    """The sink's ``batching`` policy, or the default one."""
    policy = getattr(sink, "batching", None)
    return policy if isinstance(policy, BatchPolicy) else BatchPolicy()


class Worker(Protocol):
    """A sink's worker as :func:`wait_for_batch` sees it (a lane, a spool reader)."""

    wakeup: asyncio.Event
    wake_at: int
    """Records queued at which the producer sets ``wakeup`` (1 unless lingering)."""


async def wait_for_batch(worker: Worker, target: int, linger_s: float) -> None:
    """Linger: sleep until the producer wakes ``worker`` at ``target`` queued records (or for
    another reason) or ``linger_s`` passes, so lingering costs one wake-up per batch."""
    worker.wake_at = target
    worker.wakeup.clear()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wakeup.wait(), linger_s)
    finally:
        worker.wake_at = 1


async def write_until_stored(
    sink: Sink,
    batch: Sequence[Envelope],
    backoff: Backoff,
    metrics: AuditMetrics,
    log: RateLimitedLog,
) -> None:
    """Write ``batch`` to ``sink`` until it is stored.  Each failure is counted
    (``audit_sink_errors_total``), logged (rate-limited) and retried with capped exponential
    backoff; success is timed (``audit_sink_write_seconds``) and counted
    (``audit_written_total``).  Only cancellation ends it early."""
    name = sink.name
    delay = backoff.initial_s
    while True:
        started = time.perf_counter()
        try:
            await sink.write(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any sink failure is counted and retried
            metrics.sink_errors.labels(name).inc()
            log.warning(
                name + ":error",
                "audit sink %s: write of %d record(s) failed, retrying in %.2fs: %s",
                name,
                len(batch),
                delay,
                describe_error(exc),
            )
            await asyncio.sleep(delay)
            delay = min(delay * backoff.factor, backoff.maximum_s)
            continue
        metrics.write_seconds.labels(name).observe(time.perf_counter() - started)
        metrics.written.labels(name).inc(len(batch))
        return


def describe_error(exc: BaseException) -> str:
    """A one-line description of a sink failure for logs (type and message, bounded)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


async def drained(pending: Callable[[], int], timeout: float | None) -> bool:
    """Poll ``pending()`` until it is 0; True if that happened before ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def finish_tasks(tasks: Sequence[asyncio.Task[None]], timeout: float) -> None:
    """Let ``tasks`` end by themselves within ``timeout`` seconds, then cancel the late ones and
    wait for them to unwind."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(asyncio.CancelledError):
            await task
