"""Pipeline health from the gateway's own Prometheus metrics (the text ``/metrics`` serves).

Mounted in a gateway, the console reads that gateway's registry (every ``--workers`` process
summed, as ``/metrics`` does); stand-alone (``auditgate ui --metrics-url``) it fetches a gateway's
``/metrics``.  Either way the same text is parsed here, so the page shows what Prometheus would.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

_PREFIX: Final = "auditgate_audit_"


@dataclasses.dataclass(slots=True)
class SinkHealth:
    """One sink's numbers."""

    sink: str
    written: float = 0.0
    queue_depth: float = 0.0
    queue_bytes: float = 0.0
    errors: float = 0.0
    oldest_undelivered_s: float | None = None
    """Age of the oldest spooled record the sink has not stored (durable mode only)."""
    dropped: dict[str, float] = dataclasses.field(default_factory=dict)
    """Records dropped, by reason."""

    @property
    def dropped_total(self) -> float:
        return sum(self.dropped.values())


@dataclasses.dataclass(slots=True)
class Health:
    """The audit pipeline's state."""

    records: dict[str, float]
    """Records published, by mode."""
    sinks: list[SinkHealth]
    """Per sink (the spool's own drops under ``spool``), by name."""
    spool_bytes: float | None
    """Bytes in the durable spool (``None``: not durable)."""


def parse_health(text: str) -> Health:
    """The :class:`Health` in a Prometheus exposition."""
    records: dict[str, float] = {}
    sinks: dict[str, SinkHealth] = {}
    spool: float | None = None

    def sink(name: str) -> SinkHealth:
        return sinks.setdefault(name, SinkHealth(name))

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.startswith(_PREFIX):
                continue
            metric = name[len(_PREFIX) :]
            if metric == "records_total":
                records[labels.get("mode", "")] = value
            elif metric == "spool_bytes":
                spool = value
            elif "sink" not in labels:
                continue
            elif metric == "written_total":
                sink(labels["sink"]).written = value
            elif metric == "queue_depth":
                sink(labels["sink"]).queue_depth = value
            elif metric == "queue_bytes":
                sink(labels["sink"]).queue_bytes = value
            elif metric == "sink_errors_total":
                sink(labels["sink"]).errors = value
            elif metric == "spool_oldest_undelivered_seconds":
                sink(labels["sink"]).oldest_undelivered_s = value
            elif metric == "dropped_total":
                sink(labels["sink"]).dropped[labels.get("reason", "")] = value
    return Health(records, [sinks[k] for k in sorted(sinks)], spool)
