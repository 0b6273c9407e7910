"""`auditgate serve` with the s3 lake sink, driven by the openai SDK, writing to a real
S3-compatible server (moto's, on loopback); the lake read back by `auditgate export`, `verify`
and DuckDB; a server that is down costs counted drops in best effort and nothing in durable
mode."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import openai
import pytest

from auditgate.cli.main import main
from auditgate.sinks import lake
from tests.server.test_lifecycle import metric
from tests.support.gateway import Gateway, free_port, running_gateway
from tests.support.s3 import SECRET_KEY, MotoS3, aws_env, moto_s3

KEY = "lake-checkpoint-key"


def lake_env(endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "DYN_AUDIT_ENABLED": "1",
        "DYN_AUDIT_SINKS": "s3",
        "DYN_AUDIT_S3_BUCKET": bucket,
        "DYN_AUDIT_S3_PREFIX": "audit",
        "DYN_AUDIT_S3_BATCH_INTERVAL_MS": "100",
        **aws_env(endpoint),
        **extra,
    }


def ask(gateway: Gateway, count: int) -> dict[str, str]:
    """``count`` stored completions, alternating non-stream and stream: id -> content."""
    answers = {}
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        for i in range(count):
            body = {
                "model": "mock",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "store": True,
                "max_tokens": 8,
                "metadata": {"i": str(i)},
            }
            if i % 2 == 0:
                answer = client.chat.completions.create(**body)  # type: ignore[call-overload]
                answers[answer.id] = answer.choices[0].message.content
            else:
                chunks = list(client.chat.completions.create(**body, stream=True))  # type: ignore[call-overload]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                answers[chunks[0].id] = text
    return answers


def lake_records(server: MotoS3, bucket: str) -> list[dict[str, object]]:
    """Every record of every object of ``bucket`` (copies included)."""
    return [
        entry
        for key, body in server.objects(bucket).items()
        for entry in lake.decode(key, body)
        if isinstance(entry, dict)
    ]


def wait_for(gateway: Gateway, name: str, count: float, timeout: float = 60.0) -> float:
    """The s3 sink's counter ``name`` once it reached ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = metric(gateway.metrics(), name, sink="s3")
        if value >= count:
            return value
        time.sleep(0.1)
    raise AssertionError(gateway.metrics())


def wait_written(gateway: Gateway, count: float) -> float:
    """``audit_written_total{sink="s3"}`` once it reached ``count``."""
    return wait_for(gateway, "auditgate_audit_written_total", count)


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_stored_completions_land_in_the_lake_and_read_back(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unique: str,
    fmt: str,
) -> None:
    """What the SDK got is in the lake: `export` writes it back, `verify` finds every chain
    intact and sealed, and DuckDB queries the objects with their Hive partitions."""
    bucket = f"lake-{unique}"
    with moto_s3(tmp_path) as server:
        server.create_bucket(bucket)
        env = lake_env(
            server.endpoint,
            bucket,
            DYN_AUDIT_S3_FORMAT=fmt,
            DYN_AUDIT_INTEGRITY="1",
            DYN_AUDIT_INTEGRITY_KEY=KEY,
        )
        with running_gateway(env, log_dir=tmp_path) as gateway:
            answers = ask(gateway, 6)
        log = gateway.log()
        for name, value in {**aws_env(server.endpoint), "DYN_AUDIT_INTEGRITY_KEY": KEY}.items():
            monkeypatch.setenv(name, value)
        out = tmp_path / "raw.jsonl"
        capsys.readouterr()
        assert (
            main(["export", "--store", f"s3://{bucket}/audit", "--format", "raw", "-o", str(out)])
            == 0
        )
        assert main(["verify", f"s3://{bucket}/audit"]) == 0
        report = capsys.readouterr().out
        objects = server.objects(bucket)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    exported = [r for r in lines if r["mode"] == "full"]
    assert {
        r["response"]["id"]: r["response"]["choices"][0]["message"]["content"] for r in exported
    } == answers
    assert [r["metadata"]["i"] for r in exported] == [str(i) for i in range(6)]
    # raw is every record: the six, and the writer's final checkpoint
    assert [(r["mode"], r["metadata"].get("final")) for r in lines[6:]] == [("checkpoint", "true")]
    assert report.splitlines()[-1] == "intact"
    assert "(final)" in report
    assert SECRET_KEY not in log
    if fmt == "parquet":
        root = tmp_path / "lake"
        for key, body in objects.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(body)
        query = (
            "SELECT count(*), count(DISTINCT request_id), min(date) = max(date), "
            "sum(CAST(usage->>'$.total_tokens' AS INTEGER)) > 0 "
            f"FROM read_parquet('{root}/audit/**/*.parquet', hive_partitioning = true) "
            "WHERE mode = 'full'"
        )
        assert duckdb.sql(query).fetchall() == [(6, 6, True, True)]


def test_a_server_that_is_down_costs_counted_drops_in_best_effort(
    tmp_path: Path, unique: str
) -> None:
    """S3 down: requests are served, the s3 queue overflows into counted drops, and once it is
    up written + dropped == published and the lake holds what was written."""
    port, bucket, n = free_port(), f"lake-{unique}", 10
    env = lake_env(f"http://127.0.0.1:{port}", bucket, DYN_AUDIT_CAPACITY="2")
    with running_gateway(env, log_dir=tmp_path) as gateway:
        ask(gateway, n)
        text = gateway.metrics()
        dropped = metric(text, "auditgate_audit_dropped_total", sink="s3", reason="queue_full")
        assert dropped >= n - 3  # two queued, at most one batch in flight
        wait_for(gateway, "auditgate_audit_sink_errors_total", 1)
        with moto_s3(tmp_path, port) as server:
            server.create_bucket(bucket)
            written = wait_written(gateway, n - dropped)
            stored = lake_records(server, bucket)
        log = gateway.log()
    assert (written + dropped, len(stored)) == (n, written)
    assert "queue full" in log and SECRET_KEY not in log


def test_durable_mode_replays_every_record_once_the_server_is_up(
    tmp_path: Path, unique: str
) -> None:
    """Durable mode: with S3 down nothing is lost; once it is up every record is in the lake,
    once."""
    port, bucket = free_port(), f"lake-{unique}"
    env = lake_env(
        f"http://127.0.0.1:{port}",
        bucket,
        DYN_AUDIT_DURABILITY="durable",
        DYN_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
        DYN_AUDIT_CAPACITY="2",
    )
    with running_gateway(env, log_dir=tmp_path) as gateway:
        answers = ask(gateway, 8)
        wait_for(gateway, "auditgate_audit_sink_errors_total", 1)
        with moto_s3(tmp_path, port) as server:
            server.create_bucket(bucket)
            wait_written(gateway, 8)
            stored = lake_records(server, bucket)
        text = gateway.metrics()
    assert sorted(r["response"]["id"] for r in stored) == sorted(answers)  # type: ignore[index]
    assert metric(text, "auditgate_audit_dropped_total", sink="s3", reason="queue_full") == 0
