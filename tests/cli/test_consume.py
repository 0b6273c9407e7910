"""``auditgate consume`` as a process: real NATS, real targets (jsonl, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import asyncpg
import nats
import pytest

from auditgate.audit.record import AuditRecord, Envelope
from auditgate.cli.consume import main as consume_main
from auditgate.consumer import jsonl_path
from auditgate.sinks.nats import NatsSink
from auditgate.sinks.sqlite import SqliteSink
from auditgate.store.schema import TABLE
from tests.store.records import make_record, read_postgres, read_sqlite
from tests.support.nats import NatsServer, clean_env, consume_command, start_consume

T = TypeVar("T")


async def publish(nats_url: str, stream: str, subject: str, records: Sequence[AuditRecord]) -> None:
    """Publish ``records`` through the gateway's own NATS sink."""
    sink = NatsSink(nats_url, subject, stream)
    await sink.open()
    try:
        await sink.write([Envelope(record) for record in records])
    finally:
        await sink.close()


async def wait_until(probe: Callable[[], Awaitable[T]], expected: T, timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns ``expected`` (or the timeout); returns the last value."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await probe()
    return value


async def wait_for_more(probe: Callable[[], Awaitable[int]], floor: int, log: str = "") -> int:
    """Poll ``probe`` until it exceeds ``floor``; AssertionError after 30 seconds."""
    deadline = time.monotonic() + 30
    while (value := await probe()) <= floor:
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.02)
    return value


def jsonl_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


async def jsonl_count(path: Path) -> int:
    return len(jsonl_lines(path))


async def sqlite_count(path: Path) -> int:
    return len(read_sqlite(str(path))) if path.exists() else 0


async def pg_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
    finally:
        await conn.close()


async def consumer_state(nats_url: str, stream: str, durable: str) -> tuple[int, int, int]:
    """(ack floor stream seq, records still to deliver, delivered but unacked) of a durable."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
    finally:
        await nc.close()
    return info.ack_floor.stream_seq, info.num_pending, info.num_ack_pending


async def unacked(nats_url: str, stream: str) -> int:
    return (await consumer_state(nats_url, stream, "d1"))[2]


def consume_args(nats_url: str, names: tuple[str, str], durable: str, to: str) -> list[str]:
    stream, subject = names
    args = ["--nats-url", nats_url, "--stream", stream, "--subject", subject]
    return [*args, "--durable", durable, "--to", to, "--fetch-wait", "0.2"]


def by_seq(records: Sequence[AuditRecord]) -> list[AuditRecord]:
    return sorted(records, key=lambda r: r.seq)


async def test_jsonl_target_gets_the_published_bytes(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """N records in the stream become exactly N lines, each the published line byte for byte."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(300)]
    await publish(nats_url, stream, subject, records)
    out = tmp_path / "out.jsonl"
    consumer = start_consume(
        consume_args(nats_url, nats_names, "d1", f"jsonl:///{out}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: jsonl_count(out), 300)
    finally:
        code = consumer.stop()
    assert code == 0
    assert jsonl_lines(out) == [Envelope(r).json for r in records]
    assert consumer.summary() == {
        "written": 300,
        "invalid": 0,
        "redelivered": 0,
        "errors": 0,
        "batches": consumer.summary()["batches"],
        "dynamo": 0,
    }
    assert await consumer_state(nats_url, stream, "d1") == (300, 0, 0)


async def test_sqlite_target_round_trips(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """Records consumed into SQLite read back equal to the published ones."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(120)]
    await publish(nats_url, stream, subject, records)
    db = tmp_path / "store.db"
    consumer = start_consume(
        consume_args(nats_url, nats_names, "d1", f"sqlite:///{db}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: sqlite_count(db), 120)
    finally:
        assert consumer.stop() == 0
    assert read_sqlite(str(db)) == records


async def test_postgres_target_round_trips(
    nats_url: str, nats_names: tuple[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """Records consumed into PostgreSQL read back equal to the published ones."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(120)]
    await publish(nats_url, stream, subject, records)
    consumer = start_consume(consume_args(nats_url, nats_names, "d1", pg_dsn), log_dir=tmp_path)
    try:
        await wait_until(lambda: pg_count(pg_dsn), 120)
    finally:
        assert consumer.stop() == 0
    assert await read_postgres(pg_dsn) == records


async def test_two_consumers_share_the_work(
    nats_url: str, nats_names: tuple[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """Two processes on one durable split the records between them; the target has each once."""
    stream, subject = nats_names
    args = [*consume_args(nats_url, nats_names, "shared", pg_dsn), "--batch", "10"]
    first = start_consume(args, log_dir=tmp_path, name="first")
    second = start_consume(args, log_dir=tmp_path, name="second")
    records = [make_record(i) for i in range(400)]
    try:
        for start in range(0, 400, 40):
            await publish(nats_url, stream, subject, records[start : start + 40])
            await asyncio.sleep(0.02)
        await wait_until(lambda: pg_count(pg_dsn), 400)
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0)
    assert by_seq(await read_postgres(pg_dsn)) == records
    written = (first.summary()["written"], second.summary()["written"])
    assert sum(written) == 400
    assert min(written) > 0, written


async def test_replay_of_committed_records_adds_nothing(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """Records already committed by a consumer that died before acking are replayed, not doubled."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(200)]
    await publish(nats_url, stream, subject, records)
    db = tmp_path / "store.db"
    # The state a consumer killed between commit and ack leaves behind.
    sink = SqliteSink(str(db))
    await sink.open()
    await sink.write([Envelope(r) for r in records[:80]])
    await sink.close()
    consumer = start_consume(
        consume_args(nats_url, nats_names, "d1", f"sqlite:///{db}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (200, 0, 0))
    finally:
        assert consumer.stop() == 0
    assert read_sqlite(str(db)) == records
    assert consumer.summary()["written"] == 200


async def test_sigkill_then_restart_leaves_no_gap_or_duplicate(
    nats_url: str, nats_names: tuple[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """A consumer killed mid-stream and a successor on the same durable store every record once."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(600)]
    args = [*consume_args(nats_url, nats_names, "d1", pg_dsn), "--batch", "5", "--ack-wait", "1"]
    killed = start_consume(args, log_dir=tmp_path, name="killed")
    try:
        await publish(nats_url, stream, subject, records)
        assert await wait_for_more(lambda: pg_count(pg_dsn), 0) < 600
    finally:
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    stored_by_killed = await pg_count(pg_dsn)
    successor = start_consume(args, log_dir=tmp_path, name="successor")
    try:
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (600, 0, 0))
    finally:
        assert successor.stop() == 0
    assert by_seq(await read_postgres(pg_dsn)) == records
    assert await consumer_state(nats_url, stream, "d1") == (600, 0, 0)
    # Either the killed process had a batch in flight, which came back to the successor (a
    # replay really happened), or the kill fell between two batches (seen under load) and the
    # successor wrote exactly the rest.  Which one depends on where SIGKILL lands.
    summary = successor.summary()
    if summary["redelivered"] == 0:
        assert summary["written"] == len(records) - stored_by_killed
    else:
        assert summary["written"] >= len(records) - stored_by_killed


async def test_sigterm_finishes_the_current_batch(
    nats_url: str, nats_names: tuple[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """SIGTERM during a write: the batch is committed and acknowledged, then the process exits 0."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(120)]
    consumer = start_consume(
        [*consume_args(nats_url, nats_names, "d1", pg_dsn), "--batch", "50"], log_dir=tmp_path
    )
    blocker = await asyncpg.connect(pg_dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        await publish(nats_url, stream, subject, records)
        # The consumer holds a fetched batch it cannot commit yet.
        await wait_for_more(lambda: unacked(nats_url, stream), 0, consumer.log())
        consumer.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert consumer.process.poll() is None
        await transaction.rollback()
        code = await asyncio.to_thread(consumer.process.wait, 30)
    finally:
        await blocker.close()
        consumer.stop(signal.SIGKILL)
    stored = await read_postgres(pg_dsn)
    assert code == 0
    assert len(stored) > 0
    assert stored == records[: len(stored)]
    assert consumer.summary()["written"] == len(stored)
    assert consumer.summary()["batches"] == 1
    assert await consumer_state(nats_url, stream, "d1") == (len(stored), 120 - len(stored), 0)


async def test_invalid_messages_are_skipped_and_counted(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """Messages that are not records are terminated and counted; the records around them land."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(4)]
    await publish(nats_url, stream, subject, records[:2])
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish(subject, b"not json at all")
        await js.publish(subject, b'{"request_id": 7}')
        # A record whose request nests deeper than msgspec decodes (RecursionError, not a
        # DecodeError): it used to stop the consumer, and redelivery would stop the next.
        deep = b'"request":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b","
        await js.publish(subject, Envelope(make_record(9)).json.replace(b'"request":{', deep, 1))
    finally:
        await nc.close()
    await publish(nats_url, stream, subject, records[2:])
    out = tmp_path / "out.jsonl"
    consumer = start_consume(
        consume_args(nats_url, nats_names, "d1", f"jsonl:///{out}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (7, 0, 0))
    finally:
        assert consumer.stop() == 0
    assert jsonl_lines(out) == [Envelope(r).json for r in records]
    assert (consumer.summary()["written"], consumer.summary()["invalid"]) == (4, 3)


async def test_resume_and_new_only(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """A restarted durable resumes after what it acknowledged; --new-only only shapes a new one."""
    stream, subject = nats_names
    records = [make_record(i) for i in range(30)]
    await publish(nats_url, stream, subject, records[:10])
    out, fresh = tmp_path / "out.jsonl", tmp_path / "fresh.jsonl"
    first = start_consume(
        consume_args(nats_url, nats_names, "d1", f"jsonl:///{out}"), log_dir=tmp_path
    )
    try:
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (10, 0, 0))
    finally:
        assert first.stop() == 0
    new_only = start_consume(
        [*consume_args(nats_url, nats_names, "d2", f"jsonl:///{fresh}"), "--new-only"],
        log_dir=tmp_path,
    )
    await publish(nats_url, stream, subject, records[10:])
    # Same durable, --new-only: ignored, it resumes at record 10.
    resumed = start_consume(
        [*consume_args(nats_url, nats_names, "d1", f"jsonl:///{out}"), "--new-only"],
        log_dir=tmp_path,
    )
    try:
        await wait_until(lambda: consumer_state(nats_url, stream, "d1"), (30, 0, 0))
        await wait_until(lambda: consumer_state(nats_url, stream, "d2"), (30, 0, 0))
    finally:
        assert (resumed.stop(), new_only.stop()) == (0, 0)
    assert jsonl_lines(out) == [Envelope(r).json for r in records]
    assert jsonl_lines(fresh) == [Envelope(r).json for r in records[10:]]


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("jsonl:///data/x.jsonl", "/data/x.jsonl"),
        ("jsonl:////data/x.jsonl", "/data/x.jsonl"),
        ("sqlite:///data/x.db", None),
    ],
)
def test_a_jsonl_target_is_a_file_url(url: str, path: str | None) -> None:
    """``jsonl:///data/x.jsonl`` is ``/data/x.jsonl``, as ``file:///data/x.jsonl`` and
    ``auditgate verify`` read it (it once silently wrote ``./data/x.jsonl``)."""
    assert jsonl_path(url) == path


@pytest.mark.parametrize(
    "change",
    [
        ["--to", "mysql://localhost/db"],
        ["--to", "sqlite://relative.db"],
        ["--to", "jsonl://relative.jsonl"],
        ["--durable", "a.b"],
        ["--batch", "0"],
        ["--nats-url", "http://127.0.0.1:4222"],
        ["--subject", "a.*"],
    ],
)
def test_bad_flags_exit_2(change: list[str], tmp_path: Path) -> None:
    """A bad target, durable, batch, URL or subject is a configuration error: exit status 2."""
    args = ["--stream", "S", "--subject", "a.b", "--durable", "d", "--to", f"jsonl:///{tmp_path}/x"]
    assert consume_main([*args, *change]) == 2


async def test_durable_for_another_subject_exits_3(
    nats_url: str, nats_names: tuple[str, str], tmp_path: Path
) -> None:
    """An existing durable filtering another subject is refused at startup with exit status 3,
    the code ``serve`` exits with when it cannot start."""
    stream, subject = nats_names
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject, subject + "x"])
        await js.add_consumer(stream, durable_name="d1", filter_subject=subject + "x")
    finally:
        await nc.close()
    process = await asyncio.create_subprocess_exec(
        *consume_command(consume_args(nats_url, nats_names, "d1", f"jsonl://{tmp_path}/x.jsonl")),
        cwd=tmp_path,
        env=clean_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 3
    assert f"durable 'd1' on stream {stream!r} exists with filter subject" in stderr.decode()


async def test_waits_for_nats_and_survives_its_restart(tmp_path: Path) -> None:
    """NATS down at start is waited for, and a NATS restart mid-stream loses nothing."""
    server = NatsServer(tmp_path)
    names = ("OUTAGE", "audit.outage")
    out = tmp_path / "out.jsonl"
    consumer = start_consume(
        consume_args(server.url, names, "d1", f"jsonl:///{out}"),
        log_dir=tmp_path,
        ready_timeout=None,
    )
    records = [make_record(i) for i in range(100)]
    try:
        consumer.wait_for_log("consume: NATS: ConnectionRefusedError")
        assert consumer.process.poll() is None
        server.start()
        consumer.wait_for_log("consume: consuming")
        await publish(server.url, *names, records[:50])
        await wait_until(lambda: jsonl_count(out), 50)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)
        await publish(server.url, *names, records[50:])
        await wait_until(lambda: jsonl_count(out), 100)
    finally:
        code = consumer.stop()
        server.stop()
    assert code == 0
    assert jsonl_lines(out) == [Envelope(r).json for r in records]
