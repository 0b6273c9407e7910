"""The gateway's end of its audit process (``DYN_AUDIT_PROCESS=1``): hand captures over, supervise.

:meth:`AuditProcess.put` runs on the event loop for every finished capture and is O(1) in the
number of captures: it encodes the :class:`~auditgate.audit.raw.RawCapture` (MessagePack; no
JSON, no aggregation; a stream's chunks were encoded batch by batch as they were sent) and queues
the bytes.  :data:`FLUSH_S` later the queue goes as one write over a socket pair to the audit
process (:mod:`auditgate.audit.process.helper`) — the pattern of the durable spool's writer
(:mod:`auditgate.audit.spool.spool`), on a timer instead of once per event-loop iteration, since
nothing waits for it.

Guarantees:

- **Bounded.**  Captures handed over and not yet read by the audit process (queued, in the
  socket) are at most ``DYN_AUDIT_CAPACITY`` records and ``DYN_AUDIT_CAPACITY_BYTES`` bytes;
  past that a capture is dropped, counted in ``audit_dropped_total{sink="*",
  reason="audit_process_full"}`` and logged (rate-limited).  Past the hand-over, the audit
  process's bus keeps its per-sink bounds and counts.
- **Audit process lost** (killed, crashed): every capture handed over that it had not
  acknowledged as stored or dropped by every sink is counted in ``audit_dropped_total{sink="*",
  reason="audit_process_lost"}`` and logged; a new process (new ``writer``, ``seq`` from 0) is
  started with a backoff and gets the captures queued meanwhile.
- **Gateway lost**: the audit process sees the end of its socket, builds and delivers
  everything it had received, and exits.
- Its metrics reach the gateway's ``/metrics``
  (:class:`~auditgate.audit.process.wire.MetricsMirror`; with ``PROMETHEUS_MULTIPROC_DIR`` they
  are shared through its files instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import sys
from collections import deque
from typing import Any, Final, cast

from auditgate.audit import children
from auditgate.audit.capture import new_writer_id
from auditgate.audit.metrics import AuditMetrics, multiprocess
from auditgate.audit.process import wire
from auditgate.audit.raw import RawCapture
from auditgate.config import AuditSettings
from auditgate.logs import RateLimitedLog

log = logging.getLogger("auditgate.audit")

RESTART_BACKOFF_S: Final = (0.0, 0.1, 0.5, 2.0, 5.0)
"""Wait before the n-th restart in a row without an acknowledgement in between (then the last)."""
FLUSH_S: Final = 0.005
"""How long a finished capture waits for others to share its write: a write per event-loop
iteration costs a system call and a wake-up of the audit process for every request or two at
moderate load; every few milliseconds it is one per burst, and no request waits for it."""
START_TIMEOUT_S: Final = 60.0
"""How long the audit process may take to open its sinks."""


class AuditProcessError(RuntimeError):
    """The audit process could not start (its sinks could not be opened)."""


class AuditProcess:
    """Hands finished captures to the audit process and supervises it (see the module doc)."""

    def __init__(self, settings: AuditSettings, metrics: AuditMetrics, *, engine: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.writer = ""
        """The current audit process's writer id (new at every start)."""
        self.restarts = 0
        self._capacity = settings.capacity
        self._capacity_bytes = settings.capacity_bytes
        self._queue: list[bytes] = []
        """Frames (header, payload, header...) of the captures not sent yet."""
        self._queued: list[int] = []
        """Their payloads' sizes."""
        self._encode = wire.encoder.encode
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._sent = 0
        """Captures sent to the current process."""
        self._received = 0
        self._done = 0
        self._sizes: deque[int] = deque()
        """Bytes of each capture sent and not yet read by the process, oldest first."""
        self._bytes = 0
        """Bytes of the captures queued or sent and not yet read."""
        self._failures = 0
        self._restarting: asyncio.Task[None] | None = None
        self._stopping = False
        self._flushes: dict[int, asyncio.Future[bool]] = {}
        self._tokens = 0
        self._report: dict[str, int] = {}
        self._mirror = None if multiprocess() else wire.MetricsMirror(metrics.registry, metrics)
        self._full = metrics.dropped.labels("*", "audit_process_full")
        self._lost = metrics.dropped.labels("*", "audit_process_lost")
        self._errors = metrics.dropped.labels("*", "audit_process_error")
        self._drop_log = RateLimitedLog()

    @property
    def pid(self) -> int | None:
        """The current audit process's pid (None while none runs)."""
        return None if self._process is None else self._process.pid

    @property
    def received(self) -> int:
        """Captures the current audit process acknowledged reading."""
        return self._received

    @property
    def acknowledged(self) -> int:
        """Captures the current audit process acknowledged as stored or dropped by every sink."""
        return self._done

    @property
    def held(self) -> int:
        """Captures handed over and not yet read by the audit process."""
        return len(self._queued) + len(self._sizes)

    async def start(self) -> None:
        """Start the audit process; raises :class:`AuditProcessError` when it cannot open its
        sinks."""
        self._loop = asyncio.get_running_loop()
        await self._start_process()

    def put(self, raw: RawCapture) -> None:
        """Encode one capture and queue it for the audit process; never blocks or raises (a
        capture over the bound is dropped, counted and logged).

        Encoded at once, so that the serving process holds bytes, not the capture's objects,
        until the write (and the garbage collector has fewer objects to look at)."""
        if self._stopping:
            self._drop(raw, "it is stopping")
            return
        if len(self._queued) + len(self._sizes) >= self._capacity:
            self._drop(raw, f"{self._capacity} records held")
            return
        try:
            payload = self._encode(raw)
            kind = wire.CAPTURE
        except (TypeError, OverflowError, UnicodeEncodeError):
            payload = pickle.dumps(raw, protocol=pickle.HIGHEST_PROTOCOL)
            kind = wire.PICKLED
        size = len(payload)
        if self._bytes + size > self._capacity_bytes and self._bytes:
            self._drop(raw, f"{self._bytes} of {self._capacity_bytes} bytes held")
            return
        self._bytes += size
        self._queue.append(wire.HEADER.pack(size, kind))
        self._queue.append(payload)
        self._queued.append(size)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(FLUSH_S, self._flush)

    def _drop(self, raw: RawCapture, why: str) -> None:
        self._full.inc()
        self._drop_log.warning(
            "full", "audit: record %s dropped before the audit process: %s", raw.request_id, why
        )

    def _flush(self) -> None:
        """Send the queued captures as one write."""
        self._scheduled = False
        link = self._link
        if link is None or not self._queued:
            return  # a restart in progress sends the queue once the new process is up
        link.transport.write(b"".join(self._queue))
        self._sent += len(self._queued)
        self._sizes.extend(self._queued)
        self._queue = []
        self._queued = []

    def _acked(self, received: int, done: int) -> None:
        sizes = self._sizes
        for _ in range(received - self._received):
            self._bytes -= sizes.popleft()
        self._received = received
        if done > self._done:
            self._done = done
            self._failures = 0

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every capture handed over so far is in its sinks (or dropped, counted);
        True if that happened before ``timeout``."""
        self._flush()
        link = self._link
        if link is None:
            return not self.held
        self._tokens += 1
        token = self._tokens
        assert self._loop is not None
        done = self._flushes[token] = self._loop.create_future()
        link.transport.write(wire.message(wire.FLUSH, [token, timeout]))
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            return False
        finally:
            self._flushes.pop(token, None)

    async def stop(self, timeout: float) -> dict[str, int]:
        """Send what is queued, let the audit process drain it within ``timeout`` seconds and
        exit; returns its report (per sink, records not delivered)."""
        if self._restarting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._restarting), timeout)
        self._flush()
        self._stopping = True
        link = self._link
        if link is not None:
            link.transport.write(wire.message(wire.STOP, [timeout]))
            if link.transport.can_write_eof():
                link.transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), timeout + 5.0)
        await self._reap(5.0)
        if self._queued:
            self._full.inc(len(self._queued))
            log.error("audit: %d record(s) not handed to the audit process before it stopped",
                      len(self._queued))  # fmt: skip
            self._queue, self._queued = [], []
        return dict(self._report)

    # -- the process -----------------------------------------------------------------------

    async def _start_process(self) -> None:
        assert self._loop is not None
        mine, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "auditgate.audit.process.helper", str(theirs.fileno())]
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL
            )
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        link = _Link(self, self._loop.create_future())
        try:
            await self._loop.connect_accepted_socket(lambda: link, mine)
        except OSError:
            mine.close()
            raise
        self.writer = new_writer_id()
        hello = pickle.dumps((self.settings, self.writer, self.engine))
        link.transport.write(wire.frame(wire.HELLO, hello))
        try:
            await asyncio.wait_for(asyncio.shield(link.ready), START_TIMEOUT_S)
        except BaseException:
            link.transport.abort()
            await self._reap(5.0)
            raise
        self._sent = self._received = self._done = 0
        self._sizes.clear()
        self._bytes = sum(self._queued)
        if self._mirror is not None:
            self._mirror.restart()
        self._link = link
        log.info("audit process started (pid %s, writer %s)", self._process.pid, self.writer)

    def _lost_process(self, why: str) -> None:
        """The audit process went away: count what it had not acknowledged, restart it."""
        link, self._link = self._link, None
        if link is None:
            return
        lost = self._sent - self._done
        self._sizes.clear()
        self._bytes = sum(self._queued)
        self._sent = self._received = self._done = 0
        if lost:
            self._lost.inc(lost)
        for future in self._flushes.values():
            if not future.done():
                future.set_result(False)
        if self._stopping:
            if lost:
                log.error("audit process: exited with %d record(s) not delivered", lost)
            return
        self._failures += 1
        log.error(
            "audit process: %s; %d record(s) it had not delivered are dropped; starting a new "
            "one (failure %d in a row)",
            why,
            lost,
            self._failures,
        )
        assert self._loop is not None
        self._restarting = self._loop.create_task(self._restart(), name="audit-process-restart")

    async def _restart(self) -> None:
        try:
            while not self._stopping:
                delay = RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S)) - 1]
                if delay:
                    await asyncio.sleep(delay)
                await self._reap(5.0)
                try:
                    await self._start_process()
                except (OSError, AuditProcessError, TimeoutError) as exc:
                    self._failures += 1
                    log.error("audit process: cannot start a new one: %s", exc)
                    continue
                self.restarts += 1
                self._flush()
                return
        finally:
            self._restarting = None

    async def _reap(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        await children.reap(process, timeout, "audit process")

    # -- messages from the process ---------------------------------------------------------

    def _received_message(self, link: _Link, kind: int, value: Any) -> None:
        if kind == wire.ACK:
            if link is self._link:
                self._acked(int(value[0]), int(value[1]))
        elif kind == wire.METRICS:
            if self._mirror is not None:
                try:
                    self._mirror.apply([(f, n, dict(labels), v) for f, n, labels, v in value])
                except Exception as exc:  # noqa: BLE001 - metrics must not cost the link
                    self._drop_log.warning(
                        "metrics", "audit process: its metrics could not be mirrored: %s", exc
                    )
        elif kind == wire.FLUSHED:
            future = self._flushes.get(int(value[0]))
            if future is not None and not future.done():
                future.set_result(bool(value[1]))
        elif kind == wire.REPORT:
            self._report = {str(k): int(v) for k, v in value.items()}
        elif kind == wire.READY:
            if not link.ready.done():
                link.ready.set_result(None)
        elif kind == wire.FAILED:
            if not link.ready.done():
                link.ready.set_exception(AuditProcessError(str(value[0])))
        else:
            log.error("audit process: unknown message kind %d", kind)


class _Link(asyncio.Protocol):
    """The event loop's end of the socket to one audit process."""

    def __init__(self, owner: AuditProcess, ready: asyncio.Future[None]) -> None:
        self.owner = owner
        self.ready = ready
        self.closed: asyncio.Future[None] = ready.get_loop().create_future()
        self.reader = wire.Reader()
        self.transport: asyncio.WriteTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        for kind, payload in self.reader.feed(data):
            self.owner._received_message(self, kind, wire.decoder.decode(payload))

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(AuditProcessError("the audit process exited at start"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.owner._link is self:
            self.owner._lost_process("it exited" if exc is None else f"its socket failed: {exc}")
