"""Usage rollups: per-hour aggregates kept as records are written, so ``stats`` never scans bodies.

Two tables (migration ``m006_rollups``), keyed by ``(hour, model, tenant, endpoint, deleted)``:
``hour`` is the start of the UTC hour of ``created_at`` (Unix ms), ``tenant`` is ``''`` for
records without one, ``deleted`` whether the stored-completions API has deleted the record.

- :data:`TOTALS_TABLE`: requests, prompt and completion tokens (the columns ``stats`` adds),
  errors and cancellations.
- :data:`LATENCY_TABLE`: per ``metric`` (``duration`` or ``ttft``) a histogram: how many records
  fell in each :func:`bucket_of` bucket.
- :data:`TENANT_LATENCY_TABLE` (migration ``m011_tenant_latency``): the same histograms summed
  over models and endpoints, per ``(tenant, hour, deleted)``, plus one set of rows per
  ``(hour, deleted)`` for all tenants together (``all_tenants`` true, ``tenant`` ``''``).  A
  page of a week then reads one histogram per hour (or per hour and tenant) instead of one per
  hour, model, tenant and endpoint, so what it reads stops growing once an hour holds more
  records than there are latency buckets (~30-70 for real latencies).

Contract: the rollups equal what the raw table holds.  Every writer keeps them in the same
transaction as its change, counting only what it changed: the stores' ``insert_rows`` adds the
rows actually inserted (not the replays ``ON CONFLICT`` skipped), the API's delete moves a
record from ``deleted = false`` to ``true``, retention removes the hours it deleted (it deletes
whole hours).  Integrity checkpoints are not requests and are not counted.

Latency buckets grow by 2^(1/8) (about 9 %) from 0.01 ms: a percentile read from them
(:func:`percentile`) is the upper bound of the bucket holding the exact nearest-rank value, at
most 9 % above it (0.01 ms for anything below 0.01 ms).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from auditgate.store.schema import COLUMN_NAMES, TABLE, Row, RowLike

TOTALS_TABLE: Final = "usage_rollups"
LATENCY_TABLE: Final = "usage_latency"
TENANT_LATENCY_TABLE: Final = "usage_latency_tenant"
TABLES: Final = (TOTALS_TABLE, LATENCY_TABLE, TENANT_LATENCY_TABLE)
"""Every rollup table; each has an ``hour`` column (retention deletes whole hours)."""
TENANT_KEY_COLUMNS: Final = ("all_tenants", "tenant", "hour", "metric", "bucket", "deleted")
"""The key of :data:`TENANT_LATENCY_TABLE`, in the order its reads group and filter."""
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
BUCKET_BASE_MS: Final = 0.01
BUCKETS_PER_DOUBLING: Final = 8
MAX_BUCKET: Final = 600
"""Anything beyond ~0.01 ms * 2^75 shares the last bucket."""
_INT64_MIN: Final = -(2**63)
KEY_COLUMNS: Final = ("hour", "model", "tenant", "endpoint", "deleted")
TOTAL_COLUMNS: Final = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled")
SOURCE_COLUMNS: Final = (
    "created_at",
    "model",
    "tenant",
    "endpoint",
    "mode",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "duration_ms",
    "ttft_ms",
)
"""The columns of a stored row the rollups are computed from."""
SOURCE_SQL: Final = ", ".join(SOURCE_COLUMNS)
_ROW_INDEX: Final = tuple(COLUMN_NAMES.index(c) for c in SOURCE_COLUMNS)

Key = tuple[int, str, str, str, bool]
"""``(hour, model, tenant, endpoint, deleted)``."""


def bucket_of(ms: float) -> int:
    """The latency bucket of ``ms``: 0 below 0.01 ms, then one per 2^(1/8) step."""
    if not ms >= BUCKET_BASE_MS:  # also NaN
        return 0
    if math.isinf(ms):
        return MAX_BUCKET
    return min(math.floor(math.log2(ms / BUCKET_BASE_MS) * BUCKETS_PER_DOUBLING) + 1, MAX_BUCKET)


def bucket_upper(bucket: int) -> float:
    """The upper bound (ms) of ``bucket``, rounded to a microsecond."""
    return round(BUCKET_BASE_MS * 2 ** (bucket / BUCKETS_PER_DOUBLING), 3)


def percentile(histogram: Mapping[int, int], p: float) -> float | None:
    """Nearest-rank ``p``-th percentile of a ``{bucket: count}`` histogram, as its bucket's upper
    bound; ``None`` when it is empty."""
    n = sum(histogram.values())
    if n <= 0:
        return None
    rank = max(math.ceil(p / 100 * n), 1)
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_upper(bucket)
    return bucket_upper(max(histogram))


@dataclasses.dataclass(slots=True)
class Delta:
    """Changes to the rollups, accumulated in memory, then applied in one statement per table."""

    totals: dict[Key, list[int]] = dataclasses.field(default_factory=dict)
    latency: dict[tuple[Key, str, int], int] = dataclasses.field(default_factory=dict)

    def add(self, values: Sequence[Any], *, deleted: bool = False, sign: int = 1) -> None:
        """Count (``sign=-1``: uncount) one row given as :data:`SOURCE_COLUMNS` values."""
        created_at, model, tenant, endpoint, mode, status, prompt, completion, duration, ttft = (
            values
        )
        if mode == "checkpoint":
            return
        # The hour of the earliest 64-bit times is below the range: clamp (the bigint column).
        hour = max(created_at - created_at % HOUR_MS, _INT64_MIN)
        key: Key = (hour, model, tenant or "", endpoint, deleted)
        total = self.totals.setdefault(key, [0, 0, 0, 0, 0])
        total[0] += sign
        total[1] += sign * (prompt or 0)
        total[2] += sign * (completion or 0)
        total[3] += sign * (status == "error")
        total[4] += sign * (status == "cancelled")
        for metric, value in (("duration", duration), ("ttft", ttft)):
            if value is not None:
                slot = (key, metric, bucket_of(value))
                self.latency[slot] = self.latency.get(slot, 0) + sign

    def add_rows(self, rows: Iterable[Row]) -> None:
        """Count sink rows (:data:`~auditgate.store.schema.COLUMNS` tuples)."""
        for row in rows:
            self.add([row[i] for i in _ROW_INDEX])

    def add_stored(self, row: RowLike, *, deleted: bool, sign: int = 1) -> None:
        """Count a fetched row holding :data:`SOURCE_COLUMNS`."""
        self.add([row[c] for c in SOURCE_COLUMNS], deleted=deleted, sign=sign)

    def totals_rows(self) -> list[tuple[Any, ...]]:
        """Parameters for :func:`upsert_totals_sql`."""
        return [(*key, *values) for key, values in self.totals.items() if any(values)]

    def latency_rows(self) -> list[tuple[Any, ...]]:
        """Parameters for :func:`upsert_latency_sql`."""
        return [(*key, metric, b, n) for (key, metric, b), n in self.latency.items() if n]

    def tenant_latency_rows(self) -> list[tuple[Any, ...]]:
        """Parameters for :func:`upsert_tenant_latency_sql`: :attr:`latency` summed over
        models and endpoints, per tenant and for all tenants (see :data:`TENANT_KEY_COLUMNS`)."""
        sums: dict[tuple[Any, ...], int] = {}
        for ((hour, _, tenant, _, deleted), metric, b), n in self.latency.items():
            for slot in (
                (False, tenant, hour, metric, b, deleted),
                (True, "", hour, metric, b, deleted),
            ):
                sums[slot] = sums.get(slot, 0) + n
        return [(*slot, n) for slot, n in sums.items() if n]


def deletion(rows: Iterable[RowLike]) -> Delta:
    """The change of the stored-completions API deleting ``rows`` (holding
    :data:`SOURCE_COLUMNS`): each moves from ``deleted = false`` to ``deleted = true``."""
    delta = Delta()
    for row in rows:
        delta.add_stored(row, deleted=False, sign=-1)
        delta.add_stored(row, deleted=True)
    return delta


def _marks(n: int, dialect: str) -> str:
    return ", ".join("?" if dialect == "sqlite" else f"${i}" for i in range(1, n + 1))


def upsert_totals_sql(dialect: str) -> str:
    """Adds one :meth:`Delta.totals_rows` row to :data:`TOTALS_TABLE` (``?`` or ``$n``)."""
    columns = (*KEY_COLUMNS, *TOTAL_COLUMNS)
    updates = ", ".join(f"{c} = {TOTALS_TABLE}.{c} + excluded.{c}" for c in TOTAL_COLUMNS)
    return (
        f"INSERT INTO {TOTALS_TABLE} ({', '.join(columns)}) VALUES "
        f"({_marks(len(columns), dialect)}) ON CONFLICT ({', '.join(KEY_COLUMNS)}) "
        f"DO UPDATE SET {updates}"
    )


def upsert_latency_sql(dialect: str) -> str:
    """Adds one :meth:`Delta.latency_rows` row to :data:`LATENCY_TABLE`."""
    columns = (*KEY_COLUMNS, "metric", "bucket", "count")
    keys = ", ".join((*KEY_COLUMNS, "metric", "bucket"))
    return (
        f"INSERT INTO {LATENCY_TABLE} ({', '.join(columns)}) VALUES "
        f"({_marks(len(columns), dialect)}) ON CONFLICT ({keys}) "
        f"DO UPDATE SET count = {LATENCY_TABLE}.count + excluded.count"
    )


def upsert_tenant_latency_sql(dialect: str) -> str:
    """Adds one :meth:`Delta.tenant_latency_rows` row to :data:`TENANT_LATENCY_TABLE`."""
    columns = (*TENANT_KEY_COLUMNS, "count")
    t = TENANT_LATENCY_TABLE
    return (
        f"INSERT INTO {t} ({', '.join(columns)}) VALUES ({_marks(len(columns), dialect)}) "
        f"ON CONFLICT ({', '.join(TENANT_KEY_COLUMNS)}) DO UPDATE SET count = {t}.count + "
        "excluded.count"
    )


def tenant_latency_sql(
    types: Mapping[str, str], *, include: str = "", after: str = ""
) -> list[str]:
    """``CREATE TABLE`` of :data:`TENANT_LATENCY_TABLE` and the statement filling it from
    :data:`LATENCY_TABLE` (the same counts, summed).  Reads are served by the primary key
    alone: ``include`` follows it (PostgreSQL ``INCLUDE (count)``), ``after`` follows the
    table (SQLite ``WITHOUT ROWID``)."""
    i, t, b = types["int"], types["text"], types["bool"]
    keys = ", ".join(TENANT_KEY_COLUMNS)
    create = (
        f"CREATE TABLE {TENANT_LATENCY_TABLE} (all_tenants {b} NOT NULL, tenant {t} NOT NULL, "
        f"hour {i} NOT NULL, metric {t} NOT NULL, bucket {i} NOT NULL, deleted {b} NOT NULL, "
        f"count {i} NOT NULL, PRIMARY KEY ({keys}){include}){after}"
    )
    groups = "hour, metric, bucket, deleted"
    fill = (
        f"INSERT INTO {TENANT_LATENCY_TABLE} ({keys}, count) "
        f"SELECT {_false(types)}, tenant, {groups}, sum(count) FROM {LATENCY_TABLE} "
        f"GROUP BY tenant, {groups} HAVING sum(count) <> 0 "
        f"UNION ALL SELECT {_true(types)}, '', {groups}, sum(count) FROM {LATENCY_TABLE} "
        f"GROUP BY {groups} HAVING sum(count) <> 0"
    )
    return [create, fill]


def _false(types: Mapping[str, str]) -> str:
    return "FALSE" if types["bool"] == "boolean" else "0"


def _true(types: Mapping[str, str]) -> str:
    return "TRUE" if types["bool"] == "boolean" else "1"


def tables_sql(types: Mapping[str, str]) -> list[str]:
    """``CREATE TABLE`` statements of both tables; ``types``: int, text, bool type names."""
    i, t, b = types["int"], types["text"], types["bool"]
    keys = f"hour {i} NOT NULL, model {t} NOT NULL, tenant {t} NOT NULL, endpoint {t} NOT NULL, "
    keys += f"deleted {b} NOT NULL"
    key_list = ", ".join(KEY_COLUMNS)
    totals = ", ".join(f"{c} {i} NOT NULL DEFAULT 0" for c in TOTAL_COLUMNS)
    return [
        f"CREATE TABLE {TOTALS_TABLE} ({keys}, {totals}, PRIMARY KEY ({key_list}))",
        f"CREATE TABLE {LATENCY_TABLE} ({keys}, metric {t} NOT NULL, bucket {i} NOT NULL, "
        f"count {i} NOT NULL, PRIMARY KEY ({key_list}, metric, bucket))",
    ]


BACKFILL_SQL: Final = f"SELECT {SOURCE_SQL}, deleted_at FROM {TABLE}"
"""Every stored row, for filling the rollups of a store written before them."""


GROUPS: Final = ("model", "tenant", "endpoint", "day")
"""What :func:`read_sql` can group by."""
_GROUP_SQL: Final = {
    "model": "model",
    "tenant": "tenant",
    "endpoint": "endpoint",
    "day": f"hour - (hour % {DAY_MS})",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Slice:
    """The rollups of one group (a model, a tenant, an endpoint or a UTC day) of the window."""

    key: str | None
    """The model, tenant (``None`` for records without one), endpoint, or day (ISO date)."""
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cancelled: int
    duration: dict[int, int]
    """``duration_ms`` histogram: ``{bucket: count}``."""
    ttft: dict[int, int]
    """``ttft_ms`` histogram."""


def read_sql(
    dialect: str,
    by: str,
    *,
    since_ms: int | None,
    until_ms: int | None,
    endpoint: str | None,
    include_deleted: bool,
) -> tuple[str, str, list[Any]]:
    """``(totals statement, latency statement, parameters)`` summing the rollups of the hours in
    ``[since_ms, until_ms)`` (both hour-aligned or ``None``) of ``endpoint`` (``None``: all) per
    group ``by`` (one of :data:`GROUPS`), in the database: what crosses the wire is one row per
    group (and latency bucket), however many hours and keys the window holds."""
    params: list[Any] = []
    clauses = ["TRUE" if dialect == "postgres" else "1"]

    def mark(value: Any) -> str:
        params.append(value)
        return "?" if dialect == "sqlite" else f"${len(params)}"

    if since_ms is not None:
        clauses.append(f"hour >= {mark(since_ms)}")
    if until_ms is not None:
        clauses.append(f"hour < {mark(until_ms)}")
    if endpoint is not None:
        clauses.append(f"endpoint = {mark(endpoint)}")
    if not include_deleted:
        clauses.append("NOT deleted")
    where = " AND ".join(clauses)
    group = _GROUP_SQL[by]
    sums = ", ".join(f"sum({c})" for c in TOTAL_COLUMNS)
    totals = f"SELECT {group} AS g, {sums} FROM {TOTALS_TABLE} WHERE {where} GROUP BY g"
    latency = (
        f"SELECT {group} AS g, metric, bucket, sum(count) FROM {LATENCY_TABLE} "
        f"WHERE {where} GROUP BY g, metric, bucket"
    )
    return totals, latency, params


def slices(
    by: str, totals: Iterable[Sequence[Any]], latency: Iterable[Sequence[Any]]
) -> list[Slice]:
    """The :class:`Slice` list of the rows :func:`read_sql`'s statements return."""
    histograms: dict[Any, dict[str, dict[int, int]]] = {}
    for group, metric, bucket, count in latency:
        if count:
            per = histograms.setdefault(group, {"duration": {}, "ttft": {}})
            per[metric][int(bucket)] = int(count)
    out = []
    for group, *sums in totals:
        if not sums[0]:
            continue
        per = histograms.get(group, {"duration": {}, "ttft": {}})
        requests, prompt, completion, errors, cancelled = (int(v) for v in sums)
        if by == "day":
            day = datetime.datetime.fromtimestamp(int(group) / 1000, tz=datetime.UTC)
            key: str | None = day.date().isoformat()
        else:
            key = str(group) if group != "" else None
        out.append(
            Slice(
                key,
                requests,
                prompt,
                completion,
                errors,
                cancelled,
                per["duration"],
                per["ttft"],
            )
        )
    return out
