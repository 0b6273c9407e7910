"""The durable bus (``DYN_AUDIT_DURABILITY=durable``, DESIGN §6): spool first, sinks after.

:meth:`DurableBus.publish` queues the record for the spool's group commit and returns a future
that resolves once the record is on disk (fdatasync'd); the pipeline releases the end of the
response only after it resolves.  Each sink then gets the records from its own reader:

- a reader that is caught up takes records straight from memory as they commit; its in-memory
  tail (records not yet stored, the batch being written included) is bounded by
  ``DYN_AUDIT_CAPACITY`` records and ``DYN_AUDIT_CAPACITY_BYTES`` bytes of JSON.  A commit that
  would go past either makes the reader fall behind: it drops its tail and reads the spool from
  its cursor instead, about 1 MiB at a time, as after a restart — nothing is ever dropped for a
  slow sink, and a sink that is down holds no more than the bound in memory;
- a batch is written with the sink's own :class:`~auditgate.audit.sink.BatchPolicy` (size, and
  ``linger_s`` while caught up, as in best effort), retried with capped exponential backoff until
  it is stored; the sink's cursor is then saved — at once when the batch passed a segment (whose
  deletion may now be due), else at most every ``CURSOR_SAVE_INTERVAL_S`` and once more when the
  reader goes idle after that — and the segments every saved cursor has passed are deleted;
- a sink whose writes survive a power loss only once synced (a
  :class:`~auditgate.audit.sink.Syncable`: files, SQLite) is synced before its cursor is saved,
  so the spool never forgets a record the sink could still lose, and no commit of the sink
  needs a flush of its own;
- delivery is at least once (a crash between a write and its cursor save replays the batch);
  sinks are idempotent on ``request_id``.

Spool full: ``full`` records (``store: true``) are refused *before* the engine runs
(:meth:`DurableBus.admit`); ``usage_only`` records that find the spool full are dropped and
counted (``audit_dropped_total{sink="spool",reason="spool_full"}``) and the request is served —
they are analytics, not the compliance trail a client asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence

from auditgate.audit.bus import (
    Backoff,
    batch_of,
    describe_error,
    drained,
    finish_tasks,
    policy_of,
    wait_for_batch,
    write_until_stored,
)
from auditgate.audit.commit import failed
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope, Mode, decode_record
from auditgate.audit.sink import Sink, Syncable
from auditgate.audit.spool.frames import Frame, Position
from auditgate.audit.spool.spool import Spool, SpoolError
from auditgate.config import DEFAULT_CAPACITY_BYTES
from auditgate.errors import UNDECODABLE, ConfigError
from auditgate.logs import RateLimitedLog

log = logging.getLogger("auditgate.audit")

CURSOR_SAVE_INTERVAL_S = 0.2
"""A sink's cursor is saved at most this often (always when it passes a segment, and at close).

Each save is a file write and rename on a worker thread: saving after every batch cost a thread
hop per group commit on the serving core.  A crash replays at most this much; sinks are
idempotent on ``request_id``."""


class _Reader:
    """One sink's position in the spool and its in-memory tail."""

    def __init__(self, sink: Sink, position: Position, backlog: int) -> None:
        self.sink = sink
        self.name = sink.name
        self.policy = policy_of(sink)
        self.position = position
        """Everything before this is stored in the sink."""
        self.backlog = backlog
        """Committed records the sink has not stored yet."""
        self.live = False
        """Caught up: new commits go to ``memory`` instead of being read back from disk."""
        self.memory: deque[tuple[Envelope, Position, int]] = deque()
        self.tail_bytes = 0
        """JSON bytes of the records in ``memory``."""
        self.taken_bytes = 0
        """JSON bytes of the batch being written, when it came from ``memory``."""
        self.wake_bytes = 1
        """Tail bytes at which a lingering reader writes: a full batch, or half the bound."""
        self.wakeup = asyncio.Event()
        self.oldest_ms: int | None = None
        """Append time of the oldest record not yet stored (None when caught up)."""
        self.task: asyncio.Task[None] | None = None
        self.saved_at = 0.0
        """``time.monotonic()`` of the last cursor save."""
        self.saved = position
        """The position the last cursor save wrote (or found at start)."""
        self.stored = position
        """Everything before this is stored and synced in the sink: the spool may delete it."""
        self.save_timer: asyncio.TimerHandle | None = None
        """Wakes an idle reader whose unsaved position is due for its throttled save."""
        self.wake_at = 1
        """Records in ``memory`` at which a commit wakes the reader (more while it lingers)."""

    def depth(self) -> float:
        return float(self.backlog)

    def held_bytes(self) -> float:
        """JSON bytes this reader holds in memory (its tail and the batch taken from it)."""
        return float(self.tail_bytes + self.taken_bytes)

    def age(self) -> float:
        """Seconds since the oldest record the sink has not stored was spooled."""
        if self.oldest_ms is None:
            return 0.0
        return max(0.0, time.time() - self.oldest_ms / 1000.0)


class DurableBus:
    """Spools every record durably, then feeds each sink from its own cursor."""

    durable = True
    """``publish`` returns a commit for every record it accepts."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        spool: Spool,
        capacity: int,
        metrics: AuditMetrics,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        backoff: Backoff | None = None,
    ) -> None:
        if capacity <= 0 or capacity_bytes <= 0:
            raise ValueError("capacity and capacity_bytes must be > 0")
        self.spool = spool
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self._sinks = list(sinks)
        self._readers: list[_Reader] = []
        self._waiting: dict[int, asyncio.Future[None]] = {}
        """Commit futures by ``id(envelope)``; the spool holds the envelope until it commits."""
        self._end = Position(0, 0)
        """Committed end, as the event loop has seen it (readers compare against this)."""
        self._live_segment = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._drained = False
        self._flushing = 0
        """Callers in :meth:`flush`: readers do not linger meanwhile."""
        self._log = RateLimitedLog()
        self._last_recovered: AuditRecord | None = None
        self._spool_full = metrics.dropped.labels("spool", "spool_full")
        self._spool_error = metrics.dropped.labels("spool", "spool_error")
        metrics.watch(metrics.spool_bytes, lambda: spool.bytes)

    @property
    def sink_names(self) -> tuple[str, ...]:
        return tuple(sink.name for sink in self._sinks)

    @property
    def last_recovered(self) -> AuditRecord | None:
        """The newest record the spool held at :meth:`start` (None: none, or unreadable): if
        its process died without a final checkpoint, its chain ends there."""
        return self._last_recovered

    @property
    def full(self) -> bool:
        """The spool holds ``DYN_AUDIT_SPOOL_MAX_BYTES`` or more."""
        return self.spool.full

    async def start(self) -> None:
        """Recover the spool (cut torn tails), open every sink, start the writer and readers.
        Raises :class:`ConfigError` when the spool directory cannot be used (a file, not
        writable, every worker slot taken)."""
        try:
            recovery = await asyncio.to_thread(self.spool.recover, self.sink_names)
        except (OSError, SpoolError) as exc:
            raise ConfigError(f"DYN_AUDIT_SPOOL_DIR={str(self.spool.root)!r}: {exc}") from exc
        for cut in recovery.cuts:
            self.metrics.spool_corrupt.inc()
            self.metrics.spool_cut_bytes.inc(cut.removed)
        self._live_segment = recovery.live
        self._end = self.spool.end
        self._last_recovered = _last_record(recovery.last)
        for sink in self._sinks:
            reader = _Reader(sink, recovery.cursors[sink.name], recovery.backlog[sink.name])
            reader.wake_bytes = max(1, min(self.capacity_bytes // 2, reader.policy.max_bytes))
            self._readers.append(reader)
            m = self.metrics
            m.watch(m.queue_depth.labels(sink.name), reader.depth)
            m.watch(m.queue_bytes.labels(sink.name), reader.held_bytes)
            m.watch(m.spool_oldest.labels(sink.name), reader.age)
            m.spool_replayed.labels(sink.name)
            m.written.labels(sink.name)
            m.sink_errors.labels(sink.name)
            if reader.backlog:
                log.warning(
                    "audit spool: %d record(s) not yet stored in sink %s; replaying",
                    reader.backlog,
                    sink.name,
                )
        for sink in self._sinks:
            await sink.open()
        self._loop = loop = asyncio.get_running_loop()
        await self.spool.start(self._committed)
        for reader in self._readers:
            reader.task = loop.create_task(self._run(reader), name=f"audit-spool-{reader.name}")
        self.metrics.start_refresh()

    def admit(self, mode: Mode | None) -> bool:
        """Whether a request whose record has ``mode`` may start; counts refusals."""
        if mode == "full" and self.spool.full:
            self.metrics.spool_rejected.inc()
            self._log.warning(
                "spool-full",
                "audit spool full (%d of %d bytes): refusing store:true requests with 503 until "
                "sinks catch up",
                self.spool.bytes,
                self.spool.max_bytes,
            )
            return False
        return True

    def publish(self, envelope: Envelope) -> Awaitable[None] | None:
        """Queue the record for the spool; returns a future done once it is durable (or failed
        with :class:`SpoolError`).  Never blocks, never raises.  ``None``: the record was
        dropped (a ``usage_only`` record while the spool is full), counted and logged."""
        loop = self._loop
        if loop is None or self._closing:
            return failed(SpoolError("the audit spool is not running"))
        if envelope.record.mode == "usage_only" and self.spool.full:
            self._spool_full.inc()
            self._log.warning("usage-drop", "audit spool full: usage_only record dropped")
            return None
        future: asyncio.Future[None] = loop.create_future()
        try:
            self.spool.append(envelope)
        except SpoolError as exc:
            return failed(exc)
        self._waiting[id(envelope)] = future
        return future

    def pending(self) -> int:
        """Records waiting for their commit or for a sink, over all sinks."""
        return len(self._waiting) + sum(reader.backlog for reader in self._readers)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record published so far is committed and stored by every sink;
        True if that happened before ``timeout``.  Readers do not linger while it waits."""
        self._flushing += 1
        try:
            for reader in self._readers:
                reader.wakeup.set()
            return await drained(self.pending, timeout)
        finally:
            self._flushing -= 1

    async def close(self, timeout: float) -> dict[str, int]:
        """Commit what is queued, let sinks catch up within ``timeout``, close them.  Returns
        the records each sink has not stored: they stay in the spool for the next start."""
        self._closing = True
        await self.spool.stop(timeout)
        self._drained = True
        for reader in self._readers:
            reader.wakeup.set()  # ends lingering and idle waits: deliver the rest, save, stop
        await finish_tasks([r.task for r in self._readers if r.task is not None], timeout)
        report: dict[str, int] = {}
        for reader in self._readers:
            report[reader.name] = reader.backlog
            if reader.backlog:
                log.warning(
                    "audit sink %s: %d record(s) not stored before the %.1fs deadline; kept in "
                    "the spool, replayed at the next start",
                    reader.name,
                    reader.backlog,
                    timeout,
                )
            try:
                await reader.sink.close()
            except Exception:
                log.exception("audit sink %s: close failed", reader.name)
        self.spool.release_claim()
        await self.metrics.stop_refresh()
        return report

    # -- commits -----------------------------------------------------------------------------

    def _committed(
        self,
        placed: list[tuple[Envelope, Position]],
        appended_ms: int,
        error: BaseException | None,
    ) -> None:
        waiting = self._waiting
        for envelope, _ in placed:
            future = waiting.pop(id(envelope), None)
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
                future.exception()  # nobody may wait (an error record): not "never retrieved"
        if error is not None:
            self._spool_error.inc(len(placed))
            self._log.warning(
                "spool-error", "audit spool: %d record(s) lost: %s", len(placed), error
            )
            return
        self._end = placed[-1][1]
        self.metrics.spool_commits.inc()
        size = -1  # the group's JSON bytes, summed once if a reader keeps it in memory
        for reader in self._readers:
            reader.backlog += len(placed)
            if reader.live:
                if size < 0:
                    size = sum([len(envelope.json) for envelope, _ in placed])
                if not self._keep(reader, placed, appended_ms, size):
                    continue  # lingering for a fuller batch: no wake-up per commit
            reader.wakeup.set()

    def _keep(
        self, reader: _Reader, placed: list[tuple[Envelope, Position]], appended_ms: int, size: int
    ) -> bool:
        """Add a committed group of ``size`` JSON bytes to a live reader's tail, or make the
        reader fall behind (drop its tail, read the spool) when the group would take it past
        the capacity in records or bytes.  False: the reader lingers and needs no wake-up."""
        held = reader.tail_bytes + reader.taken_bytes + size
        if len(reader.memory) + len(placed) > self.capacity or held > self.capacity_bytes:
            reader.live = False
            reader.memory.clear()
            reader.tail_bytes = 0
            return True
        reader.memory.extend((e, p, appended_ms) for e, p in placed)
        reader.tail_bytes += size
        return len(reader.memory) >= reader.wake_at or reader.tail_bytes >= reader.wake_bytes

    # -- readers -----------------------------------------------------------------------------

    async def _run(self, reader: _Reader) -> None:
        try:
            while await self._step(reader):
                pass
        finally:
            if reader.save_timer is not None:
                reader.save_timer.cancel()
                reader.save_timer = None

    async def _step(self, reader: _Reader) -> bool:
        """Deliver one batch (from memory or from the spool), or wait; False: stop.

        One batch per call, so nothing of a stored batch outlives it: a loop's locals kept an
        idle reader's last batch (up to ``max_records`` bodies of up to 8 MiB) alive."""
        max_records = reader.policy.max_records
        if reader.live and reader.memory:
            if reader.policy.linger_s and not self._drained and not self._flushing:
                await self._linger(reader)
                if not (reader.live and reader.memory):
                    return True  # fell behind while lingering: read the spool instead
            sizes = (len(envelope.json) for envelope, _, _ in reader.memory)
            count, reader.taken_bytes = batch_of(sizes, reader.policy)
            items = [reader.memory.popleft() for _ in range(count)]
            batch = [envelope for envelope, _, _ in items]
            end, oldest, replayed = items[-1][1], items[0][2], 0
            reader.tail_bytes -= reader.taken_bytes
        elif not reader.live:
            frames, end = await asyncio.to_thread(self.spool.read, reader.position, max_records)
            if not frames:
                reader.position = end
                if end >= self._end and not reader.memory:
                    reader.live = True
                    await self._save(reader)
                return True
            batch = self._decode(reader, frames)
            oldest = frames[0].appended_ms
            replayed = sum(1 for f in frames if f.start.segment < self._live_segment)
        else:
            reader.oldest_ms = None
            return not await self._idle(reader)
        reader.oldest_ms = oldest
        if batch:
            await write_until_stored(reader.sink, batch, self.backoff, self.metrics, self._log)
        reader.taken_bytes = 0
        reader.backlog -= len(batch)
        moved_segment = end.segment != reader.position.segment
        reader.position = end
        if replayed:
            self.metrics.spool_replayed.labels(reader.name).inc(replayed)
        if moved_segment or time.monotonic() - reader.saved_at >= CURSOR_SAVE_INTERVAL_S:
            await self._save(reader)
        return True

    async def _idle(self, reader: _Reader) -> bool:
        """Caught up: save an unsaved cursor once its throttle interval lapsed (a timer wakes the
        reader for it), then wait for commits.  True when the bus is drained: stop."""
        if reader.position != reader.saved:
            due = reader.saved_at + CURSOR_SAVE_INTERVAL_S - time.monotonic()
            if due <= 0 or self._drained:
                saved = await self._save(reader)
                return self._drained and not saved  # at close a failing save is not retried
            if reader.save_timer is None:
                assert self._loop is not None
                reader.save_timer = self._loop.call_later(due, self._save_due, reader)
        if self._drained:
            return True
        reader.wakeup.clear()
        await reader.wakeup.wait()
        return False

    @staticmethod
    def _save_due(reader: _Reader) -> None:
        reader.save_timer = None
        reader.wakeup.set()

    async def _linger(self, reader: _Reader) -> None:
        """Wait up to the sink's ``linger_s`` for a full batch (as the best-effort bus does); a
        full batch, half the capacity (records or bytes) in memory, falling behind or close
        ends it early."""
        target = min(reader.policy.max_records, max(1, self.capacity // 2))
        if len(reader.memory) >= target or reader.tail_bytes >= reader.wake_bytes:
            return
        await wait_for_batch(reader, target, reader.policy.linger_s)

    async def _save(self, reader: _Reader) -> bool:
        """Let the spool forget what the sink stored: sync the sink (a :class:`Syncable` one),
        then persist its cursor and delete the segments every sink has stored, on a worker
        thread.  False when the sync or the cursor save failed (logged; the next save retries).

        Deletion follows what each sink has stored and synced, not its saved cursor: a cursor
        that could not be saved only falls back (replays), so a spool whose cursor saves fail
        still frees its disk as its sinks catch up."""
        reader.saved_at = time.monotonic()
        position = reader.position
        saved = False
        try:
            if isinstance(reader.sink, Syncable):
                await reader.sink.sync()
            reader.stored = position
            await asyncio.to_thread(self.spool.save_cursor, reader.name, position)
        except Exception as exc:  # noqa: BLE001 - a sink's or the disk's error: retried, logged
            self.metrics.sink_errors.labels(reader.name).inc()
            self._log.warning(
                f"save-{reader.name}",
                "audit sink %s: cannot save its spool cursor (%s); retrying (until a save "
                "works, a restart replays from the last saved one)",
                reader.name,
                describe_error(exc),
            )
        else:
            reader.saved, saved = position, True
        try:
            await asyncio.to_thread(self.spool.release, [r.stored for r in self._readers])
        except OSError as exc:
            self._log.warning("release", "audit spool: cannot delete passed segments: %s", exc)
        return saved

    def _decode(self, reader: _Reader, frames: list[Frame]) -> list[Envelope]:
        batch: list[Envelope] = []
        for frame in frames:
            try:
                envelope = Envelope(decode_record(frame.payload))
            except UNDECODABLE as exc:  # checksum fine, content not a record: a bug
                log.error(
                    "audit spool: frame at %s is not a record (%s); skipped for sink %s",
                    frame.start,
                    exc,
                    reader.name,
                )
                self.metrics.dropped.labels(reader.name, "undecodable").inc()
                reader.backlog -= 1
                continue
            batch.append(envelope)
        return batch


def _last_record(payload: bytes | None) -> AuditRecord | None:
    if payload is None:
        return None
    try:
        return decode_record(payload)
    except UNDECODABLE as exc:  # checksum fine, content not a record: a bug
        log.error("audit spool: its newest frame is not a record (%s); not sealing its chain", exc)
        return None
