"""Prometheus metrics of the audit pipeline (DESIGN §8), on a registry owned by the app.

No module-level metric objects: each gateway (and each test) builds its own
:class:`AuditMetrics` on its own :class:`CollectorRegistry`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "auditgate_"


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
        self.queue_depth = Gauge(
            PREFIX + "audit_queue_depth", "Records waiting in a sink's queue.", ["sink"], registry=r
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
            PREFIX + "audit_spool_bytes", "Bytes in the durable spool.", registry=r
        )
        self.spool_oldest = Gauge(
            PREFIX + "audit_spool_oldest_undelivered_seconds",
            "Age of the oldest spooled record a sink has not stored yet (0 when caught up).",
            ["sink"],
            registry=r,
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
