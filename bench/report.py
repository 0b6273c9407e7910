"""Turn one run's rows into medians, ratios, target checks and the Markdown of ``RESULTS.md``.

Rows (as appended to ``bench/results.jsonl``) are of two kinds:

- ``"kind": "load"`` — one load generator result (see :mod:`bench.loadgen`) plus ``scenario``,
  ``system``, ``engine``, ``audit``, ``repeat``;
- ``"kind": "server"`` — one server run: ``scenario``, ``repeat``, ``error`` (a start failure, or
  ``null``) and ``delivery`` (the ``auditgate_audit_*`` counters at the end, or ``null``);
- ``"kind": "sink"`` — one sink micro-bench result (see :mod:`bench.sinks`).

Medians are over the repeats of one (scenario, stream, concurrency); ``on/off`` divides a
scenario's median req/s by the median of the same system and engine with ``audit=off``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

Row = dict[str, Any]
Key = tuple[str, bool, int]


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: Sequence[Row]) -> dict[Key, Row]:
    """Medians per (scenario, stream, concurrency), in first-seen order."""
    groups: dict[Key, list[Row]] = {}
    for row in rows:
        if row["kind"] == "load":
            groups.setdefault((row["scenario"], row["stream"], row["concurrency"]), []).append(row)
    summary: dict[Key, Row] = {}
    for key, group in groups.items():
        first = group[0]
        summary[key] = {
            "scenario": first["scenario"],
            "system": first["system"],
            "engine": first["engine"],
            "audit": first["audit"],
            "stream": first["stream"],
            "concurrency": first["concurrency"],
            "repeats": len(group),
            "errors": sum(r["errors"] for r in group),
            "requests": sum(r["requests"] for r in group),
            "client_cpu_util_max": max(r["client_cpu_util"] for r in group),
            **{
                field: median(r[field] for r in group)
                for field in (
                    "rps",
                    "latency_p50_ms",
                    "latency_p99_ms",
                    "ttft_p50_ms",
                    "ttft_p99_ms",
                    "server_cpu_ms_per_req",
                    "server_cpu_util",
                    "server_peak_rss_mb",
                )
            },
        }
    for row in summary.values():
        # The same scenario with audit off (same engine and endpoint).
        off_name = row["scenario"].replace(f"audit={row['audit']}", "audit=off", 1)
        off = summary.get((off_name, row["stream"], row["concurrency"]))
        ratio = None
        if off is not None and off["rps"] and row["rps"] is not None:
            ratio = row["rps"] / off["rps"]
        row["ratio_vs_off"] = ratio
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def load_table(summary: dict[Key, Row]) -> list[str]:
    """The main table: one line per (scenario, mode, concurrency), grouped by workload."""
    lines = [
        "| system | engine | audit | mode | conc | req/s | on/off | p50 ms | p99 ms "
        "| TTFT p50 | TTFT p99 | server CPU ms/req | server CPU use | peak RSS MB | errors |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = {key[0]: i for i, key in enumerate(summary)}
    rows = sorted(
        summary.values(),
        key=lambda r: (r["engine"], r["stream"], r["concurrency"], order[r["scenario"]]),
    )
    for r in rows:
        ratio = (
            ""
            if r["audit"] == "off"
            else _fmt(None if r["ratio_vs_off"] is None else 100 * r["ratio_vs_off"], 1) + " %"
        )
        lines.append(
            f"| {r['system']} | {r['engine']} | {r['audit']} "
            f"| {'stream' if r['stream'] else 'json'} | {r['concurrency']} "
            f"| {_fmt(r['rps'], 0)} | {ratio} "
            f"| {_fmt(r['latency_p50_ms'])} | {_fmt(r['latency_p99_ms'])} "
            f"| {_fmt(r['ttft_p50_ms'])} | {_fmt(r['ttft_p99_ms'])} "
            f"| {_fmt(r['server_cpu_ms_per_req'], 3)} | {_fmt(r['server_cpu_util'])} "
            f"| {_fmt(r['server_peak_rss_mb'], 0)} "
            f"| {r['errors']} |"
        )
    return lines


def server_table(rows: Sequence[Row]) -> list[str]:
    """Per scenario: start failures and audit delivery (published / written / dropped)."""
    lines = [
        "| scenario | runs | start errors | records published | written | dropped |",
        "|---|--:|---|--:|--:|--:|",
    ]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row["kind"] == "server":
            groups.setdefault(row["scenario"], []).append(row)
    for scenario, group in groups.items():
        errors = [r["error"].splitlines()[0] for r in group if r["error"]]
        deliveries = [r["delivery"] for r in group if r["delivery"]]

        def total(field: str, deliveries: list[Any] = deliveries) -> str:
            return str(sum(int(d[field]) for d in deliveries)) if deliveries else "–"

        lines.append(
            f"| {scenario} | {len(group)} | {'; '.join(errors) or '–'} "
            f"| {total('published')} | {total('written')} | {total('dropped')} |"
        )
    return lines


def sink_table(rows: Sequence[Row]) -> list[str]:
    """Sink micro-bench: records/s through the sink class next to the raw client rate."""
    sinks = [r for r in rows if r["kind"] == "sink"]
    if not sinks:
        return []
    lines = [
        "| sink | record bytes | sink records/s | raw records/s | sink / raw | note |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for r in sinks:
        share = None
        if r["sink_rps"] and r["raw_rps"]:
            share = 100 * r["sink_rps"] / r["raw_rps"]
        lines.append(
            f"| {r['sink']} | {r['record_bytes']} "
            f"| {_fmt(r['sink_rps'], 0)} | {_fmt(r['raw_rps'], 0)} "
            f"| {_fmt(share, 1)}{' %' if share is not None else ''} | {r.get('note') or ''} |"
        )
    return lines


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(summary: dict[Key, Row], rows: Sequence[Row]) -> list[str]:
    """The targets of issue 6 that this run can judge, each with its numbers and a verdict."""
    lines = ["| target | measured | verdict |", "|---|---|---|"]

    def get(scenario: str, stream: bool, conc: int) -> Row | None:
        return summary.get((scenario, stream, conc))

    for engine in ("mock", "openai"):
        for stream in (False, True):
            for conc in (16, 64):
                r = get(f"auditgate {engine} audit=jsonl", stream, conc)
                ratio = None if r is None else r["ratio_vs_off"]
                mode = "stream" if stream else "json"
                lines.append(
                    f"| audit on (jsonl) ≥ 97 % of off — {engine}, {mode}, c={conc} "
                    f"| {_fmt(None if ratio is None else 100 * ratio, 1)} % | "
                    f"{_check(None if ratio is None else ratio >= 0.97)} |"
                )
    for audit in ("off", "jsonl"):
        r = get(f"auditgate mock audit={audit}", True, 1)
        p50 = None if r is None else r["latency_p50_ms"]
        lines.append(
            f"| stream p50 < 5 ms at c=1, mock, audit={audit} | {_fmt(p50)} ms "
            f"| {_check(None if p50 is None else p50 < 5)} |"
        )
    for audit in ("off", "jsonl"):
        for stream, limit in ((False, 0.5), (True, 1.0)):
            cpus = [
                r["server_cpu_ms_per_req"]
                for conc in (1, 16, 64)
                if (r := get(f"auditgate openai audit={audit}", stream, conc)) is not None
                and r["server_cpu_ms_per_req"] is not None
            ]
            worst = max(cpus) if cpus else None
            mode = "stream" if stream else "json"
            lines.append(
                f"| openai engine CPU/req ≤ {limit} ms — {mode}, audit={audit} "
                "(worst of c=1/16/64) "
                f"| {_fmt(worst, 3)} ms | {_check(None if worst is None else worst <= limit)} |"
            )
    for engine in ("mock", "openai"):
        for stream in (False, True):
            for conc in (16, 64):
                chat = get(f"auditgate {engine} audit=jsonl", stream, conc)
                legacy = get(f"auditgate {engine} audit=jsonl /v1/completions", stream, conc)
                if chat is None or legacy is None:
                    continue
                ours, theirs = legacy["server_cpu_ms_per_req"], chat["server_cpu_ms_per_req"]
                ok = None if ours is None or not theirs else ours <= 1.2 * theirs
                mode = "stream" if stream else "json"
                lines.append(
                    f"| legacy completions CPU/req ≤ 120 % of chat's — {engine}, {mode}, "
                    f"c={conc}, audit=jsonl | {_fmt(ours, 3)} vs {_fmt(theirs, 3)} ms "
                    f"| {_check(ok)} |"
                )
    for peer in ("dynamo-0.7.1", "dynamo-1.6.1"):
        for stream in (False, True):
            for conc in (16, 64):
                ours = get("auditgate mock audit=stderr", stream, conc)
                theirs = get(f"{peer} mock audit=stderr", stream, conc)
                if ours is None or theirs is None:
                    continue
                ok = (
                    ours["rps"] is not None
                    and theirs["rps"] is not None
                    and ours["rps"] >= theirs["rps"]
                    and ours["latency_p99_ms"] is not None
                    and theirs["latency_p99_ms"] is not None
                    and ours["latency_p99_ms"] <= theirs["latency_p99_ms"]
                )
                mode = "stream" if stream else "json"
                lines.append(
                    f"| req/s ≥ and p99 ≤ {peer} (audit on, stderr) — {mode}, c={conc} "
                    f"| {_fmt(ours['rps'], 0)} vs {_fmt(theirs['rps'], 0)} req/s, "
                    f"{_fmt(ours['latency_p99_ms'])} vs {_fmt(theirs['latency_p99_ms'])} ms "
                    f"| {_check(ok)} |"
                )
    for r in rows:
        if r["kind"] == "sink" and r["sink_rps"] and r["raw_rps"]:
            share = r["sink_rps"] / r["raw_rps"]
            lines.append(
                f"| sink {r['sink']} ≥ 50 % of raw | {100 * share:.1f} % | {_check(share >= 0.5)} |"
            )
    return lines
