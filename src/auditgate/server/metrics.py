"""HTTP metrics of the gateway (DESIGN §8), on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from auditgate.audit.metrics import PREFIX

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class HttpMetrics:
    """Request counts by endpoint and status, request duration, time to first token."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            PREFIX + "http_requests_total",
            "HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request to the end of the response.",
            buckets=_LATENCY,
            registry=registry,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from request to the first streamed chunk.",
            buckets=_LATENCY,
            registry=registry,
        )
        self._children: dict[tuple[str, int], Counter] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        key = (endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, str(status))
        child.inc()
        self.duration.observe(seconds)


class PassThroughMetrics:
    """Requests proxied to the upstream untouched, by path label, method and status.

    Labels are bounded: the caller passes a path *label* (see
    :func:`~auditgate.server.passthrough.path_label`), never a raw path, and a method outside
    HTTP's usual ones counts as ``OTHER``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            PREFIX + "passthrough_requests_total",
            "Requests passed through to the upstream (not audited), by path label, method and "
            "status (499: the client went away).",
            ["path", "method", "status"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], Counter] = {}

    def observe(self, path: str, method: str, status: int) -> None:
        """Count one finished pass-through request."""
        key = (path, method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(path, method, str(status))
        child.inc()
