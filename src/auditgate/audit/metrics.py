"""Prometheus metrics of the audit pipeline (DESIGN §8), on a registry owned by the app.

No module-level metric objects: each gateway (and each test) builds its own
:class:`AuditMetrics` on its own :class:`CollectorRegistry`.

Several processes (``auditgate serve --workers N``) share their metrics through
``prometheus_client``'s multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before the
processes start, every counter and histogram is kept in a file there, and a scrape of any
process reports the sum over all of them (:func:`exposition`).  Gauges that read live state
(queue depths, spool bytes and age) cannot be read across processes at scrape time, so each
process writes their values into its file every :data:`REFRESH_S` (:meth:`AuditMetrics.watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "auditgate_"
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_S: Final = 1.0
"""How often a process writes its live gauges in multiprocess mode (their staleness bound)."""


def multiprocess() -> bool:
    """Whether metrics are shared between processes (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return bool(os.environ.get(MULTIPROCESS_ENV))


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry`` — or, in multiprocess mode, of every process (live
    gauges of processes that died without stopping are dropped first)."""
    if not multiprocess():
        return generate_latest(registry)
    forget_dead_processes(os.environ[MULTIPROCESS_ENV])
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # untyped in 0.26
    return generate_latest(merged)


def forget_dead_processes(directory: str) -> None:
    """Remove the live-gauge files (``gauge_live*_PID.db``) of processes that no longer exist:
    a worker that crashed never ran its ``mark_process_dead``, and its queue depth would stay in
    the sums.  Counters and histograms of dead processes are kept (they are totals)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = path[: -len(".db")].rpartition("_")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):  # another scrape removed it first
                os.remove(path)
        except PermissionError:
            continue  # alive, another user's


class AuditMetrics:
    """Counters and gauges of records, drops, writes and queues."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter(
            PREFIX + "audit_records_total",
            "Audit records published, by mode.",
            ["mode"],
            registry=r,
        )
        self.dropped = Counter(
            PREFIX + "audit_dropped_total",
            "Audit records a sink will never receive, by reason.",
            ["sink", "reason"],
            registry=r,
        )
        self.written = Counter(
            PREFIX + "audit_written_total", "Audit records a sink stored.", ["sink"], registry=r
        )
        self.sink_errors = Counter(
            PREFIX + "audit_sink_errors_total",
            "Failed sink writes (each retried).",
            ["sink"],
            registry=r,
        )
        self.incomplete = Counter(
            PREFIX + "audit_incomplete_total",
            "Records a sink stored as an incomplete marker, their bodies dropped, by reason "
            "(otel: payload_too_large).",
            ["sink", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            PREFIX + "audit_sink_rejected_total",
            "Records a sink's server accepted the batch of but said it rejected (OTLP partial "
            "success); the protocol forbids retrying them.",
            ["sink"],
            registry=r,
        )
        self.queue_depth = Gauge(
            PREFIX + "audit_queue_depth",
            "Records waiting in a sink's queue.",
            ["sink"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_bytes = Gauge(
            PREFIX + "audit_queue_bytes",
            "JSON bytes of the records a sink's in-memory queue holds (in durable mode, its "
            "in-memory tail of the spool).",
            ["sink"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.write_seconds = Histogram(
            PREFIX + "audit_sink_write_seconds",
            "Time one batch write took.",
            ["sink"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
            registry=r,
        )
        self.redactions = Counter(
            PREFIX + "audit_redactions_total",
            "Secrets and personal data replaced in records before any sink, by detector kind.",
            ["kind"],
            registry=r,
        )
        self.processing_seconds = Counter(
            PREFIX + "audit_processing_seconds_total",
            "Time the record-processing stage (redaction, integrity chain, handing records to "
            "the bus) ran on the event loop; divide by audit_records_total for the cost per "
            "record.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            PREFIX + "audit_spool_bytes",
            "Bytes in the durable spool.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.spool_oldest = Gauge(
            PREFIX + "audit_spool_oldest_undelivered_seconds",
            "Age of the oldest spooled record a sink has not stored yet (0 when caught up).",
            ["sink"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.spool_replayed = Counter(
            PREFIX + "audit_spool_replayed_total",
            "Records spooled before this start and delivered to a sink after it.",
            ["sink"],
            registry=r,
        )
        self.spool_corrupt = Counter(
            PREFIX + "audit_spool_corrupt_tails_total",
            "Torn or corrupt spool segment tails detected and cut at startup.",
            registry=r,
        )
        self.spool_cut_bytes = Counter(
            PREFIX + "audit_spool_cut_bytes_total",
            "Bytes cut off spool segments at startup (torn or corrupt frames).",
            registry=r,
        )
        self.spool_rejected = Counter(
            PREFIX + "audit_spool_rejected_total",
            "store:true requests refused with 503 because the durable spool was full.",
            registry=r,
        )
        self.spool_commits = Counter(
            PREFIX + "audit_spool_commits_total",
            "Group commits of the durable spool (one fdatasync each).",
            registry=r,
        )
        self.retention_deleted = Counter(
            PREFIX + "store_retention_deleted_total",
            "Records retention (DYN_AUDIT_RETENTION_DAYS) deleted from a store.",
            ["sink"],
            registry=r,
        )
        self.retention_partitions = Counter(
            PREFIX + "store_retention_partitions_dropped_total",
            "PostgreSQL day partitions retention dropped.",
            ["sink"],
            registry=r,
        )
        self.retention_refused = Counter(
            PREFIX + "store_retention_refused_total",
            "Retention runs a legal hold refused.",
            ["sink"],
            registry=r,
        )
        self.maintenance_errors = Counter(
            PREFIX + "store_maintenance_errors_total",
            "Failed store maintenance runs (retention, partitions made ahead); retried next run.",
            ["sink"],
            registry=r,
        )
        self._watched: list[tuple[Gauge, Callable[[], float]]] = []
        self._refresher: asyncio.Task[None] | None = None

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Report ``read()`` as the value of ``gauge`` (a gauge without labels, or one child).

        One process: ``read`` is called at each scrape.  Multiprocess mode: another process's
        scrape cannot call it, so the value is written now and then every :data:`REFRESH_S`
        while a bus runs (:meth:`start_refresh`).
        """
        if not multiprocess():
            gauge.set_function(read)
            return
        self._watched.append((gauge, read))
        gauge.set(read())

    def start_refresh(self) -> None:
        """Multiprocess mode: keep the watched gauges current (on the running event loop)."""
        if multiprocess() and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="audit-metrics-refresh"
            )

    async def stop_refresh(self) -> None:
        """Write the watched gauges one last time and stop refreshing them."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        self.refresh()

    def refresh(self) -> None:
        """Write every watched gauge's current value."""
        for gauge, read in self._watched:
            gauge.set(read())

    async def _refresh_forever(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(REFRESH_S)
