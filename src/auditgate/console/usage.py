"""The usage page's numbers: the store's aggregates (:mod:`auditgate.store.usage`) laid out as
chart series (one value per time bucket) and summary tables.

The charts are drawn in the browser by uPlot from :attr:`UsageView.charts`; the tables carry the
same totals for readers without JavaScript or a screen.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Final

from auditgate.store.queries import Filter, Store
from auditgate.store.rollups import HOUR_MS
from auditgate.store.usage import PERCENTILES, Usage, rollups_answer

DEFAULT_WINDOW_MS: Final = 24 * 3600 * 1000
"""The time range shown when the filter gives no start."""
TARGET_BUCKETS: Final = 60
_NICE_BUCKETS_MS: Final = tuple(
    s * 1000 for s in (1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
)


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One line of a summary table."""

    name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cancelled: int


@dataclasses.dataclass(frozen=True, slots=True)
class UsageView:
    """Everything the usage page shows."""

    since_ms: int
    until_ms: int
    bucket_ms: int
    by_model: list[Row]
    by_tenant: list[Row]
    charts: dict[str, Any]
    """Series for the browser: ``x`` (bucket starts, Unix s) and per chart its named series."""
    sample_every: int = 1
    """The latency percentiles' sample (:attr:`auditgate.store.usage.Usage.sample_every`)."""
    source: str = "records"
    """Where the numbers came from (:attr:`auditgate.store.usage.Usage.source`)."""


def bucket_for(span_ms: int) -> int:
    """The smallest nice bucket that cuts ``span_ms`` in at most :data:`TARGET_BUCKETS`; past
    the largest (a week), the fewest whole weeks that do: a range of centuries (the form takes
    years 1 to 9999) is still about :data:`TARGET_BUCKETS` points, not one per week of it
    (half a million: 120 MB and 3 s of work per request, 33 MB of chart data sent)."""
    for size in _NICE_BUCKETS_MS:
        if span_ms / size <= TARGET_BUCKETS:
            return size
    week = _NICE_BUCKETS_MS[-1]
    return -(-span_ms // (TARGET_BUCKETS * week)) * week


async def usage_view(store: Store, where: Filter, *, now_ms: int) -> UsageView:
    """The usage of ``where``'s records (the last day when it sets no start).

    Without an end, the range ends with the current UTC hour (nothing is stored after now), and
    without a start it is the 24 hours before that end: whole hours, which the rollups answer
    alone, however many records an hour holds."""
    until = where.until_ms if where.until_ms is not None else _hour_end(now_ms)
    since = where.since_ms if where.since_ms is not None else until - DEFAULT_WINDOW_MS
    where = dataclasses.replace(where, since_ms=since, until_ms=until, requests_only=True)
    bucket = bucket_for(max(until - since, 1))
    # The hourly rollups answer in milliseconds whatever the store's size; the records (a sort
    # of every row of the range) only where they cannot: a filter on status, mode, metadata or
    # text, or a window short enough (under ~15 h) for points finer than an hour.
    if rollups_answer(where, bucket):
        usage = await store.usage_rollups(where, bucket)
    else:
        usage = await store.usage(where, bucket)
    return UsageView(
        since,
        until,
        bucket,
        _rows(usage, "model"),
        _rows(usage, "tenant"),
        _charts(usage, since, until),
        usage.sample_every,
        usage.source,
    )


def _hour_end(ms: int) -> int:
    return ms - ms % HOUR_MS + HOUR_MS


def _rows(usage: Usage, by: str) -> list[Row]:
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for t in usage.totals:
        name = (t.model if by == "model" else t.tenant) or "(none)"
        for i, value in enumerate(
            (t.requests, t.prompt_tokens, t.completion_tokens, t.errors, t.cancelled)
        ):
            sums[name][i] += value
    return [Row(name, *values) for name, values in sorted(sums.items())]


def _charts(usage: Usage, since: int, until: int) -> dict[str, Any]:
    size = usage.bucket_ms
    first = since // size * size
    starts = list(range(first, until, size))
    index = {start: i for i, start in enumerate(starts)}
    n = len(starts)

    def series(key: str, value: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for t in usage.totals:
            i = index.get(t.bucket)
            if i is None:
                continue
            name = str(getattr(t, key) or "(none)")
            values = out.setdefault(name, [0.0] * n)
            values[i] += float(
                t.requests if value == "requests" else t.prompt_tokens + t.completion_tokens
            )
        return out

    requests = [0.0] * n
    errors = [0.0] * n
    cancelled = [0.0] * n
    for t in usage.totals:
        i = index.get(t.bucket)
        if i is not None:
            requests[i] += t.requests
            errors[i] += t.errors
            cancelled[i] += t.cancelled
    latency: dict[str, list[float | None]] = {f"p{p}": [None] * n for p in PERCENTILES}
    ttft: dict[str, list[float | None]] = {f"p{p}": [None] * n for p in PERCENTILES}
    for point in usage.latency:
        i = index.get(point.bucket)
        if i is None:
            continue
        for k, p in enumerate(PERCENTILES):
            latency[f"p{p}"][i] = point.duration[k]
            ttft[f"p{p}"][i] = point.ttft[k]
    return {
        "x": [start / 1000 for start in starts],
        "requests_by_model": series("model", "requests"),
        "tokens_by_model": series("model", "tokens"),
        "requests_by_tenant": series("tenant", "requests"),
        "tokens_by_tenant": series("tenant", "tokens"),
        "latency_ms": latency,
        "ttft_ms": ttft,
        "rates_pct": {
            "errors": [_pct(e, r) for e, r in zip(errors, requests, strict=True)],
            "cancelled": [_pct(c, r) for c, r in zip(cancelled, requests, strict=True)],
        },
    }


def _pct(part: float, whole: float) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 2)
