"""Reading an s3 lake back (`auditgate export` / `verify` on s3://bucket/prefix), against a real
S3-compatible server: order, one copy per record, pruning and filters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from auditgate.audit.integrity import GENESIS, canonical, link
from auditgate.audit.record import AuditRecord, Envelope, Integrity
from auditgate.cli.main import main
from auditgate.config_s3 import S3Settings
from auditgate.errors import ConfigError
from auditgate.sinks.s3 import S3Sink
from auditgate.store.lake import parse_url
from tests.store.records import make_record, minimal_record
from tests.support.s3 import MotoS3, aws_env, moto_s3

HOUR_MS = 3_600_000
BASE = make_record(0).created_at  # 2025-09-24 18:xx UTC


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def bucket(server: MotoS3, unique: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in aws_env(server.endpoint).items():
        monkeypatch.setenv(name, value)
    name = f"lake-{unique}"
    server.create_bucket(name)
    return name


async def write(server: MotoS3, bucket: str, *batches: Sequence[AuditRecord]) -> None:
    sink = S3Sink(S3Settings(bucket=bucket, prefix="p", endpoint_url=server.endpoint))
    await sink.open()
    try:
        for batch in batches:
            await sink.write([Envelope(record) for record in batch])
    finally:
        await sink.close()


def export(bucket: str, tmp_path: Path, *flags: str, fmt: str = "raw") -> list[dict[str, object]]:
    out = tmp_path / "out.jsonl"
    argv = ["export", "--store", f"s3://{bucket}/p", "--format", fmt, "-o", str(out), *flags]
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_export_keeps_one_copy_in_time_order(server: MotoS3, bucket: str, tmp_path: Path) -> None:
    """A replay that started elsewhere stored records twice, across hours and writers: export
    writes each once, in (created_at, request_id) order."""
    a = [make_record(i, created_at=BASE + i * HOUR_MS // 2) for i in range(4)]
    b = [make_record(i, writer="host-2:7:feedface", created_at=BASE + 60_000 * i) for i in range(2)]
    asyncio.run(write(server, bucket, a[:3], a[1:], b))  # a[1], a[2] stored twice
    got = [r["request_id"] for r in export(bucket, tmp_path)]
    everything = sorted(a + b, key=lambda r: (r.created_at, r.request_id))
    assert got == [r.request_id for r in everything]


def test_since_until_and_filters(server: MotoS3, bucket: str, tmp_path: Path) -> None:
    """--since/--until select by creation time; --model,
    --tenant, --metadata and the stored-only rule of finetune apply as on a store."""
    records = [
        make_record(0, created_at=BASE),
        make_record(1, created_at=BASE + HOUR_MS, model="other"),
        make_record(2, created_at=BASE + HOUR_MS + 1, tenant="acme", metadata={"team": "b"}),
        make_record(3, created_at=BASE + 2 * HOUR_MS),
        minimal_record(4),
    ]
    asyncio.run(write(server, bucket, records))
    since, until = str(BASE + HOUR_MS), str(BASE + 2 * HOUR_MS)
    seqs = lambda rows: [r["seq"] for r in rows]  # noqa: E731
    assert seqs(export(bucket, tmp_path, "--since", since, "--until", until)) == [1, 2]
    assert seqs(export(bucket, tmp_path, "--model", "other")) == [1]
    assert seqs(export(bucket, tmp_path, "--tenant", "acme", "--metadata", "team=b")) == [2]
    assert len(export(bucket, tmp_path, fmt="finetune")) == 4  # not the usage_only one


def test_verify_reports_copies_as_duplicates(
    server: MotoS3, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record stored in two objects is a duplicate warning, not damage."""
    records: list[AuditRecord] = []
    prev = GENESIS
    for i in range(3):
        record = make_record(i)
        digest = link(prev, canonical(record))  # canonical() leaves integrity out
        record.integrity = Integrity(prev=prev, hash=digest)
        records.append(record)
        prev = digest
    asyncio.run(write(server, bucket, records[:2], records[1:]))
    assert main(["verify", "--live", "--json", f"s3://{bucket}/p"]) == 0
    report = json.loads(capsys.readouterr().out)
    findings = [(f["kind"], f["seq"]) for w in report["writers"] for f in w["findings"]]
    assert ("duplicate", 1) in findings and report["intact"] is True


def test_a_bad_url_is_a_config_error() -> None:
    """Only s3://bucket[/prefix] names a lake."""
    assert parse_url("s3://audit-lake/a/b/") == ("audit-lake", "a/b")
    with pytest.raises(ConfigError):
        parse_url("s3:///nobucket")
