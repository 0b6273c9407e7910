"""The composition root of the audit core: settings → sinks, bus, processors, chain, auditor.

Every transport — the gateway's HTTP and gRPC frontends and the ASGI middleware users embed —
asks :class:`AuditRuntime` for its :class:`~auditgate.audit.capture.Auditor`; none builds one
itself, so every ``DYN_AUDIT_*`` setting means the same whatever carries the request:

- the sinks ``DYN_AUDIT_SINKS`` names (or the ones a caller hands in);
- the bus ``DYN_AUDIT_DURABILITY`` asks for: the best-effort :class:`~auditgate.audit.bus.AuditBus`
  or the spooled :class:`~auditgate.audit.spool.durable.DurableBus` (one spool slot per worker);
- the processors (redaction, integrity chain) every record passes before any sink;
- with integrity on, the interval checkpoints, the final one at :meth:`AuditRuntime.stop`, and
  the recovery checkpoint sealing a dead predecessor's chain found in the spool.

Lifecycle: :meth:`~AuditRuntime.start` (opens the sinks), :meth:`~AuditRuntime.flush` (waits until
everything accepted is in its sinks), :meth:`~AuditRuntime.stop` (final checkpoint, drain within a
deadline, report what was not delivered).  With audit off there is no bus; the auditor then opens
no capture and every method here returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from auditgate.audit.bus import AuditBus, RecordBus
from auditgate.audit.capture import Auditor
from auditgate.audit.checkpoints import checkpoint_ticker, seal_until_durable
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.processors import Processors
from auditgate.audit.record import AuditRecord, Envelope, Mode
from auditgate.audit.sink import Sink
from auditgate.config import AuditSettings
from auditgate.logs import RateLimitedLog

if TYPE_CHECKING:
    from auditgate.audit.process.link import AuditProcess

log = logging.getLogger("auditgate")


def build_bus(
    settings: AuditSettings, sinks: Sequence[Sink], metrics: AuditMetrics, *, workers: int = 1
) -> RecordBus:
    """The bus ``DYN_AUDIT_DURABILITY`` names, over ``sinks``.

    Durable: a spool in ``DYN_AUDIT_SPOOL_DIR`` with ``workers`` slots (``--workers N``: one
    spool directory each, the disk budget shared); a process that finds every slot taken fails
    its start with a :class:`~auditgate.errors.ConfigError`."""
    if settings.durability == "durable":
        from auditgate.audit.spool.durable import DurableBus
        from auditgate.audit.spool.spool import Spool

        spool = Spool(
            settings.spool_dir, max_bytes=settings.spool_max_bytes // workers, slots=workers
        )
        return DurableBus(
            sinks,
            spool=spool,
            capacity=settings.capacity,
            capacity_bytes=settings.capacity_bytes,
            metrics=metrics,
        )
    return AuditBus(
        sinks, capacity=settings.capacity, capacity_bytes=settings.capacity_bytes, metrics=metrics
    )


def ignored_settings(settings: AuditSettings) -> list[str]:
    """The audit settings that differ from their defaults although audit is off (they do
    nothing then: a sink list or durable mode given without ``DYN_AUDIT_ENABLED``)."""
    if settings.enabled:
        return []
    defaults = AuditSettings()
    return [
        field.name
        for field in dataclasses.fields(settings)
        if getattr(settings, field.name) != getattr(defaults, field.name)
    ]


class AuditRuntime:
    """One process's audit core, built from its settings; see the module doc."""

    def __init__(
        self,
        settings: AuditSettings,
        metrics: AuditMetrics,
        *,
        engine: str,
        sinks: Sequence[Sink] | None = None,
        workers: int = 1,
    ) -> None:
        """``engine``: the records' ``engine`` field; ``sinks`` replace the configured ones;
        ``workers``: processes sharing the settings (each its own writer and spool slot).
        Raises :class:`~auditgate.errors.ConfigError` for a setting that cannot work."""
        self.settings = settings
        self.metrics = metrics
        self.bus: RecordBus | None = None
        self.process: AuditProcess | None = None
        """The audit process that builds and delivers the records (``DYN_AUDIT_PROCESS``)."""
        if settings.enabled and settings.process and sinks is None:
            if settings.durability == "durable":
                log.warning(
                    "DYN_AUDIT_PROCESS is not supported with DYN_AUDIT_DURABILITY=durable yet: "
                    "the records are built in the serving process"
                )
            else:
                from auditgate.audit.process.link import AuditProcess

                self.process = AuditProcess(settings, metrics, engine=engine)
        if settings.enabled and self.process is None:
            if sinks is None:
                from auditgate.sinks import build_sinks

                sinks = build_sinks(settings, metrics)
            self.bus = build_bus(settings, sinks, metrics, workers=workers)
        self.auditor = Auditor(
            settings,
            self.bus,
            metrics,
            engine=engine,
            # With the audit process, the processors run there; here they only redact the
            # record a transport asks a capture for (a stored response, for its store lag),
            # counted over there already.
            processors=Processors.build(
                settings, metrics if self.process is None else AuditMetrics(), engine=engine
            ),
            handoff=self.process,
        )
        self._checkpoints: asyncio.Task[None] | None = None
        self._sealing: asyncio.Task[bool] | None = None
        """Seals the chain a predecessor left unsealed in the spool (until durable)."""
        self._sinks_down = False

    @property
    def enabled(self) -> bool:
        """Whether requests yield records (audit on)."""
        return self.auditor.enabled

    @property
    def sink_names(self) -> tuple[str, ...]:
        if self.process is not None:
            return self.settings.sinks
        return self.bus.sink_names if self.bus is not None else ()

    async def start(self, *, keep_serving: bool = False) -> None:
        """Open the sinks and start the checkpoint tasks (integrity on).

        A sink that cannot be opened raises, unless ``keep_serving`` in best effort: then the
        error is logged, and every record is captured and counted as dropped for each sink
        (``reason="sink_unavailable"``) and logged, rate-limited — the choice of a host that must
        go on serving (the middleware), never a silent unaudited answer.  A durable bus always
        raises: it promises that no response ends before its record is kept."""
        if self.process is not None:
            try:
                await self.process.start()
            except Exception:
                if not keep_serving:
                    raise
                log.exception(
                    "audit: the audit process cannot start its sinks; serving WITHOUT audit "
                    '(records counted in auditgate_audit_dropped_total{reason="sink_unavailable"})'
                )
                self._sinks_down = True
                self.process = self.auditor.handoff = None
                self.auditor.bus = SinksDown(self.settings.sinks, self.metrics)
                return
            log.info(
                "audit on, in its own process: sinks=%s capacity=%d records / %d bytes writer=%s",
                ",".join(self.settings.sinks),
                self.settings.capacity,
                self.settings.capacity_bytes,
                self.process.writer,
            )
            return
        bus = self.bus
        if bus is None:
            ignored = ignored_settings(self.settings)
            if ignored:
                log.warning(
                    "audit is OFF (DYN_AUDIT_ENABLED is not set), so these audit settings do "
                    "nothing: %s; set DYN_AUDIT_ENABLED=1 to record chat completions",
                    ", ".join(ignored),
                )
            return
        try:
            await bus.start()
        except Exception:
            if not keep_serving or bus.durable:
                raise
            log.exception(
                "audit: cannot start the sinks; serving WITHOUT audit (records counted in "
                'auditgate_audit_dropped_total{reason="sink_unavailable"})'
            )
            self._sinks_down = True
            self.auditor.bus = SinksDown(bus.sink_names, self.metrics)
            return
        loop = asyncio.get_running_loop()
        if self.auditor.processors.chain is not None:
            self._checkpoints = loop.create_task(
                checkpoint_ticker(self.auditor.checkpoint, self.settings.checkpoint_interval_s),
                name="audit-checkpoints",
            )
            last = bus.last_recovered
            if last is not None:
                self._sealing = loop.create_task(
                    seal_until_durable(self.auditor.seal_predecessor, last),
                    name="audit-recovery-seal",
                )
        s = self.settings
        log.info(
            "audit on: sinks=%s capacity=%d records / %d bytes durability=%s writer=%s",
            ",".join(bus.sink_names),
            s.capacity,
            s.capacity_bytes,
            "durable" if bus.durable else "best_effort",
            self.auditor.writer,
        )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far — those waiting for the processors
        included — is in its sinks (durable: stored by every sink, not just spooled).  True if
        that happened before ``timeout`` seconds."""
        if self.process is not None:
            return await self.process.flush(timeout)
        if self.bus is None:
            return True
        self.auditor.flush()
        bus = self.auditor.bus
        return True if bus is None else await bus.flush(timeout)

    async def stop(self, timeout: float) -> dict[str, int]:
        """Seal the chain with a final checkpoint (integrity on), drain within ``timeout``
        seconds and close the sinks.  Returns, per sink, the records not delivered (durable:
        kept in the spool for the next start); logs them."""
        if self.process is not None and not self._sinks_down:
            report = await self.process.stop(timeout)
            if any(report.values()):
                log.error("audit: %d record(s) undelivered at shutdown: %s",
                          sum(report.values()), report)  # fmt: skip
            return report
        bus = self.bus
        if bus is None or self._sinks_down:
            return {}
        await self._final_checkpoint(timeout)
        report = await bus.close(timeout)
        lost = sum(report.values())
        if lost and bus.durable:
            log.warning(
                "audit: %d record(s) not yet in their sinks at shutdown, kept in the spool "
                "%s for the next start: %s",
                lost,
                self.settings.spool_dir,
                report,
            )
        elif lost:
            log.error("audit: %d record(s) undelivered at shutdown: %s", lost, report)
        else:
            log.info("audit: all records delivered at shutdown")
        return report

    async def _final_checkpoint(self, timeout: float) -> None:
        """Stop the interval checkpoints and seal the chain with a final one (integrity on)."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        await self._stop_sealing(timeout)
        commit = self.auditor.checkpoint("shutdown", final=True)
        if commit is not None:
            try:
                await commit
            except Exception as exc:  # noqa: BLE001 - shutdown goes on; verify reports it
                log.error("audit: final checkpoint not made durable: %s", exc)

    async def _stop_sealing(self, timeout: float) -> None:
        """A predecessor's chain not sealed yet gets one last try (after this writer's final
        checkpoint, the spool's newest record no longer says where that chain ended)."""
        if self._sealing is None or self._sealing.done() or self.bus is None:
            return
        self._sealing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sealing
        last = self.bus.last_recovered
        assert last is not None  # what the task was sealing
        seal = seal_until_durable(self.auditor.seal_predecessor, last, retries=0)
        try:  # a hung disk must not hold the shutdown up
            await asyncio.wait_for(seal, timeout)
        except TimeoutError:
            log.error("audit: the chain of writer %s is left unsealed", last.writer)


class SinksDown:
    """The bus of a runtime whose sinks could not be opened at startup (``keep_serving``): the
    host goes on serving, and each record is counted as dropped for every sink
    (``reason="sink_unavailable"``) and logged, rate-limited.  Nothing is ever pending."""

    durable = False
    last_recovered: AuditRecord | None = None

    def __init__(self, names: tuple[str, ...], metrics: AuditMetrics) -> None:
        self._names = names
        self._dropped = [metrics.dropped.labels(name, "sink_unavailable") for name in names]
        self._log = RateLimitedLog()

    @property
    def sink_names(self) -> tuple[str, ...]:
        return self._names

    async def start(self) -> None:
        """Nothing to open: the sinks already failed to."""

    def admit(self, mode: Mode) -> bool:
        return True

    def publish(self, envelope: Envelope) -> None:
        for counter in self._dropped:
            counter.inc()
        self._log.warning(
            "sinks-down",
            "audit: sinks unavailable since startup; record %s dropped",
            envelope.request_id,
        )

    def pending(self) -> int:
        return 0

    async def flush(self, timeout: float | None = None) -> bool:
        return True

    async def close(self, timeout: float) -> dict[str, int]:
        return {}
