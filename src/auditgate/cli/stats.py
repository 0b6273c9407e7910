"""``auditgate stats``: usage per model, tenant or day, from the store.

Every record counts, ``full`` and ``usage_only``, except integrity checkpoints and, unless
``--include-deleted`` is given, completions deleted through the API: the same rule, flag and
default as ``auditgate export``, so the numbers describe the records an export holds.  A deleted
completion's tokens were spent all the same: ``--include-deleted`` counts them (usage for
billing).  Per group: requests, prompt and completion tokens (records without usage add nothing),
errors (``status: "error"``), and p50/p95 of ``duration_ms`` and ``ttft_ms`` (nearest-rank
percentiles over the records that have the value; ``null`` when none has).  Days are UTC dates
of ``created_at``.  Every endpoint counts (chat, Responses, legacy completions, embeddings —
whose ``prompt_tokens`` are the tokens embedded); ``--by endpoint`` groups by it and
``--endpoint`` keeps one.  A table on a terminal, ``--json`` for machines.

By default the numbers come from the usage rollups the sinks keep as they write
(:mod:`auditgate.store.rollups`): milliseconds at any store size.  Counts and tokens are exact;
a percentile is the upper bound of the latency bucket holding it (at most 9 % above the exact
value).  ``--exact`` reads every row instead, and so does a window whose ``--since``/``--until``
is not on a whole UTC hour (the rollups are per hour); ``source`` in the output says which.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import math
import sys
from typing import Any, Final

from auditgate.cli.export import ENDPOINTS, add_store_options, store_url
from auditgate.errors import ConfigError, ServiceUnavailableError
from auditgate.store import rollups
from auditgate.store.queries import Filter
from auditgate.store.url import open_store

GROUPINGS: Final = ("model", "tenant", "day", "endpoint")
NO_TENANT: Final = "-"
"""Group key of records without a tenant (open mode)."""


@dataclasses.dataclass(slots=True)
class Group:
    """Running totals of one group."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    durations: list[float] = dataclasses.field(default_factory=list)
    ttfts: list[float] = dataclasses.field(default_factory=list)
    duration_buckets: dict[int, int] = dataclasses.field(default_factory=dict)
    """Histograms, when the group is read from the rollups (then the lists stay empty)."""
    ttft_buckets: dict[int, int] = dataclasses.field(default_factory=dict)

    def add(self, row: Any) -> None:
        self.requests += 1
        self.prompt_tokens += row["prompt_tokens"] or 0
        self.completion_tokens += row["completion_tokens"] or 0
        self.errors += row["status"] == "error"
        if row["duration_ms"] is not None:
            self.durations.append(row["duration_ms"])
        if row["ttft_ms"] is not None:
            self.ttfts.append(row["ttft_ms"])

    def add_slice(self, part: rollups.Slice) -> None:
        self.requests += part.requests
        self.prompt_tokens += part.prompt_tokens
        self.completion_tokens += part.completion_tokens
        self.errors += part.errors
        for mine, theirs in (
            (self.duration_buckets, part.duration),
            (self.ttft_buckets, part.ttft),
        ):
            for bucket, count in theirs.items():
                mine[bucket] = mine.get(bucket, 0) + count

    def summary(self, key: str) -> dict[str, Any]:
        def pick(values: list[float], buckets: dict[int, int], p: float) -> float | None:
            return rollups.percentile(buckets, p) if buckets else percentile(values, p)

        return {
            "key": key,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "errors": self.errors,
            "p50_duration_ms": pick(self.durations, self.duration_buckets, 50),
            "p95_duration_ms": pick(self.durations, self.duration_buckets, 95),
            "p50_ttft_ms": pick(self.ttfts, self.ttft_buckets, 50),
            "p95_ttft_ms": pick(self.ttfts, self.ttft_buckets, 95),
        }


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank ``p``-th percentile of ``values``; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def group_key(row: Any, by: str) -> str:
    if by == "model":
        return str(row["model"])
    if by == "endpoint":
        return str(row["endpoint"])
    if by == "tenant":
        return str(row["tenant"]) if row["tenant"] is not None else NO_TENANT
    day = datetime.datetime.fromtimestamp(row["created_at"] / 1000, tz=datetime.UTC)
    return day.date().isoformat()


def hour_aligned(where: Filter) -> bool:
    """Whether the rollups (per UTC hour) can answer for ``where``'s time window."""
    bounds = (where.since_ms, where.until_ms)
    return all(b is None or b % rollups.HOUR_MS == 0 for b in bounds)


async def collect(url: str, where: Filter, by: str, *, exact: bool = False) -> dict[str, Any]:
    """The statistics document: ``{"by", "since_ms", "until_ms", "source", "groups": [...],
    "total"}``; from the rollups unless ``exact`` or the window is not hour-aligned."""
    store = open_store(url, must_exist=True)
    await store.open()
    groups: dict[str, Group] = {}
    total = Group()
    source = "exact" if exact or not hour_aligned(where) else "rollups"
    try:
        if source == "rollups":
            parts = await store.rollups(
                by,
                where.since_ms,
                where.until_ms,
                endpoint=where.endpoint,
                include_deleted=not where.live_only,
            )
            for part in parts:
                key = part.key if part.key is not None else NO_TENANT
                groups.setdefault(key, Group()).add_slice(part)
                total.add_slice(part)
        else:
            async for row in store.scan(where):
                groups.setdefault(group_key(row, by), Group()).add(row)
                total.add(row)
    finally:
        await store.close()
    return {
        "by": by,
        "since_ms": where.since_ms,
        "until_ms": where.until_ms,
        "source": source,
        "groups": [groups[key].summary(key) for key in sorted(groups)],
        "total": total.summary("total"),
    }


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="requests, tokens, errors and latency from the store")
    add_store_options(p)
    p.add_argument("--by", choices=GROUPINGS, default="model", help="grouping (default: model)")
    p.add_argument("--endpoint", choices=ENDPOINTS, help="only records of this endpoint")
    p.add_argument("--json", action="store_true", help="JSON output (default on a pipe)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="read every row (exact percentiles; time grows with the store) instead of the "
        "hourly rollups",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    where = Filter(
        endpoint=args.endpoint,
        since_ms=args.since,
        until_ms=args.until,
        stored_only=False,
        live_only=not args.include_deleted,
        requests_only=True,
    )
    try:
        doc = asyncio.run(collect(store_url(args, "stats"), where, args.by, exact=args.exact))
    except (ConfigError, ServiceUnavailableError, OSError) as exc:
        print(f"auditgate stats: {exc}", file=sys.stderr)
        return 2
    if args.json or not sys.stdout.isatty():
        print(json.dumps(doc, indent=2))
    else:
        print(table(doc))
    return 0


_HEADERS: Final = (
    ("key", ""),
    ("requests", "requests"),
    ("prompt_tokens", "prompt tok"),
    ("completion_tokens", "compl tok"),
    ("errors", "errors"),
    ("p50_duration_ms", "p50 ms"),
    ("p95_duration_ms", "p95 ms"),
    ("p50_ttft_ms", "p50 ttft"),
    ("p95_ttft_ms", "p95 ttft"),
)


def table(doc: dict[str, Any]) -> str:
    """The statistics as an aligned text table, one line per group and a total line."""
    header = [doc["by"], *(title for _, title in _HEADERS[1:])]
    rows = [[_cell(g[name]) for name, _ in _HEADERS] for g in [*doc["groups"], doc["total"]]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
