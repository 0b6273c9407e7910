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

from auditgate.store.queries import Filter, Sql
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
