"""Sink backends, and the registry that builds them from settings.

Each backend lives in its own module and imports its client library (``asyncpg``, ``nats``)
inside that module, so :func:`build_sinks` imports a backend only when its name is configured:
a gateway that writes files never loads a database driver (nor ``opentelemetry-proto``,
``aiobotocore`` or ``pyarrow``).  The
three file/stream sinks use only the standard library and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.sink import Sink
from auditgate.config import AuditSettings
from auditgate.errors import ConfigError
from auditgate.sinks.jsonl import JsonlSink
from auditgate.sinks.jsonl_gz import JsonlGzSink
from auditgate.sinks.stderr import StderrSink

__all__ = ["SINK_BUILDERS", "JsonlGzSink", "JsonlSink", "StderrSink", "build_sinks"]


Builder = Callable[[AuditSettings, AuditMetrics | None], Sink]
"""Builds a sink from the settings; the metrics are for what a sink counts itself (otel)."""


def _stderr(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    return StderrSink()


def _jsonl(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    return JsonlSink(
        settings.output_path,
        buffer_bytes=settings.jsonl_buffer_bytes,
        flush_interval_ms=settings.jsonl_flush_interval_ms,
    )


def _jsonl_gz(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    return JsonlGzSink(
        settings.output_path,
        buffer_bytes=settings.jsonl_buffer_bytes,
        flush_interval_ms=settings.jsonl_flush_interval_ms,
        roll_bytes=settings.jsonl_gz_roll_bytes,
        roll_lines=settings.jsonl_gz_roll_lines,
        max_bytes=settings.jsonl_gz_max_bytes,
        max_age_s=settings.jsonl_gz_max_age_s,
    )


def _sqlite(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    from auditgate.sinks.sqlite import SqliteSink

    return SqliteSink(settings.sqlite_path, retention_days=settings.retention_days, metrics=metrics)


def _postgres(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    if settings.postgres_url is None:
        raise ConfigError("DYN_AUDIT_SINKS lists postgres but DYN_AUDIT_POSTGRES_URL is unset")
    from auditgate.sinks.postgres import PostgresSink

    return PostgresSink(
        settings.postgres_url.reveal(), retention_days=settings.retention_days, metrics=metrics
    )


def _nats(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    from auditgate.sinks.nats import NatsSink

    return NatsSink(settings.nats_url, settings.nats_subject, settings.nats_stream)


def _otel(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    from auditgate.sinks.otel import OtelSink

    return OtelSink(
        settings.otlp,
        max_payload_bytes=settings.otel_max_payload_bytes,
        metrics=metrics,
        output_format=settings.output_format,
    )


def _s3(settings: AuditSettings, metrics: AuditMetrics | None) -> Sink:
    from auditgate.sinks.s3 import S3Sink

    return S3Sink(settings.s3)


SINK_BUILDERS: Final[dict[str, Builder]] = {
    "stderr": _stderr,
    "jsonl": _jsonl,
    "jsonl_gz": _jsonl_gz,
    "sqlite": _sqlite,
    "postgres": _postgres,
    "nats": _nats,
    "otel": _otel,
    "s3": _s3,
}
"""Sink name (as in ``DYN_AUDIT_SINKS``) -> builder; a builder imports its backend when called."""


def build_sinks(settings: AuditSettings, metrics: AuditMetrics | None = None) -> list[Sink]:
    """One sink per name in ``settings.sinks``, in that order; nothing is opened yet.
    ``metrics``: the bus's, for what a sink counts itself (the otel sink's markers).  With
    ``DYN_AUDIT_FORMAT=dynamo-request-trace`` the line sinks write Dynamo's rows
    (:mod:`auditgate.sinks.trace_rows`).

    Raises :class:`ConfigError` for an unknown name or a sink whose settings are missing.
    """
    sinks: list[Sink] = []
    for name in settings.sinks:
        builder = SINK_BUILDERS.get(name)
        if builder is None:
            known = ", ".join(SINK_BUILDERS)
            raise ConfigError(f"DYN_AUDIT_SINKS: unknown sink {name!r}; expected some of {known}")
        sinks.append(builder(settings, metrics))
    if settings.output_format == "dynamo-request-trace":
        from auditgate.sinks.trace_rows import trace_rows

        return [trace_rows(sink) for sink in sinks]
    return sinks
