"""Usage over time: requests, tokens, errors and latency percentiles per time bucket.

Both stores answer :meth:`~auditgate.store.queries.Store.usage` with the same two statements
(built here), grouped in the database so only one row per bucket and model/tenant crosses the
wire, whatever the number of records:

- :func:`totals_sql`: per ``(bucket, model, tenant)``: requests, prompt and completion tokens,
  errors, cancellations.
- :func:`latency_sql`: per bucket, the nearest-rank 50th, 90th and 99th percentile of
  ``duration_ms`` and of ``ttft_ms`` (window functions: SQLite has no percentile aggregate).

Buckets are ``created_at`` floored to a multiple of ``bucket_ms`` (Unix ms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Final

from auditgate.store import rollups
from auditgate.store.queries import Dialect, Filter, Sql
from auditgate.store.schema import TABLE

PERCENTILES: Final = (50, 90, 99)
"""The latency percentiles :class:`Latency` holds."""
LATENCY_SAMPLE: Final = 50_000
"""Latency percentiles are ranked over at most about this many records: a range holding more
is sampled (:func:`sample_every`), as ranking is a sort, the page's dominant cost (a week of a
million records: three sorts of a million rows)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    """What one model did for one tenant in one bucket."""

    bucket: int
    """Start of the bucket (Unix ms)."""
    model: str
    tenant: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    """Records with ``status='error'``."""
    cancelled: int
    """Records with ``status='cancelled'`` (the client went away)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles of one bucket (ms; ``None`` when no record had the value)."""

    bucket: int
    duration: tuple[float | None, ...]
    """``duration_ms`` at each of :data:`PERCENTILES`."""
    ttft: tuple[float | None, ...]
    """``ttft_ms`` at each of :data:`PERCENTILES`."""


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """Usage of the records a :class:`~auditgate.store.queries.Filter` selects."""

    bucket_ms: int
    totals: list[Totals]
    """Ordered by bucket, then model, then tenant."""
    latency: list[Latency]
    """Ordered by bucket."""
    sample_every: int = 1
    """The percentiles ranked the records whose ``created_at`` (ms) is a multiple of this:
    1 is every record (see :func:`sample_every`)."""
    source: str = "records"
    """``records`` (:func:`totals_sql` and :func:`latency_sql`) or ``rollups``
    (:func:`rollup_statements`: percentiles are latency buckets' upper bounds)."""


def _bucket(bucket_ms: int) -> str:
    # An int literal, not a parameter: the expression appears twice in a statement, and
    # SQLite's ``?`` placeholders would then need the value twice.
    size = int(bucket_ms)
    if size <= 0:
        raise ValueError(f"bucket_ms must be > 0, not {bucket_ms}")
    return f"(created_at / {size}) * {size}"


def _condition(sql: Sql, where: Filter) -> str:
    return " AND ".join(sql.where(where)) or "TRUE"


def totals_sql(sql: Sql, where: Filter, bucket_ms: int) -> str:
    """The statement behind :attr:`Usage.totals`."""
    bucket = _bucket(bucket_ms)
    return (
        f"SELECT {bucket} AS bucket, model, tenant, count(*) AS requests, "
        "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
        "coalesce(sum(completion_tokens), 0) AS completion_tokens, "
        "sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, "
        "sum(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS cancelled "
        f"FROM {TABLE} WHERE {_condition(sql, where)} "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


def sample_every(totals: Iterable[Any]) -> int:
    """1 in how many records the percentiles rank, from the totals' rows: enough for about
    :data:`LATENCY_SAMPLE` of them.  The sample is the records of every k-th millisecond —
    deterministic, read from the usage index like the rest, and unrelated to latency."""
    records = sum(int(row[3]) for row in totals)
    return max(1, -(-records // LATENCY_SAMPLE))


def latency_sql(sql: Sql, where: Filter, bucket_ms: int, column: str, every: int = 1) -> str:
    """The statement behind one latency column of :attr:`Usage.latency`: rows
    ``(bucket, p50, p90, p99)`` of ``column``, over the records whose ``created_at`` is a
    multiple of ``every``."""
    assert column in ("duration_ms", "ttft_ms")
    sampled = f" AND created_at % {int(every)} = 0" if every > 1 else ""
    bucket = _bucket(bucket_ms)
    ranks = ", ".join(
        f"max(CASE WHEN rn = (n * {p} + 99) / 100 THEN v END) AS p{p}" for p in PERCENTILES
    )
    # One window (same partition, same order) for the rank and the bucket's size: the
    # database sorts the range once, not twice (half the time on SQLite).
    window = f"PARTITION BY {bucket} ORDER BY {column}"
    return (
        f"SELECT bucket, {ranks} FROM ("
        f"SELECT {bucket} AS bucket, {column} AS v, "
        f"row_number() OVER ({window}) AS rn, "
        f"count(*) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS n "
        f"FROM {TABLE} WHERE {_condition(sql, where)} AND {column} IS NOT NULL{sampled}"
        ") AS ranked GROUP BY bucket ORDER BY bucket"
    )


def usage_of(
    bucket_ms: int,
    totals: Iterable[Any],
    durations: Iterable[Any],
    ttfts: Iterable[Any],
    every: int = 1,
) -> Usage:
    """The :class:`Usage` of the rows the three statements returned."""
    ttft_of = {int(row[0]): tuple(_ms(v) for v in row[1:]) for row in ttfts}
    duration_of = {int(row[0]): tuple(_ms(v) for v in row[1:]) for row in durations}
    missing = tuple(None for _ in PERCENTILES)
    buckets = sorted(set(duration_of) | set(ttft_of))
    return Usage(
        bucket_ms,
        [
            Totals(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]))
            for r in totals
        ],
        [Latency(b, duration_of.get(b, missing), ttft_of.get(b, missing)) for b in buckets],
        every,
    )


def _ms(value: Any) -> float | None:
    return None if value is None else float(value)


# -- from the hourly rollups --------------------------------------------------------------------

Statement = tuple[str, str, list[Any]]
"""``(kind, SQL, parameters)`` of :func:`rollup_statements`; ``kind`` says how
:func:`usage_of_rollups` reads its rows: ``totals`` (the :func:`totals_sql` columns),
``histogram`` (``bucket, metric, latency bucket, count``) or ``values`` (``bucket, duration_ms,
ttft_ms``: raw rows of a partial hour)."""


def rollups_answer(where: Filter, bucket_ms: int) -> bool:
    """Whether :func:`rollup_statements` can answer ``where`` per ``bucket_ms``: the rollups
    are keyed by hour, model, tenant, endpoint and deletion only, so a filter on status, mode,
    metadata, text or one record, or a bucket that is not whole hours, needs the records."""
    return (
        where.since_ms is not None
        and where.until_ms is not None
        and bucket_ms > 0
        and bucket_ms % rollups.HOUR_MS == 0
        and where.requests_only
        and not where.stored_only
        and where.status is None
        and where.mode is None
        and not where.metadata
        and not (where.text and where.text.strip())
        and where.request_id is None
    )


def rollup_statements(dialect: Dialect, where: Filter, bucket_ms: int) -> list[Statement]:
    """The statements of :meth:`~auditgate.store.queries.Store.usage_rollups`: the window's
    whole hours from the rollups (grouped in the database: one row per bucket and model/tenant,
    and per bucket and latency bucket), and the partial hours at either end from the records —
    at most two hours of rows, whatever the window — so the numbers equal the records'.

    ``where`` must satisfy :func:`rollups_answer`."""
    if not rollups_answer(where, bucket_ms):
        raise ValueError("the rollups cannot answer this filter")
    assert where.since_ms is not None and where.until_ms is not None
    since, until = where.since_ms, where.until_ms
    first = -(-since // rollups.HOUR_MS) * rollups.HOUR_MS
    last = until // rollups.HOUR_MS * rollups.HOUR_MS
    statements: list[Statement] = []
    if first >= last:  # no whole hour: the records of the (short) window
        return _edge(dialect, where, bucket_ms, since, until)
    params: list[Any] = []

    def mark(value: Any) -> str:
        params.append(value)
        return "?" if dialect == "sqlite" else f"${len(params)}"

    clauses = [f"hour >= {mark(first)}", f"hour < {mark(last)}"]
    for column, value in (
        ("model", where.model),
        ("tenant", where.tenant),
        ("endpoint", where.endpoint),
    ):
        if value is not None:
            clauses.append(f"{column} = {mark(value)}")
    if where.live_only:
        clauses.append("NOT deleted")
    condition = " AND ".join(clauses)
    # Grouped per hour, in the order of the m010 read indexes, so the database streams them
    # instead of sorting every row of the range; the hours are summed into buckets here.
    sums = ", ".join(f"sum({c})" for c in rollups.TOTAL_COLUMNS)
    statements.append(
        (
            "totals",
            f"SELECT hour, model, tenant, {sums} FROM {rollups.TOTALS_TABLE} "
            f"WHERE {condition} GROUP BY hour, model, tenant",
            params,
        )
    )
    statements.append(
        _histogram(dialect, where, first, last)
        or (
            "histogram",
            f"SELECT hour, metric, bucket, sum(count) FROM {rollups.LATENCY_TABLE} "
            f"WHERE {condition} GROUP BY hour, metric, bucket",
            params,
        )
    )
    if since < first:
        statements += _edge(dialect, where, bucket_ms, since, first)
    if last < until:
        statements += _edge(dialect, where, bucket_ms, last, until)
    return statements


def _histogram(dialect: Dialect, where: Filter, first: int, last: int) -> Statement | None:
    """The latency histograms of the whole hours ``[first, last)`` from
    :data:`~auditgate.store.rollups.TENANT_LATENCY_TABLE` (per hour, or per hour and tenant),
    when the filter names no model or endpoint: one row per hour and latency bucket, read in
    its primary key's order, however many models, tenants and endpoints the hours hold."""
    if where.model is not None or where.endpoint is not None:
        return None
    params: list[Any] = [where.tenant is None, where.tenant or "", first, last]
    marks = (
        ["?"] * len(params) if dialect == "sqlite" else [f"${i + 1}" for i in range(len(params))]
    )
    deleted = " AND NOT deleted" if where.live_only else ""
    return (
        "histogram",
        f"SELECT hour, metric, bucket, sum(count) FROM {rollups.TENANT_LATENCY_TABLE} "
        f"WHERE all_tenants = {marks[0]} AND tenant = {marks[1]} AND hour >= {marks[2]} "
        f"AND hour < {marks[3]}{deleted} GROUP BY hour, metric, bucket",
        params,
    )


def _edge(
    dialect: Dialect, where: Filter, bucket_ms: int, since: int, until: int
) -> list[Statement]:
    """The records of ``[since, until)``: totals grouped in the database, latencies raw."""
    edge = dataclasses.replace(where, since_ms=since, until_ms=until)
    sql = Sql(dialect)
    totals = totals_sql(sql, edge, bucket_ms)
    values_sql = Sql(dialect)
    values = (
        f"SELECT {_bucket(bucket_ms)}, duration_ms, ttft_ms FROM {TABLE} "
        f"WHERE {_condition(values_sql, edge)} AND "
        "(duration_ms IS NOT NULL OR ttft_ms IS NOT NULL)"
    )
    return [("totals", totals, sql.params), ("values", values, values_sql.params)]


def usage_of_rollups(bucket_ms: int, results: Iterable[tuple[str, Iterable[Any]]]) -> Usage:
    """The :class:`Usage` of the rows of :func:`rollup_statements` (``(kind, rows)`` each).

    Percentiles are read from the merged histograms (:func:`auditgate.store.rollups.percentile`):
    each is the upper bound of the latency bucket holding the exact value, at most 9 % above it.
    """
    sums: dict[tuple[int, str, str | None], list[int]] = {}
    histograms: dict[int, dict[str, dict[int, int]]] = {}

    def count(at: int, metric: str, bucket: int, n: int) -> None:
        if n:
            per = histograms.setdefault(at, {"duration": {}, "ttft": {}})[metric]
            per[bucket] = per.get(bucket, 0) + n

    for kind, rows in results:
        for row in rows:
            at = int(row[0]) // bucket_ms * bucket_ms  # an hour of the rollups: its bucket
            if kind == "totals":
                tenant = row[2] if row[2] not in ("", None) else None
                total = sums.setdefault((at, str(row[1]), tenant), [0, 0, 0, 0, 0])
                for i in range(5):
                    total[i] += int(row[3 + i] or 0)
            elif kind == "histogram":
                count(at, str(row[1]), int(row[2]), int(row[3]))
            else:
                for metric, value in (("duration", row[1]), ("ttft", row[2])):
                    if value is not None:
                        count(at, metric, rollups.bucket_of(float(value)), 1)
    totals = [
        Totals(at, model, tenant, *values)
        for (at, model, tenant), values in sorted(
            sums.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
        )
        if values[0]
    ]
    latency = [
        Latency(
            at,
            tuple(rollups.percentile(per["duration"], p) for p in PERCENTILES),
            tuple(rollups.percentile(per["ttft"], p) for p in PERCENTILES),
        )
        for at, per in sorted(histograms.items())
    ]
    return Usage(bucket_ms, totals, latency, 1, "rollups")
