"""The audit process's socket frames and the metrics it mirrors into the gateway's registry."""

from __future__ import annotations

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.process import wire


def test_frames_split_wherever_the_bytes_are_cut() -> None:
    """Frames that arrive in pieces come out whole and in order."""
    data = wire.message(wire.ACK, [3, 2]) + wire.frame(wire.CAPTURE, b"x" * 300)
    reader = wire.Reader()
    got = []
    for cut in range(0, len(data), 7):
        got += [(kind, bytes(payload)) for kind, payload in reader.feed(data[cut : cut + 7])]
    expected = [(wire.ACK, wire.encoder.encode([3, 2])), (wire.CAPTURE, b"x" * 300)]
    assert expected == got


def test_the_mirror_adds_what_the_audit_process_counted() -> None:
    """Counters and histograms arrive as increases, gauges as values; two messages add up
    to the audit process's totals, and a restarted process counts from zero again."""
    helper, gateway = AuditMetrics(), AuditMetrics()
    mirror = wire.MetricsMirror(gateway.registry, gateway)
    gateway.dropped.labels("*", "audit_process_lost").inc(2)  # the gateway's own
    helper.written.labels("jsonl").inc(5)
    helper.write_seconds.labels("jsonl").observe(0.003)
    helper.queue_depth.labels("jsonl").set(7)
    mirror.apply(list(wire.samples(helper.registry).values()))
    helper.written.labels("jsonl").inc(1)
    helper.write_seconds.labels("jsonl").observe(0.3)
    helper.queue_depth.labels("jsonl").set(1)
    mirror.apply(list(wire.samples(helper.registry).values()))
    mirror.restart()
    fresh = AuditMetrics()
    fresh.written.labels("jsonl").inc(4)
    mirror.apply(list(wire.samples(fresh.registry).values()))

    def value(name: str, **labels: str) -> float | None:
        return gateway.registry.get_sample_value(name, labels)

    assert (
        value("auditgate_audit_written_total", sink="jsonl"),
        value("auditgate_audit_queue_depth", sink="jsonl"),
        value("auditgate_audit_dropped_total", sink="*", reason="audit_process_lost"),
    ) == (10.0, 1.0, 2.0)
    buckets = {
        le: value("auditgate_audit_sink_write_seconds_bucket", sink="jsonl", le=le)
        for le in ("0.0025", "0.005", "0.25", "0.5", "+Inf")
    }
    assert buckets == {"0.0025": 0.0, "0.005": 1.0, "0.25": 1.0, "0.5": 2.0, "+Inf": 2.0}
    assert round(value("auditgate_audit_sink_write_seconds_sum", sink="jsonl") or 0, 6) == 0.303
