"""``auditgate export`` and ``stats`` over legacy completions and embeddings, end to end:
records made by the real gateway (SDK calls, the sqlite sink), read back by the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from auditgate.cli.main import main
from tests.support.server import audit_env, gateway

STORE = {"store": True}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A SQLite file or a fresh PostgreSQL database filled through the gateway (its sink);
    the answers the client received."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        env = audit_env(DYN_AUDIT_SINKS="sqlite", DYN_AUDIT_SQLITE_PATH=str(tmp_path / "store.db"))
    else:
        url = str(request.getfixturevalue("pg_dsn"))
        env = audit_env(DYN_AUDIT_SINKS="postgres", DYN_AUDIT_POSTGRES_URL=url)
    with gateway(env, configured_sinks=True) as g:
        sdk = openai.OpenAI(base_url=g.base_url, api_key="sk-test", max_retries=0)
        answers = {
            "pair": sdk.completions.create(
                model="mock", prompt=["First prompt", "Second"], n=2, echo=True, extra_body=STORE
            ),
            "tokens": sdk.completions.create(model="mock", prompt=[1, 2, 3], extra_body=STORE),
            "unstored": sdk.completions.create(model="mock", prompt="not stored"),
            "chat": sdk.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "hi"}], store=True
            ),
            "embedding": sdk.embeddings.create(model="mock", input=["x", "y"], extra_body=STORE),
            "embedding_usage": sdk.embeddings.create(model="mock", input="z"),
        }
        g.records(6)
    yield url, answers


def export(url: str, tmp_path: Path, *args: str) -> list[Any]:
    out = tmp_path / "out.jsonl"
    assert main(["export", "--store", url, "-o", str(out), *args]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_completions_export_as_prompt_completion_pairs(
    store: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """One pair per text prompt (its first choice, the echo taken off); token prompts and
    embeddings give none; chat records keep their format."""
    url, answers = store
    texts = {c.index: c.text for c in answers["pair"].choices}
    pairs = [
        {"prompt": "First prompt", "completion": texts[0].removeprefix("First prompt")},
        {"prompt": "Second", "completion": texts[2].removeprefix("Second")},
    ]
    assert export(url, tmp_path, "--format", "finetune", "--endpoint", "completions") == pairs
    evals = export(url, tmp_path, "--format", "eval", "--endpoint", "completions")
    assert evals == [{"input": p["prompt"], "reference": p["completion"]} for p in pairs]
    everything = export(url, tmp_path, "--format", "finetune")
    assert everything[:2] == pairs
    assert [set(line) for line in everything[2:]] == [{"messages"}]
    assert export(url, tmp_path, "--format", "finetune", "--endpoint", "embeddings") == []


def test_raw_export_keeps_every_record_of_an_endpoint(
    store: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """``raw`` has every record, embeddings included, and none holds a vector."""
    url, _ = store
    rows = export(url, tmp_path, "--format", "raw", "--endpoint", "embeddings")
    assert [r["mode"] for r in rows] == ["full", "usage_only"]
    assert [r["response"]["count"] for r in rows] == [2, 1]
    assert all(
        "embedding" not in json.dumps(r["response"]).replace("embedding.summary", "") for r in rows
    )


def test_stats_by_endpoint(
    store: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every endpoint counts, with its tokens; ``--endpoint`` keeps one."""
    url, answers = store
    assert main(["stats", "--store", url, "--json", "--by", "endpoint"]) == 0
    doc = json.loads(capsys.readouterr().out)
    groups = {g["key"]: g for g in doc["groups"]}
    assert {k: g["requests"] for k, g in groups.items()} == {
        "chat.completions": 1,
        "completions": 3,
        "embeddings": 2,
    }
    embedded = (
        answers["embedding"].usage.prompt_tokens + answers["embedding_usage"].usage.prompt_tokens
    )
    assert (groups["embeddings"]["prompt_tokens"], groups["embeddings"]["completion_tokens"]) == (
        embedded,
        0,
    )
    legacy = [answers[k].usage for k in ("pair", "tokens", "unstored")]
    assert groups["completions"]["completion_tokens"] == sum(u.completion_tokens for u in legacy)
    assert main(["stats", "--store", url, "--json", "--endpoint", "embeddings"]) == 0
    only = json.loads(capsys.readouterr().out)
    assert only["total"]["requests"] == 2


def test_verify_accepts_the_new_endpoints_records(tmp_path: Path) -> None:
    """With integrity on, a trail of legacy completions and embeddings (streams, summaries,
    redacted texts) verifies intact from the store, as chat's does."""
    path = tmp_path / "store.db"
    env = audit_env(
        DYN_AUDIT_SINKS="sqlite",
        DYN_AUDIT_SQLITE_PATH=str(path),
        DYN_AUDIT_INTEGRITY="1",
        DYN_AUDIT_REDACT="email",
    )
    with gateway(env, configured_sinks=True) as g:
        sdk = openai.OpenAI(base_url=g.base_url, api_key="sk-test", max_retries=0)
        for _ in sdk.completions.create(
            model="mock", prompt="to a@b.example", stream=True, n=2, extra_body=STORE
        ):
            pass
        sdk.embeddings.create(model="mock", input=["x@y.example", "z"], extra_body=STORE)
        sdk.embeddings.create(model="mock", input="plain")
        g.records(3, timeout=10)
    assert main(["verify", f"sqlite:///{path}"]) == 0
