"""The ``s3`` lake sink against a real S3-compatible server (moto's, on loopback)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest

from auditgate.audit.record import AuditRecord, Envelope, encode_record
from auditgate.config_s3 import S3Settings
from auditgate.errors import ConfigError, SinkError
from auditgate.sinks import lake
from auditgate.sinks.s3 import S3Sink
from tests.store.records import make_record, minimal_record, nul_record
from tests.support.gateway import free_port
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, moto_s3

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(autouse=True)
def _aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS variables, as a deployment sets them (the SDK reads them itself)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)


@pytest.fixture
def bucket(server: MotoS3, unique: str) -> str:
    name = f"lake-{unique}"
    server.create_bucket(name)
    return name


def settings(server: MotoS3, bucket: str, **changes: Any) -> S3Settings:
    base = S3Settings(bucket=bucket, prefix="audit", endpoint_url=server.endpoint)
    return dataclasses.replace(base, **changes)


async def write(sink_settings: S3Settings, *batches: Sequence[AuditRecord]) -> None:
    sink = S3Sink(sink_settings)
    await sink.open()
    try:
        for batch in batches:
            await sink.write([Envelope(record) for record in batch])
    finally:
        await sink.close()


def published(records: Sequence[AuditRecord]) -> list[dict[str, object]]:
    return [msgspec.json.decode(encode_record(record)) for record in records]


def rows(key: str, body: bytes) -> list[dict[str, object]]:
    """An object's records, read without the lake module: pyarrow or gzip directly."""
    if key.endswith(".jsonl.gz"):
        return [msgspec.json.decode(line) for line in gzip.decompress(body).splitlines()]
    table = pq.read_table(io.BytesIO(body)).to_pylist()
    out = []
    for row in table:
        record: dict[str, object] = {}
        for name, kind in lake.COLUMNS:
            value = row[name]
            if value is None and name in lake.OMITTED_WHEN_NULL:
                continue
            if kind == "json" and value is not None:
                value = msgspec.json.decode(value)
            if kind == "map" and value is not None:
                value = dict(value)
            record[name] = value
        out.append(record)
    return out


def test_columns_are_every_field_of_the_record() -> None:
    """The Parquet schema has one column per record field, in wire order."""
    assert [name for name, _ in lake.COLUMNS] == list(AuditRecord.__struct_fields__)


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
async def test_round_trip_every_field(server: MotoS3, bucket: str, fmt: str) -> None:
    """Every record comes back from its object as it was published, under the key of its
    first record."""
    records = [make_record(i) for i in range(4)] + [nul_record(4)]
    records += [minimal_record(5)]  # another writer, same hour: same object (batch order)
    await write(settings(server, bucket, format=fmt), records)
    objects = server.objects(bucket)
    ext = lake.EXTENSIONS[fmt]
    key = f"audit/date=2025-09-24/hour=18/writer-host-1_4242_9f3a61c2-000000000000{ext}"
    assert list(objects) == [key]
    assert rows(key, objects[key]) == published(records)
    assert server.head(bucket, key)["Metadata"] == {"auditgate-records": "6"}


async def test_objects_are_cut_by_hour_and_by_bytes(server: MotoS3, bucket: str) -> None:
    """A batch spanning two hours becomes one set of objects per hour, each holding at most
    batch_bytes of records."""
    base = make_record(0).created_at
    records = [make_record(i, created_at=base + (i // 3) * HOUR_MS) for i in range(6)]
    size = len(Envelope(records[0]).json) + 1
    await write(settings(server, bucket, batch_bytes=2 * size + 10), records)
    objects = server.objects(bucket)
    prefix = "audit/date=2025-09-24/hour="
    writer = "writer-host-1_4242_9f3a61c2-"
    assert {k: [r["seq"] for r in rows(k, v)] for k, v in objects.items()} == {
        f"{prefix}18/{writer}000000000000.parquet": [0, 1],
        f"{prefix}18/{writer}000000000002.parquet": [2],
        f"{prefix}19/{writer}000000000003.parquet": [3, 4],
        f"{prefix}19/{writer}000000000005.parquet": [5],
    }


async def test_a_batch_written_again_replaces_its_objects(server: MotoS3, bucket: str) -> None:
    """The bus's retry (or a durable replay) of a batch stores each record once."""
    records = [make_record(i) for i in range(3)]
    await write(settings(server, bucket), records, records)
    await write(settings(server, bucket), records)
    objects = server.objects(bucket)
    assert [[r["request_id"] for r in rows(k, v)] for k, v in objects.items()] == [
        [r.request_id for r in records]
    ]


async def test_a_big_object_is_a_multipart_upload(server: MotoS3, bucket: str) -> None:
    """An object over multipart_bytes goes up in parts and reads back whole."""
    noise = [os.urandom(700_000).hex() for _ in range(9)]  # ~12.6 MB, incompressible halves
    records = [make_record(i, metadata={"noise": noise[i]}) for i in range(9)]
    await write(settings(server, bucket, multipart_bytes=5 << 20), records)
    objects = server.objects(bucket)
    (key,) = objects
    assert rows(key, objects[key]) == published(records)
    assert len(objects[key]) > 5 << 20
    # A multipart object's ETag is the digest of its parts' digests, suffixed with their count.
    assert server.head(bucket, key)["ETag"].strip('"').endswith("-2")


@pytest.mark.parametrize(("sse", "key_id"), [("AES256", None), ("aws:kms", "alias/audit-lake")])
async def test_server_side_encryption_is_asked_for(
    server: MotoS3, bucket: str, sse: str, key_id: str | None
) -> None:
    """Every object is stored with the configured server-side encryption."""
    await write(settings(server, bucket, sse=sse, sse_kms_key_id=key_id), [make_record(0)])
    (key,) = server.objects(bucket)
    head = server.head(bucket, key)
    assert (head["ServerSideEncryption"], head.get("SSEKMSKeyId")) == (sse, key_id)


async def test_a_missing_bucket_is_a_config_error(server: MotoS3, unique: str) -> None:
    """A bucket that does not exist stops startup, naming it."""
    sink = S3Sink(settings(server, f"missing-{unique}"))
    with pytest.raises(ConfigError) as caught:
        await sink.open()
    assert str(caught.value) == f"s3 sink: bucket 'missing-{unique}' does not exist"


async def test_an_unreachable_server_is_not_a_startup_error(tmp_path: Path) -> None:
    """Nothing listening: the sink opens, and a write raises SinkError (the bus retries)."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    sink = S3Sink(S3Settings(bucket="lake", endpoint_url=endpoint))
    await sink.open()
    try:
        with pytest.raises(SinkError) as caught:
            await sink.write([Envelope(make_record(0))])
    finally:
        await sink.close()
    assert "EndpointConnectionError" in str(caught.value)
    assert SECRET_KEY not in str(caught.value) + repr(sink)


async def test_a_retry_uploads_only_the_objects_not_yet_stored(server: MotoS3, bucket: str) -> None:
    """A batch whose second object failed is written again without re-uploading the first."""
    uploads: list[str] = []

    class Flaky(S3Sink):
        async def _upload(self, client: Any, key: str, body: bytes, records: int) -> None:
            uploads.append(key)
            if len(uploads) == 2:
                raise OSError("connection reset by peer")
            await super()._upload(client, key, body, records)

    base = make_record(0).created_at
    batch = [Envelope(make_record(i, created_at=base + i * HOUR_MS)) for i in range(2)]
    sink = Flaky(settings(server, bucket))
    await sink.open()
    try:
        with pytest.raises(SinkError, match="connection reset by peer"):
            await sink.write(batch)
        await sink.write(batch)
    finally:
        await sink.close()
    first, second = sorted(server.objects(bucket))
    assert uploads == [first, second, second]
