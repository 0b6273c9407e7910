"""``auditgate stats`` over both stores: totals and percentiles equal those over the records."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.cli.main import main
from auditgate.cli.stats import table
from auditgate.sinks.sqlite import SqliteSink
from auditgate.store.rollups import bucket_of, bucket_upper
from tests.cli.test_export import dataset, export, filled, minimal_record, sink_for, store_url
from tests.support.server import gateway

__all__ = ["filled", "store_url"]  # fixtures, imported for this module's tests


def exact_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return sorted(values)[math.ceil(p * len(values) / 100) - 1]


def summary(key: str, records: list[AuditRecord], *, exact: bool = True) -> dict[str, Any]:
    """The expected statistics of ``records``, computed from the records themselves; not
    ``exact``: percentiles as the upper bound of their rollup bucket."""
    durations = [r.duration_ms for r in records]
    ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]

    def nearest_rank(values: list[float], p: int) -> float | None:
        found = exact_rank(values, p)
        return found if exact or found is None else bucket_upper(bucket_of(found))

    return {
        "key": key,
        "requests": len(records),
        "prompt_tokens": sum((r.usage or {}).get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum((r.usage or {}).get("completion_tokens", 0) for r in records),
        "errors": sum(r.status == "error" for r in records),
        "p50_duration_ms": nearest_rank(durations, 50),
        "p95_duration_ms": nearest_rank(durations, 95),
        "p50_ttft_ms": nearest_rank(ttfts, 50),
        "p95_ttft_ms": nearest_rank(ttfts, 95),
    }


def key_of(record: AuditRecord, by: str) -> str:
    if by == "model":
        return record.model
    if by == "tenant":
        return record.tenant or "-"
    return datetime.datetime.fromtimestamp(record.created_at / 1000, datetime.UTC).strftime(
        "%Y-%m-%d"
    )


async def stats(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = await asyncio.to_thread(main, ["stats", "--store", url, "--json", *args])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "rollups"])
@pytest.mark.parametrize("by", ["model", "tenant", "day"])
async def test_groups_and_totals_equal_sums_over_records(
    filled: tuple[str, list[AuditRecord]], capsys: pytest.CaptureFixture[str], by: str, exact: bool
) -> None:
    """Every group's counts, tokens, errors and percentiles are those of its records (from the
    rollups: percentiles as their bucket's upper bound); the completion deleted through the API
    is left out."""
    url, records = filled
    keys = sorted({key_of(r, by) for r in records})
    expected = {
        "by": by,
        "since_ms": None,
        "until_ms": None,
        "source": "exact" if exact else "rollups",
        "groups": [
            summary(k, [r for r in records if key_of(r, by) == k], exact=exact) for k in keys
        ],
        "total": summary("total", records, exact=exact),
    }
    flags = ["--exact"] if exact else []
    assert (0, expected) == await stats(url, capsys, "--by", by, *flags)


async def test_time_range(
    filled: tuple[str, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--since/--until keep the records created in [since, until)."""
    url, _ = filled
    records = [r for r in dataset() if 1758740068003 <= r.created_at < 1758740068126]
    _, doc = await stats(url, capsys, "--since", "1758740068003", "--until", "1758740068126")
    assert summary("total", records) == doc["total"]


def test_table_layout() -> None:
    """The terminal table aligns one line per group, then a rule and the total."""
    row = {
        "requests": 1234,
        "prompt_tokens": 5,
        "completion_tokens": 6,
        "errors": 0,
        "p50_duration_ms": 1.25,
        "p95_duration_ms": 2.0,
        "p50_ttft_ms": None,
        "p95_ttft_ms": None,
    }
    doc = {"by": "model", "groups": [{"key": "mock", **row}], "total": {"key": "total", **row}}
    expected = [
        "model  requests  prompt tok  compl tok  errors  p50 ms  p95 ms  p50 ttft  p95 ttft",
        "-" * 82,
        "mock      1,234           5          6       0     1.2     2.0         -         -",
        "-" * 82,
        "total     1,234           5          6       0     1.2     2.0         -         -",
    ]
    assert expected == table(doc).splitlines()


def test_the_store_defaults_to_the_one_serve_writes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without --store or AUDITGATE_STORE_URL, stats reads ./auditgate.db, as serve writes it:
    a missing one is named (exit 2), an existing one is read (exit 0)."""
    for name in ("AUDITGATE_STORE_URL", "DYN_AUDIT_SQLITE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    code = main(["stats"])
    expected = "auditgate stats: SQLite store './auditgate.db' does not exist\n"
    assert (2, expected) == (code, capsys.readouterr().err)

    sink = SqliteSink("./auditgate.db")
    asyncio.run(sink.open())
    asyncio.run(sink.close())
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 0


async def test_integrity_checkpoints_are_not_requests(
    filled: tuple[str, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint record in the store seals the chain; stats does not count it as a request."""
    url, _ = filled
    checkpoint = minimal_record(99)
    checkpoint.mode = "checkpoint"  # type: ignore[assignment]
    sink = sink_for(url)
    await sink.open()
    await sink.write([Envelope(checkpoint)])
    await sink.close()
    _, doc = await stats(url, capsys, "--include-deleted")
    assert summary("total", dataset(), exact=False) == doc["total"]


def create_and_delete_one(env: dict[str, str]) -> list[tuple[str, int]]:
    """Through a gateway with ``env``: three stored completions, the second deleted through the
    API; ``(id, prompt tokens)`` of each."""
    with gateway(env, configured_sinks=True) as g:
        client = openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0)
        made = [
            client.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "q " * n}], store=True
            )
            for n in (1, 2, 3)
        ]
        deadline = time.monotonic() + 10
        while len(client.chat.completions.list().data) < len(made):
            assert time.monotonic() < deadline, "the store did not catch up"
            time.sleep(0.01)
        client.chat.completions.delete(made[1].id)
    return [(c.id, c.usage.prompt_tokens if c.usage else 0) for c in made]


async def test_deleted_completions_follow_one_rule_in_stats_and_export(
    store_url: str, workdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A completion deleted through the API is left out of both stats and export by default, and
    counted by both with --include-deleted: the numbers always describe the exported records."""
    env = {"DYN_AUDIT_ENABLED": "1"}
    if store_url.startswith("sqlite:///"):
        env.update(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=store_url[len("sqlite:///") :])
    else:
        env.update(DYN_AUDIT_SINKS="postgres", DYN_AUDIT_POSTGRES_URL=store_url)
    made = await asyncio.to_thread(create_and_delete_one, env)
    seen = []
    for flags in ([], ["--include-deleted"]):
        _, doc = await stats(store_url, capsys, *flags)
        _, lines = await export(store_url, workdir, "--format", "raw", *flags)
        seen.append(
            (
                (doc["total"]["requests"], doc["total"]["prompt_tokens"]),
                (len(lines), sum(line["usage"]["prompt_tokens"] for line in lines)),
                sorted(line["response"]["id"] for line in lines),
            )
        )
    expected = []
    for chosen in ([made[0], made[2]], made):
        counts = (len(chosen), sum(tokens for _, tokens in chosen))
        expected.append((counts, counts, sorted(rid for rid, _ in chosen)))
    assert expected == seen
