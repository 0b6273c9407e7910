"""The stderr, jsonl and jsonl_gz sinks, and the sink registry."""

from __future__ import annotations

import errno
import gzip
import io
import json
import logging
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

import auditgate.sinks
from auditgate.audit.bus import AuditBus, Backoff
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import (
    AuditRecord,
    Envelope,
    ErrorInfo,
    Integrity,
    decode_record,
    encode_record,
)
from auditgate.audit.sink import BatchPolicy
from auditgate.config import AuditSettings, Secret
from auditgate.errors import ConfigError, SinkError
from auditgate.sinks import JsonlGzSink, JsonlSink, StderrSink, build_sinks
from auditgate.sinks import jsonl as jsonl_module
from auditgate.sinks import jsonl_gz as jsonl_gz_module


def full_record(seq: int) -> AuditRecord:
    """A record with every optional field set, and text that needs escaping."""
    return AuditRecord(
        request_id=f"0192f0c4-0000-7000-8000-{seq:012d}",
        requested_streaming=True,
        mode="full",
        model="my-model",
        usage={"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        request={
            "model": "my-model",
            "messages": [{"role": "user", "content": "line one\nline two \u2028 «ünïcødé» 🎉"}],
            "store": True,
            "stream": True,
            "x_unknown": {"kept": [1, 2.5, None]},
        },
        response={
            "id": f"chatcmpl-{seq}",
            "object": "chat.completion",
            "created": 1758740068,
            "model": "my-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '20\r\n\t"quoted"\\'},
                    "finish_reason": "stop",
                }
            ],
        },
        endpoint="chat.completions",
        transport="http",
        engine="openai",
        status="error",
        complete=False,
        error=ErrorInfo(type="api_error", message="upstream went away", status_code=502),
        created_at=1758740068123 + seq,
        completed_at=1758740068456 + seq,
        ttft_ms=12.5,
        duration_ms=333.1,
        tenant="team-a",
        metadata={"project": "p1", "k\nv": "v\u0000x"},
        client_request_id=f"client-{seq}",
        engine_response_id=f"upstream-{seq}",
        http_request_headers={"user-agent": "test/1.0", "authorization": "<redacted>"},
        writer="host-1:4242:9f3a61c2",
        seq=seq,
        integrity=Integrity(prev="0" * 64, hash=f"{seq:064x}"),
    )


def envelopes(start: int, count: int) -> list[Envelope]:
    return [Envelope(full_record(seq)) for seq in range(start, start + count)]


def records_of(batch: Sequence[Envelope]) -> list[AuditRecord]:
    return [e.record for e in batch]


def decode_lines(data: bytes) -> list[AuditRecord]:
    """Every line of ``data``, which must end with a newline, decoded."""
    assert data.endswith(b"\n")
    return [decode_record(line) for line in data.split(b"\n")[:-1]]


def gzip_members(data: bytes) -> list[bytes]:
    """The decompressed content of each gzip member of ``data``."""
    members: list[bytes] = []
    while data:
        decompressor = zlib.decompressobj(31)
        members.append(decompressor.decompress(data))
        assert decompressor.eof
        data = decompressor.unused_data
    return members


def segment_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class CountingStream(io.BytesIO):
    """A byte stream that counts write calls."""

    writes = 0

    def write(self, data: object) -> int:
        self.writes += 1
        return super().write(data)  # type: ignore[arg-type]


# --- stderr -------------------------------------------------------------------------------------


async def test_stderr_round_trips_every_field_one_write_per_batch() -> None:
    """Each batch is one write of one line per record, and the lines decode to the records."""
    stream = CountingStream()
    sink = StderrSink(stream)
    first, second = envelopes(0, 3), envelopes(3, 2)
    await sink.open()
    await sink.write(first)
    await sink.write(second)
    await sink.close()

    assert records_of(first + second) == decode_lines(stream.getvalue())
    assert stream.writes == 2


async def test_stderr_defaults_to_the_current_sys_stderr(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Without a stream, records go to whatever ``sys.stderr`` is when the write happens."""
    sink = StderrSink()
    batch = envelopes(0, 2)
    await sink.open()
    await sink.write(batch)
    await sink.close()

    assert b"".join(e.json + b"\n" for e in batch) == capsysbinary.readouterr().err


async def test_stderr_write_to_a_closed_stream_raises_sink_error() -> None:
    """A stream that fails turns into a SinkError the bus retries."""
    stream = io.BytesIO()
    stream.close()
    sink = StderrSink(stream)

    with pytest.raises(SinkError, match="stderr sink: write failed"):
        await sink.write(envelopes(0, 1))


# --- jsonl --------------------------------------------------------------------------------------


async def test_jsonl_round_trips_every_field_and_appends(tmp_path: Path) -> None:
    """Lines decode to the written records; a reopened sink appends after what is there."""
    path = tmp_path / "a" / "b" / "audit.jsonl"
    first, second = envelopes(0, 3), envelopes(3, 4)
    sink = JsonlSink(str(path))
    await sink.open()
    await sink.write(first)
    await sink.close()
    again = JsonlSink(str(path))
    await again.open()
    await again.write(second)
    await again.close()

    assert records_of(first + second) == decode_lines(path.read_bytes())


async def test_jsonl_batching_follows_buffer_and_interval(tmp_path: Path) -> None:
    """The bus groups about ``buffer_bytes`` of records, for at most the flush interval."""
    sink = JsonlSink(str(tmp_path / "x.jsonl"), buffer_bytes=64 << 10, flush_interval_ms=250)

    assert BatchPolicy(max_records=128, linger_s=0.25) == sink.batching


async def test_jsonl_writes_batches_larger_than_the_buffer_in_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch over ``buffer_bytes`` is written in chunks of whole lines, none over the limit."""
    path = tmp_path / "audit.jsonl"
    batch = envelopes(0, 5)
    line_size = len(batch[0].json) + 1
    chunks: list[bytes] = []
    real_write_all = jsonl_module.write_all

    def recording_write_all(fd: int, data: bytes) -> None:
        chunks.append(data)
        real_write_all(fd, data)

    monkeypatch.setattr(jsonl_module, "write_all", recording_write_all)
    sink = JsonlSink(str(path), buffer_bytes=2 * line_size + 1)
    await sink.open()
    await sink.write(batch)
    await sink.close()

    expected = [2, 2, 1]
    assert expected == [chunk.count(b"\n") for chunk in chunks]
    assert records_of(batch) == decode_lines(path.read_bytes())


async def test_jsonl_failed_write_leaves_no_broken_or_duplicate_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half-way through a line is rolled back, and the retry lands once."""
    path = tmp_path / "audit.jsonl"
    before, batch = envelopes(0, 2), envelopes(2, 4)
    sink = JsonlSink(str(path), buffer_bytes=1)  # one line per chunk
    await sink.open()
    await sink.write(before)
    real_write_all = jsonl_module.write_all
    calls = 0

    def disk_full_on_third_chunk(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(jsonl_module, "write_all", disk_full_on_third_chunk)
    with pytest.raises(SinkError, match="No space left on device"):
        await sink.write(batch)
    assert records_of(before) == decode_lines(path.read_bytes())

    await sink.write(batch)  # the bus's retry of the same batch
    await sink.close()

    assert records_of(before + batch) == decode_lines(path.read_bytes())


async def test_jsonl_retry_through_the_bus_delivers_each_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the bus, a failed batch is retried and the file holds every record exactly once."""
    path = tmp_path / "audit.jsonl"
    batch = envelopes(0, 6)
    real_write_all = jsonl_module.write_all
    failures = [OSError(errno.EIO, "I/O error")]

    def fail_once_mid_line(fd: int, data: bytes) -> None:
        if failures:
            os.write(fd, data[:10])
            raise failures.pop()
        real_write_all(fd, data)

    monkeypatch.setattr(jsonl_module, "write_all", fail_once_mid_line)
    metrics = AuditMetrics()
    sink = JsonlSink(str(path), flush_interval_ms=20)
    bus = AuditBus([sink], capacity=64, metrics=metrics, backoff=Backoff(initial_s=0.01))
    await bus.start()
    for e in batch:
        bus.publish(e)

    report = await bus.close(5.0)
    assert records_of(batch) == decode_lines(path.read_bytes())
    sample = metrics.registry.get_sample_value
    assert (
        report["jsonl"],
        sample("auditgate_audit_sink_errors_total", {"sink": "jsonl"}),
        sample("auditgate_audit_written_total", {"sink": "jsonl"}),
    ) == (0, 1.0, 6.0)


async def test_jsonl_cuts_an_incomplete_line_left_by_a_killed_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fragment without its newline at the end of the file is removed before appending."""
    path = tmp_path / "audit.jsonl"
    old, batch = envelopes(0, 1), envelopes(1, 2)
    fragment = old[0].json[:40]
    path.write_bytes(old[0].json + b"\n" + fragment)
    sink = JsonlSink(str(path))
    await sink.open()
    with caplog.at_level(logging.WARNING, logger="auditgate.sinks"):
        await sink.write(batch)
    await sink.close()

    assert records_of(old + batch) == decode_lines(path.read_bytes())
    assert [
        f"jsonl sink: removed an incomplete last line ({len(fragment)} bytes) from {path}, "
        "left by an interrupted writer"
    ] == [r.getMessage() for r in caplog.records]


async def test_jsonl_write_after_close_raises(tmp_path: Path) -> None:
    """A closed sink refuses writes with a SinkError instead of writing to a stale descriptor."""
    sink = JsonlSink(str(tmp_path / "audit.jsonl"))
    await sink.open()
    await sink.close()

    with pytest.raises(SinkError, match="closed sink"):
        await sink.write(envelopes(0, 1))


async def test_jsonl_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    """A path whose directory cannot be created fails ``open`` with a ConfigError."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    sink = JsonlSink(str(blocker / "sub" / "audit.jsonl"))

    with pytest.raises(ConfigError, match="cannot create directory"):
        await sink.open()


# --- jsonl_gz -----------------------------------------------------------------------------------


async def test_jsonl_gz_round_trips_every_field_one_member_per_batch(tmp_path: Path) -> None:
    """Each batch is one gzip member; the members decode to the records in order."""
    batches = [envelopes(0, 3), envelopes(3, 1), envelopes(4, 5)]
    sink = JsonlGzSink(str(tmp_path / "out" / "audit.jsonl"))
    await sink.open()
    for batch in batches:
        await sink.write(batch)
    await sink.close()

    segment = tmp_path / "out" / "audit.000001.jsonl.gz"
    expected = ["audit.000001.jsonl.gz"]
    assert expected == segment_names(tmp_path / "out")
    members = gzip_members(segment.read_bytes())
    assert [records_of(batch) for batch in batches] == [decode_lines(m) for m in members]


async def test_jsonl_gz_rolls_by_uncompressed_bytes(tmp_path: Path) -> None:
    """A segment is finished once it holds ``roll_bytes`` uncompressed bytes."""
    batch = envelopes(0, 5)
    two_lines = len(batch[0].json) + len(batch[1].json) + 2
    sink = JsonlGzSink(str(tmp_path / "audit"), roll_bytes=two_lines)
    await sink.open()
    for e in batch:
        await sink.write([e])
    await sink.close()

    names = segment_names(tmp_path)
    expected = ["audit.000001.jsonl.gz", "audit.000002.jsonl.gz", "audit.000003.jsonl.gz"]
    assert expected == names
    contents = [decode_lines(gzip.decompress((tmp_path / n).read_bytes())) for n in names]
    assert [records_of(batch[0:2]), records_of(batch[2:4]), records_of(batch[4:])] == contents


async def test_jsonl_gz_rolls_by_lines_without_splitting_a_batch(tmp_path: Path) -> None:
    """A segment is finished after ``roll_lines`` lines; a batch is never split across two."""
    sink = JsonlGzSink(str(tmp_path / "audit"), roll_lines=3)
    await sink.open()
    for e in envelopes(0, 7):
        await sink.write([e])
    await sink.write(envelopes(7, 4))
    await sink.write(envelopes(11, 1))
    await sink.close()

    names = segment_names(tmp_path)
    line_counts = [gzip.decompress((tmp_path / n).read_bytes()).count(b"\n") for n in names]
    assert [f"audit.{n:06d}.jsonl.gz" for n in range(1, 5)] == names
    # 3 | 3 | 1, then the batch of 4 joins that segment (5 >= 3: roll) | 1
    expected = [3, 3, 5, 1]
    assert expected == line_counts


async def test_jsonl_gz_numbering_continues_across_restarts(tmp_path: Path) -> None:
    """A new sink starts after the highest existing segment and never reopens an old one."""
    (tmp_path / "audit.000007.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    (tmp_path / "audit.000042.jsonl.gz.tmp").write_bytes(b"")
    (tmp_path / "other.000099.jsonl.gz").write_bytes(b"")
    first = JsonlGzSink(str(tmp_path / "audit.jsonl"), roll_lines=1)
    await first.open()
    await first.write(envelopes(0, 1))
    await first.write(envelopes(1, 1))
    await first.close()
    second = JsonlGzSink(str(tmp_path / "audit.jsonl"))
    await second.open()
    await second.write(envelopes(2, 1))
    await second.close()

    expected = [
        "audit.000007.jsonl.gz",
        "audit.000008.jsonl.gz",
        "audit.000009.jsonl.gz",
        "audit.000010.jsonl.gz",
        "audit.000042.jsonl.gz.tmp",
        "other.000099.jsonl.gz",
    ]
    assert expected == segment_names(tmp_path)
    assert gzip.decompress((tmp_path / "audit.000007.jsonl.gz").read_bytes()) == b"{}\n"
    assert records_of(envelopes(2, 1)) == decode_lines(
        gzip.decompress((tmp_path / "audit.000010.jsonl.gz").read_bytes())
    )


async def test_jsonl_gz_failed_write_is_rolled_back_and_retried_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member cut off by a failed write is truncated away; the retry appends it once."""
    before, batch = envelopes(0, 2), envelopes(2, 3)
    sink = JsonlGzSink(str(tmp_path / "audit"))
    await sink.open()
    await sink.write(before)
    real_write_all = jsonl_gz_module.write_all
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def fail_once_mid_member(fd: int, data: bytes) -> None:
        if failures:
            os.write(fd, data[: len(data) // 2])
            raise failures.pop()
        real_write_all(fd, data)

    monkeypatch.setattr(jsonl_gz_module, "write_all", fail_once_mid_member)
    with pytest.raises(SinkError, match="No space left on device"):
        await sink.write(batch)
    await sink.write(batch)
    await sink.close()

    segment = tmp_path / "audit.000001.jsonl.gz"
    result = subprocess.run(
        ["gzip", "-dc", str(segment)], capture_output=True, timeout=30, check=False
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert records_of(before + batch) == decode_lines(result.stdout)
    assert [records_of(before), records_of(batch)] == [
        decode_lines(m) for m in gzip_members(segment.read_bytes())
    ]


async def test_gzip_reads_a_segment_up_to_its_last_complete_member(tmp_path: Path) -> None:
    """``gzip -dc`` on a segment whose last member is cut off prints the complete members."""
    batches = [envelopes(0, 4), envelopes(4, 4), envelopes(8, 4)]
    sink = JsonlGzSink(str(tmp_path / "audit"))
    await sink.open()
    for batch in batches:
        await sink.write(batch)
    await sink.close()
    segment = tmp_path / "audit.000001.jsonl.gz"
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 40])  # the third member loses its tail and trailer

    result = subprocess.run(
        ["gzip", "-dc", str(segment)], capture_output=True, timeout=30, check=False
    )

    assert result.returncode == 1
    assert b"unexpected end of file" in result.stderr
    lines = result.stdout.split(b"\n")
    complete = [decode_record(line) for line in lines[:8]]
    assert records_of(batches[0] + batches[1]) == complete
    # gzip also prints what it could inflate of the cut member: a prefix of the third batch.
    assert b"\n".join(e.json for e in batches[2]).startswith(b"\n".join(lines[8:]))


_CHILD = """
import asyncio, sys
import msgspec
from auditgate.audit.record import Envelope, decode_record
from auditgate.sinks.jsonl_gz import JsonlGzSink

async def main(prefix, template, size):
    sink = JsonlGzSink(prefix)
    await sink.open()
    base = decode_record(template)
    seq = 0
    while True:
        batch = []
        for _ in range(size):
            record = msgspec.structs.replace(base, request_id=f"r-{seq:08d}", seq=seq)
            batch.append(Envelope(record))
            seq += 1
        await sink.write(batch)
        print(seq // size, flush=True)
        await asyncio.sleep(0.002)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_jsonl_gz_segment_of_a_killed_process_is_readable(tmp_path: Path) -> None:
    """After SIGKILL mid-segment, ``gzip -dc`` yields every batch the writer had completed."""
    size = 20
    template = encode_record(full_record(0)).decode()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "audit.jsonl"), template, str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        completed = 0
        while completed < 8:
            line = child.stdout.readline()
            assert line, child.stderr.read().decode() if child.stderr else "child exited"
            completed = int(line)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()

    assert segment_names(tmp_path) == ["audit.000001.jsonl.gz"]
    result = subprocess.run(
        ["gzip", "-dc", str(tmp_path / "audit.000001.jsonl.gz")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    # A clean stop between members exits 0; a member cut by the kill makes gzip exit 1 after
    # printing everything before it (and what it could inflate of the cut member).
    assert result.returncode in (0, 1), result.stderr
    if result.returncode == 1:
        assert b"unexpected end of file" in result.stderr
    complete_lines = result.stdout.split(b"\n")[:-1]
    got = [decode_record(line) for line in complete_lines]
    base = full_record(0)
    expected = [
        msgspec.structs.replace(base, request_id=f"r-{seq:08d}", seq=seq) for seq in range(len(got))
    ]
    assert expected == got
    assert len(got) >= completed * size


# --- registry -----------------------------------------------------------------------------------


def test_registry_builds_file_sinks_from_settings(tmp_path: Path) -> None:
    """Each configured name becomes its sink, in order, with the settings' parameters."""
    settings = AuditSettings(
        sinks=("jsonl_gz", "stderr", "jsonl"),
        output_path=str(tmp_path / "audit.jsonl"),
        jsonl_buffer_bytes=4096,
        jsonl_flush_interval_ms=250,
        jsonl_gz_roll_bytes=10_000,
        jsonl_gz_roll_lines=7,
    )
    gz, err, plain = build_sinks(settings)

    assert (JsonlGzSink, StderrSink, JsonlSink) == (type(gz), type(err), type(plain))
    assert isinstance(gz, JsonlGzSink) and isinstance(plain, JsonlSink)
    assert (str(tmp_path / "audit"), 10_000, 7, 4096) == (
        gz.prefix,
        gz.roll_bytes,
        gz.roll_lines,
        gz.buffer_bytes,
    )
    assert (str(tmp_path / "audit.jsonl"), 4096) == (plain.path, plain.buffer_bytes)
    assert BatchPolicy(max_records=8, linger_s=0.25) == plain.batching == gz.batching
    expected = ["jsonl_gz", "stderr", "jsonl"]
    assert expected == [s.name for s in (gz, err, plain)]


def test_registry_rejects_unknown_names_and_missing_postgres_url() -> None:
    """A name with no sink, postgres without a URL or s3 without a bucket, is a ConfigError at
    build time."""
    with pytest.raises(ConfigError, match="unknown sink 'kafka'"):
        build_sinks(AuditSettings(sinks=("stderr", "kafka")))
    with pytest.raises(ConfigError, match="DYN_AUDIT_POSTGRES_URL is unset"):
        build_sinks(AuditSettings(sinks=("postgres",)))
    with pytest.raises(ConfigError, match="DYN_AUDIT_S3_BUCKET is unset"):
        build_sinks(AuditSettings(sinks=("s3",)))


def test_sinks_package_exports() -> None:
    """``auditgate.sinks`` re-exports exactly its public names."""
    expected = ["JsonlGzSink", "JsonlSink", "SINK_BUILDERS", "StderrSink", "build_sinks"]
    assert expected == sorted(auditgate.sinks.__all__)
    assert all(hasattr(auditgate.sinks, name) for name in auditgate.sinks.__all__)


_PROBE = """
import json, sys
from auditgate.config import AuditSettings, Secret
from auditgate.sinks import build_sinks

names = tuple(sys.argv[1].split(","))
settings = AuditSettings(
    sinks=names,
    output_path=sys.argv[2] + "/audit.jsonl",
    sqlite_path=sys.argv[2] + "/audit.db",
    postgres_url=Secret("postgresql://postgres@127.0.0.1:5432/unused"),
)
sinks = build_sinks(settings)
print(json.dumps({
    "classes": [type(s).__module__ + "." + type(s).__name__ for s in sinks],
    "names": [s.name for s in sinks],
    "loaded": sorted(m for m in ("asyncpg", "nats") if m in sys.modules),
}))
"""


def probe(names: str, directory: Path) -> dict[str, object]:
    """Build ``names`` in a fresh interpreter; report classes and which drivers got imported."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, names, str(directory)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    value: dict[str, object] = json.loads(result.stdout)
    return value


def test_registry_imports_no_driver_for_file_sinks(tmp_path: Path) -> None:
    """Building stderr, jsonl and jsonl_gz imports neither asyncpg nor nats."""
    expected = {
        "classes": [
            "auditgate.sinks.stderr.StderrSink",
            "auditgate.sinks.jsonl.JsonlSink",
            "auditgate.sinks.jsonl_gz.JsonlGzSink",
        ],
        "names": ["stderr", "jsonl", "jsonl_gz"],
        "loaded": [],
    }
    assert expected == probe("stderr,jsonl,jsonl_gz", tmp_path)


@pytest.mark.parametrize(
    ("name", "cls", "loaded"),
    [
        ("sqlite", "auditgate.sinks.sqlite.SqliteSink", []),
        ("postgres", "auditgate.sinks.postgres.PostgresSink", ["asyncpg"]),
        # The NATS sink imports nats-py only when it opens its connection.
        ("nats", "auditgate.sinks.nats.NatsSink", []),
    ],
)
def test_registry_imports_each_driver_only_when_configured(
    tmp_path: Path, name: str, cls: str, loaded: list[str]
) -> None:
    """A backend's driver (and no other) is imported only when that backend is used."""
    expected = {"classes": [cls], "names": [name], "loaded": loaded}
    assert expected == probe(name, tmp_path)


def test_registry_passes_the_revealed_postgres_url() -> None:
    """The postgres builder hands the sink the DSN itself, not the Secret wrapper's repr."""
    seen: list[str] = []

    class FakePostgresSink:
        name = "postgres"

        def __init__(self, dsn: str, **options: object) -> None:
            seen.append(dsn)

    module = type(sys)("auditgate.sinks.postgres")
    module.PostgresSink = FakePostgresSink  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "auditgate.sinks.postgres", module)
        build_sinks(
            AuditSettings(sinks=("postgres",), postgres_url=Secret("postgresql://u:pw@h/db"))
        )

    expected = ["postgresql://u:pw@h/db"]
    assert expected == seen


async def test_file_sinks_sync_what_they_wrote_and_report_a_failed_segment_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync() (what the durable spool waits for before it forgets records) flushes the open
    file and, once, the directory naming it; a finished jsonl_gz segment whose fsync failed
    is reported by the next sync, not forgotten; a closed sink cannot sync."""
    synced: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def record(real: object) -> object:
        def call(fd: int) -> None:
            synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)  # type: ignore[operator]

        return call

    monkeypatch.setattr(os, "fdatasync", record(real_fdatasync))
    monkeypatch.setattr(os, "fsync", record(real_fsync))
    lines = JsonlSink(str(tmp_path / "lines" / "a.jsonl"))
    await lines.open()
    await lines.write(envelopes(0, 3))
    await lines.sync()
    await lines.sync()
    assert synced == ["a.jsonl", "lines", "a.jsonl"]
    await lines.close()
    with pytest.raises(SinkError, match="sync on a closed sink"):
        await lines.sync()

    synced.clear()
    gz = JsonlGzSink(str(tmp_path / "gz" / "audit"), roll_lines=2)
    await gz.open()
    await gz.write(envelopes(0, 1))
    await gz.sync()
    assert synced == ["audit.000001.jsonl.gz", "gz"]

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    await gz.write(envelopes(1, 1))  # two lines: the segment is finished, its fsync fails
    monkeypatch.setattr(os, "fsync", record(real_fsync))
    with pytest.raises(SinkError, match=r"fsync of finished segment .* failed"):
        await gz.sync()
    await gz.sync()  # reported once; nothing else is wrong
    await gz.close()
