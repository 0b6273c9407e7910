"""The audit process: builds, processes and delivers the records of one gateway process.

``python -m auditgate.audit.process.helper FD`` — started by
:class:`~auditgate.audit.process.link.AuditProcess` with one end of a socket pair as ``FD``
(protocol: :mod:`auditgate.audit.process.wire`).  It runs an ordinary
:class:`~auditgate.audit.runtime.AuditRuntime` built from the gateway's settings (sinks, bus,
redaction, integrity chain, checkpoints) with the writer id the gateway gave it, and for every
capture received: aggregates a stream's chunks with the endpoint's aggregator, builds the record
(:func:`~auditgate.audit.raw.build_record`, as the in-process path does) and publishes it.

It acknowledges what it read and what every sink has stored (or dropped, counted), sends its
metrics every :data:`METRICS_S`, and exits once the socket ends (the gateway stopped or died)
after delivering everything it had received.  Like the spool's writer it ignores SIGINT and
SIGTERM, which a terminal or a service manager sends to the whole process group: the gateway
tells it when to stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import pickle
import signal
import socket
import sys
from typing import Any, Final, cast

import msgspec

from auditgate.audit.metrics import AuditMetrics, multiprocess
from auditgate.audit.process import wire
from auditgate.audit.raw import RawCapture, aggregate, build_record
from auditgate.audit.runtime import AuditRuntime
from auditgate.config import AuditSettings

log = logging.getLogger("auditgate.audit")

ACK_S: Final = 0.01
"""How long after a read what was read is acknowledged (not at every read: a message back per
read would cost the gateway a wake-up and a read each)."""
TICK_S: Final = 0.1
"""How often what every sink stored is acknowledged while it moves (and the metrics sent, every
:data:`METRICS_S`): a timer that wakes an idle process costs CPU, so not more often."""
METRICS_S: Final = 0.5
"""How often the metrics go to the gateway."""
GC_GEN0_THRESHOLD: Final = 10_000
"""Young-generation threshold of the garbage collector (the serving process's)."""
ORPHAN_DRAIN_S: Final = 30.0
"""Drain deadline when the gateway went away without saying how long to take."""

_decode_raw: Final = msgspec.msgpack.Decoder(RawCapture).decode


class Helper(asyncio.Protocol):
    """The audit process's end of the socket (see the module doc)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.reader = wire.Reader()
        self.transport: asyncio.WriteTransport
        self.runtime: AuditRuntime | None = None
        self.hello: asyncio.Future[tuple[AuditSettings, str, str]] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.drain_s = ORPHAN_DRAIN_S
        self.received = 0
        self.errors = 0
        self._acked = (0, 0)
        self._ack_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        for kind, payload in self.reader.feed(data):
            if kind in (wire.CAPTURE, wire.PICKLED):
                self._capture(kind, payload)
            elif kind == wire.FLUSH:
                token, timeout = wire.decoder.decode(payload)
                self.loop.create_task(self._flush(int(token), timeout))
            elif kind == wire.STOP:
                self.drain_s = float(wire.decoder.decode(payload)[0])
            elif kind == wire.HELLO:
                if not self.hello.done():
                    self.hello.set_result(pickle.loads(payload))
            else:
                log.error("audit process: unknown message kind %d", kind)
        if not self._ack_due:
            self._ack_due = True
            self.loop.call_later(ACK_S, self.ack)

    def _capture(self, kind: int, payload: memoryview) -> None:
        self.received += 1
        runtime = self.runtime
        if runtime is None:
            return
        try:
            raw = _decode_raw(payload) if kind == wire.CAPTURE else pickle.loads(payload)
            record = build_record(raw, runtime.auditor.engine, aggregate(raw))
        except Exception as exc:  # noqa: BLE001 - counted and logged; never stops the process
            self.errors += 1
            runtime.metrics.dropped.labels("*", "audit_process_error").inc()
            log.error("audit process: a capture could not be made a record: %s", exc)
            return
        runtime.auditor.publish(record, raw.credentials)

    async def _flush(self, token: int, timeout: float | None) -> None:
        assert self.runtime is not None
        ok = await self.runtime.flush(timeout)
        self.send_metrics()
        self.ack()
        self.transport.write(wire.message(wire.FLUSHED, [token, ok]))

    def done(self) -> int:
        """Captures every sink has stored or dropped (counted): a lower bound — the newest
        records still waiting for the processors or in the longest sink queue are not."""
        runtime = self.runtime
        if runtime is None:
            return self.received
        bus = runtime.auditor.bus
        # Over all sinks: at least the longest sink queue, so never a record not done.
        waiting = runtime.auditor.pending() + (0 if bus is None else bus.pending())
        return max(0, self.received - waiting)

    def ack(self) -> None:
        self._ack_due = False
        acked = (self.received, self.done())
        if acked != self._acked and not self.transport.is_closing():
            self._acked = acked
            self.transport.write(wire.message(wire.ACK, list(acked)))

    def send_metrics(self) -> None:
        if self.runtime is None or multiprocess() or self.transport.is_closing():
            return
        found = wire.samples(self.runtime.metrics.registry)
        self.transport.write(wire.message(wire.METRICS, list(found.values())))

    def eof_received(self) -> bool:
        if not self.ended.done():
            self.ended.set_result(None)
        return True  # keep our write side open: the report still goes back

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)
        if not self.hello.done():
            self.hello.cancel()


async def _tick(helper: Helper) -> None:
    since_metrics = 0.0
    while True:
        await asyncio.sleep(TICK_S)
        helper.ack()
        since_metrics += TICK_S
        if since_metrics >= METRICS_S:
            since_metrics = 0.0
            helper.send_metrics()


async def serve(fd: int) -> int:
    """Run until the gateway's socket ends; the exit status."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    helper = Helper()
    await loop.connect_accepted_socket(lambda: helper, sock)
    try:
        settings, writer, engine = await helper.hello
    except asyncio.CancelledError:
        return 1
    if settings.process_cpus:
        os.sched_setaffinity(0, settings.process_cpus)
    # The runtime here is the in-process one: it must not start an audit process of its own.
    settings = dataclasses.replace(settings, process=False)
    runtime = AuditRuntime(settings, AuditMetrics(), engine=engine)
    runtime.auditor.writer = writer
    try:
        await runtime.start()
    except Exception as exc:
        log.exception("audit process: cannot start the sinks")
        helper.transport.write(wire.message(wire.FAILED, [f"{type(exc).__name__}: {exc}"]))
        helper.transport.close()
        return 1
    helper.runtime = runtime
    # As the serving process does (auditgate.serving.tune_garbage_collector): every record
    # is hundreds of short-lived containers; at CPython's 700 young collections would promote
    # records in flight, which only full collections reclaim.
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    helper.transport.write(wire.message(wire.READY, []))
    ticker = loop.create_task(_tick(helper))
    await helper.ended
    report = await runtime.stop(helper.drain_s)
    ticker.cancel()
    helper.send_metrics()
    helper.ack()
    if not helper.transport.is_closing():
        helper.transport.write(wire.message(wire.REPORT, report))
        helper.transport.close()
    await asyncio.sleep(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    return int(run(serve(int(args[0]))))


if __name__ == "__main__":
    sys.exit(main())
