"""The durable spool and bus: framing, group commit, cursors, segment deletion, recovery, full."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from auditgate.audit.bus import Backoff
from auditgate.audit.capture import Auditor
from auditgate.audit.metrics import AuditMetrics
from auditgate.audit.record import AuditRecord, Envelope, Mode
from auditgate.audit.sink import MemorySink
from auditgate.audit.spool import spool as spool_module
from auditgate.audit.spool import writer
from auditgate.audit.spool.durable import CURSOR_SAVE_INTERVAL_S, DurableBus
from auditgate.audit.spool.frames import HEADER, Position, encode_frame, parse_frames
from auditgate.audit.spool.spool import Spool, SpoolError
from auditgate.config import AuditSettings
from auditgate.engines.mock import MockEngine
from auditgate.errors import ServiceUnavailableError, SinkError
from auditgate.pipeline.chat import ChatCall, ChatPipeline
from auditgate.pipeline.request import validate_chat

T = TypeVar("T")
FAST = Backoff(initial_s=0.01, maximum_s=0.05, factor=2.0)


def envelope(seq: int, mode: Mode = "full") -> Envelope:
    """A small record with a unique request id."""
    return Envelope(
        AuditRecord(
            request_id=f"req-{seq:06d}",
            requested_streaming=False,
            mode=mode,
            model="mock",
            usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            engine="mock",
            status="completed",
            complete=True,
            created_at=1_700_000_000_000 + seq,
            completed_at=1_700_000_000_010 + seq,
            ttft_ms=1.5,
            duration_ms=10.0,
            writer="test:1:abc",
            seq=seq,
        )
    )


def ids(sink: MemorySink) -> list[str]:
    return [r.request_id for r in sink.records]


class Harness:
    """A durable bus over a spool directory, started and closed by the test."""

    made: ClassVar[list[Harness]] = []
    """Every harness of the running test (:func:`close_what_a_failed_test_left`)."""

    def __init__(self, directory: Path, sink: MemorySink | None = None, **spool: Any) -> None:
        Harness.made.append(self)
        self.directory = directory
        self.metrics = AuditMetrics()
        self.sink = sink or MemorySink("memory")
        self.spool = Spool(directory, max_bytes=spool.pop("max_bytes", 1 << 20), **spool)
        self.bus = DurableBus(
            [self.sink], spool=self.spool, capacity=64, metrics=self.metrics, backoff=FAST
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture(autouse=True)
async def close_what_a_failed_test_left() -> AsyncIterator[None]:
    """Close every bus a test started and did not close (it failed before its own close):
    its writer process would run on, its socket held by the failure's traceback, and
    uvloop's loop close waits for every child process, so the run would hang there, past
    the per-test timeout, instead of reporting the failure and going on."""
    Harness.made.clear()
    yield
    made, Harness.made = Harness.made, []
    for h in made:
        if h.bus._loop is not None and not h.bus._closing:
            await h.bus.close(0.1)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "spool")
    await h.bus.start()
    yield h
    await h.bus.close(2.0)


async def publish_all(bus: DurableBus, seqs: range) -> None:
    commits = [bus.publish(envelope(i)) for i in seqs]
    await asyncio.gather(*[c for c in commits if c is not None])


def test_frames_round_trip_and_report_the_first_bad_frame() -> None:
    """Valid frames parse back whole; torn, corrupt and zero-filled frames stop the parse there;
    zeros to the end (the writer's zeros ahead of its records) are a clean end."""
    a, b = encode_frame(b'{"a":1}', 5), encode_frame(b'{"b":2}', 6)
    frames, used, problem = parse_frames(a + b, 3, 100, 10)
    assert [(f.payload, f.appended_ms, f.start, f.end) for f in frames] == [
        (b'{"a":1}', 5, Position(3, 100), Position(3, 100 + len(a))),
        (b'{"b":2}', 6, Position(3, 100 + len(a)), Position(3, 100 + len(a) + len(b))),
    ]
    assert (used, problem) == (len(a) + len(b), None)
    flipped = bytearray(a + b)
    flipped[-2] ^= 0x01
    assert parse_frames(bytes(flipped), 0, 0, 10)[1:] == (len(a), "checksum mismatch")
    assert parse_frames(a + b[:-3], 0, 0, 10)[1:] == (len(a), "torn frame (4 of 7 bytes)")
    assert parse_frames(a + b[:5], 0, 0, 10)[1:] == (len(a), "torn header (5 of 16 bytes)")
    assert parse_frames(a + bytes(HEADER.size + 8), 0, 0, 10)[1:] == (len(a), None)
    assert parse_frames(a + bytes(1 << 20) + b, 0, 0, 10)[1:] == (len(a), "bad length 0")
    assert parse_frames(a + bytes(HEADER.size) + b"\x01", 0, 0, 10)[1:] == (len(a), "bad length 0")


async def test_group_commit_makes_many_records_durable_per_fsync(harness: Harness) -> None:
    """300 records published in one burst commit in far fewer fsyncs, and all reach the sink."""
    await publish_all(harness.bus, range(300))
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == [f"req-{i:06d}" for i in range(300)]
    commits = harness.value("auditgate_audit_spool_commits_total")
    assert commits is not None and commits <= 30
    assert harness.spool.commits == commits


def _writer(spool: Spool) -> int:
    """The pid of the spool's writer process."""
    assert spool._process is not None
    return spool._process.pid


async def _sent(bus: DurableBus, seq: int) -> asyncio.Future[None]:
    """Publish one record and let the loop send it to the writer."""
    commit = bus.publish(envelope(seq))
    assert isinstance(commit, asyncio.Future)
    await asyncio.sleep(0)  # the end of this iteration sends it
    await asyncio.sleep(0)
    return commit


def _block_segments(directory: Path, first: int, count: int) -> list[Path]:
    """Directories where the next segments' files would go: the writer cannot open them."""
    blocked = [directory / f"{segment:016d}.seg" for segment in range(first, first + count)]
    for path in blocked:
        path.mkdir()
    return blocked


async def test_batches_that_arrive_while_the_writer_is_busy_share_one_sync(
    harness: Harness,
) -> None:
    """Group commit: three batches sent while the writer is busy (here: stopped) are written
    and made durable together, with one sync, and none is durable before it."""
    pid = _writer(harness.spool)
    os.kill(pid, signal.SIGSTOP)
    try:
        commits = [await _sent(harness.bus, i) for i in range(3)]
        await asyncio.sleep(0.05)
        assert [c.done() for c in commits] == [False, False, False]
        assert harness.spool.end == Position(harness.spool.end.segment, 0)  # nothing committed
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.gather(*commits)
    assert harness.spool.commits == 1
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["req-000000", "req-000001", "req-000002"]


async def test_a_dead_writer_fails_what_it_had_not_synced_and_is_replaced(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer killed mid-batch: the waiting record fails (its client gets a 503, never an
    unaudited answer) and nothing of it stays on disk; a new writer takes the next record."""
    await publish_all(harness.bus, range(1))
    committed = harness.spool.end
    pid = _writer(harness.spool)
    os.kill(pid, signal.SIGSTOP)
    commit = await _sent(harness.bus, 1)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SpoolError, match="writer failed: it exited"):
        await commit
    assert "the writer failed: it exited; starting a new one" in caplog.text
    await publish_all(harness.bus, range(2, 3))
    assert _writer(harness.spool) != pid
    assert harness.spool.end.segment == committed.segment + 1  # a new writer, a new segment
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["req-000000", "req-000002"]
    await asyncio.sleep(0.05)  # the last cursor save and release run after the write
    on_disk = [
        frame.payload
        for path in harness.directory.glob("*.seg")
        for frame in parse_frames(path.read_bytes(), 0, 0, 100)[0]
    ]
    assert envelope(1).json not in on_disk


async def test_a_failed_write_fails_its_records_and_service_resumes(harness: Harness) -> None:
    """The writer cannot write (its segment file cannot be opened): the record fails with the
    error, counted; the next writer, in a new segment, takes the next record."""
    [blocked] = _block_segments(harness.directory, harness.spool.end.segment, 1)
    commit = harness.bus.publish(envelope(1))
    assert commit is not None
    with pytest.raises(SpoolError, match="writer failed: Is a directory"):
        await commit
    assert harness.value("auditgate_audit_dropped_total", sink="spool", reason="spool_error") == 1
    blocked.rmdir()
    await publish_all(harness.bus, range(2, 3))
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["req-000002"]


def test_the_writer_writes_batches_at_their_offsets(tmp_path: Path) -> None:
    """The writer process's own contract: each batch lands at its offset of its segment; a
    segment it cannot open is an OSError (reported to the gateway as an errno)."""
    files = writer.Writer(str(tmp_path))
    files.write(3, 0, memoryview(b"abc"))
    files.write(3, 3, memoryview(b"def"))
    files.commit()
    assert (tmp_path / f"{3:016d}.seg").read_bytes() == b"abcdef"
    (tmp_path / f"{4:016d}.seg").mkdir()
    with pytest.raises(IsADirectoryError):
        files.write(4, 0, memoryview(b"x"))


def test_the_writer_puts_zeros_ahead_of_its_records_and_cuts_them_when_it_seals(
    tmp_path: Path,
) -> None:
    """While idle the writer extends the live segment with zeros (synced: later commits change
    no metadata), never over a record, never past the segment size; moving to the next segment
    cuts them off.  Without sync (tests only) there is nothing to gain: no zeros."""
    step = writer.ZERO_STEP
    files = writer.Writer(str(tmp_path), segment_bytes=step + 100)
    path = tmp_path / f"{3:016d}.seg"
    files.prepare()  # no segment yet: nothing to do
    assert list(tmp_path.glob("*.seg")) == []
    files.write(3, 0, memoryview(b"abc"))
    files.commit()
    files.prepare()
    assert path.stat().st_size == 3 + step
    files.write(3, 3, memoryview(b"def"))
    files.commit()
    files.prepare()  # more than half a step still ahead
    assert path.stat().st_size == 3 + step
    big = os.urandom(step // 2)
    files.write(3, 6, memoryview(big))
    files.commit()
    files.prepare()  # less than half left: the next step, up to the segment size
    assert path.stat().st_size == step + 100
    data = path.read_bytes()
    assert data[: 6 + len(big)] == b"abcdef" + big and not any(data[6 + len(big) :])
    files.write(4, 0, memoryview(b"x"))
    assert path.read_bytes() == b"abcdef" + big
    files.commit()
    files.prepare()
    files.seal()
    assert (tmp_path / f"{4:016d}.seg").read_bytes() == b"x"
    (tmp_path / "unsynced").mkdir()
    unsynced = writer.Writer(str(tmp_path / "unsynced"), sync=False, segment_bytes=step)
    unsynced.write(0, 0, memoryview(b"abc"))
    unsynced.prepare()
    assert (tmp_path / "unsynced" / f"{0:016d}.seg").stat().st_size == 3


def test_zeros_the_writer_cannot_sync_cost_nothing_but_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing ``prepare`` (disk full) is reported once for the segment and records go on
    being written and committed over whatever it left; the next segment tries again."""
    files = writer.Writer(str(tmp_path), segment_bytes=4096)
    files.write(0, 0, memoryview(b"abc"))
    files.commit()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", full)
        files.prepare()
        files.prepare()
    assert capsys.readouterr().err.count("cannot put zeros ahead of records") == 1
    files.write(0, 3, memoryview(b"def"))
    files.commit()
    files.prepare()
    files.write(1, 0, memoryview(b"x"))
    files.commit()
    files.prepare()
    assert (tmp_path / f"{0:016d}.seg").read_bytes() == b"abcdef"
    assert (tmp_path / f"{1:016d}.seg").stat().st_size == 4096
    assert capsys.readouterr().err == ""


async def test_commit_resolves_only_after_the_frame_is_on_disk(harness: Harness) -> None:
    """When a publish's future is done, its frame is already in the segment file."""
    commit = harness.bus.publish(envelope(1))
    assert commit is not None
    await commit
    [segment] = harness.spool.segments()
    data = (harness.directory / f"{segment:016d}.seg").read_bytes()
    frames, _, problem = parse_frames(data, segment, 0, 10)
    assert ([f.payload for f in frames], problem) == ([envelope(1).json], None)


async def test_cursor_is_saved_and_a_restart_replays_nothing_delivered(tmp_path: Path) -> None:
    """After delivery the cursor is at the end: a new bus on the same spool delivers nothing."""
    first = Harness(tmp_path)
    await first.bus.start()
    await publish_all(first.bus, range(10))
    assert await first.bus.flush(5.0)
    assert await first.bus.close(2.0) == {"memory": 0}
    assert first.spool.load_cursor("memory") == first.spool.end
    second = Harness(tmp_path)
    await second.bus.start()
    await publish_all(second.bus, range(10, 12))
    assert await second.bus.flush(5.0)
    await second.bus.close(2.0)
    assert ids(second.sink) == ["req-000010", "req-000011"]
    assert second.value("auditgate_audit_spool_replayed_total", sink="memory") == 0.0


async def test_cursor_saves_are_throttled_and_an_idle_reader_saves_the_last_one(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty back-to-back commits cost a few cursor saves, and the idle reader saves the end."""
    saved: list[Position] = []
    save = harness.spool.save_cursor

    def counting(sink: str, position: Position) -> None:
        saved.append(position)
        save(sink, position)

    monkeypatch.setattr(harness.spool, "save_cursor", counting)
    for i in range(20):
        await publish_all(harness.bus, range(i, i + 1))
    assert await harness.bus.flush(5.0)
    await asyncio.sleep(CURSOR_SAVE_INTERVAL_S * 2)  # the idle reader's timer is due
    assert harness.spool.load_cursor("memory") == harness.spool.end
    assert saved[-1] == harness.spool.end
    assert len(saved) <= 5


async def test_undelivered_records_are_replayed_on_start(tmp_path: Path) -> None:
    """Records a down sink never stored are delivered by the next start, and counted replayed."""
    first = Harness(tmp_path)
    first.sink.fail = ConnectionError("down")
    await first.bus.start()
    await publish_all(first.bus, range(25))
    assert await first.bus.close(0.2) == {"memory": 25}
    second = Harness(tmp_path)
    await second.bus.start()
    assert second.value("auditgate_audit_queue_depth", sink="memory") == 25.0
    assert await second.bus.flush(5.0)
    await second.bus.close(2.0)
    assert ids(second.sink) == [f"req-{i:06d}" for i in range(25)]
    assert second.value("auditgate_audit_spool_replayed_total", sink="memory") == 25.0


async def test_segments_are_deleted_once_every_sink_passed_them(tmp_path: Path) -> None:
    """A sink that is down keeps every segment; once it catches up, only the live one remains."""
    h = Harness(tmp_path, segment_bytes=2048)
    h.sink.fail = ConnectionError("down")
    await h.bus.start()
    for i in range(10):  # ten groups of ten: several segments
        await publish_all(h.bus, range(i * 10, i * 10 + 10))
    kept = h.spool.segments()
    assert len(kept) >= 4
    assert h.value("auditgate_audit_spool_bytes") == float(h.spool.bytes)
    h.sink.fail = None
    assert await h.bus.flush(5.0)
    await asyncio.sleep(0.05)  # the last cursor save and release run after the write
    assert h.spool.segments() == [kept[-1]]
    assert ids(h.sink) == [f"req-{i:06d}" for i in range(100)]
    await h.bus.close(2.0)


async def test_a_slow_sink_falls_back_to_reading_the_spool(tmp_path: Path) -> None:
    """More records than the in-memory capacity behind a blocked sink still arrive, in order."""
    h = Harness(tmp_path)
    h.sink.block.clear()
    await h.bus.start()
    await publish_all(h.bus, range(1))
    await asyncio.sleep(0.02)  # the reader is caught up and live, now stuck in write()
    await publish_all(h.bus, range(1, 500))
    h.sink.block.set()
    assert await h.bus.flush(5.0)
    await h.bus.close(2.0)
    assert ids(h.sink) == [f"req-{i:06d}" for i in range(500)]


class SyncingSink(MemorySink):
    """A memory sink that is :class:`~auditgate.audit.sink.Syncable`, and whose sync can fail."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.syncs = 0
        self.sync_fail: Exception | None = None

    async def sync(self) -> None:
        if self.sync_fail is not None:
            raise self.sync_fail
        self.syncs += 1


async def test_the_spool_forgets_records_only_after_the_sink_synced_them(
    tmp_path: Path,
) -> None:
    """A sink that needs a sync to survive a power loss: while its sync fails, it gets every
    record but its cursor stays and no segment is deleted; once a sync works, both move."""
    sink = SyncingSink()
    sink.sync_fail = SinkError("disk gone")
    h = Harness(tmp_path, sink, segment_bytes=2048)
    await h.bus.start()
    for i in range(10):  # ten groups of ten: several segments
        await publish_all(h.bus, range(i * 10, i * 10 + 10))
    assert await h.bus.flush(5.0)
    assert ids(sink) == [f"req-{i:06d}" for i in range(100)]
    await asyncio.sleep(CURSOR_SAVE_INTERVAL_S * 2)
    assert h.spool.load_cursor("memory") is None
    kept = h.spool.segments()
    assert len(kept) >= 4
    errors = h.value("auditgate_audit_sink_errors_total", sink="memory")
    assert errors is not None and errors >= 1
    sink.sync_fail = None
    await asyncio.sleep(CURSOR_SAVE_INTERVAL_S * 3)  # the idle reader retries its save
    assert h.spool.load_cursor("memory") == h.spool.end
    assert h.spool.segments() == [kept[-1]]
    assert sink.syncs >= 1
    await h.bus.close(2.0)


def _segment_file(directory: Path) -> Path:
    [path] = sorted(directory.glob("*.seg"))
    return path


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
async def test_a_torn_or_corrupt_tail_is_cut_reported_and_the_rest_replayed(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A cut-short last frame, or a flipped byte in frame 7 of 10: cut, reported, rest kept."""
    first = Harness(tmp_path)
    first.sink.fail = ConnectionError("down")
    await first.bus.start()
    await publish_all(first.bus, range(10))
    await first.bus.close(0.1)
    path = _segment_file(tmp_path)
    data = bytearray(path.read_bytes())
    size = len(data)
    frame = len(envelope(0).json) + HEADER.size  # every test record has the same length
    if damage == "truncated":
        del data[-5:]
        kept, cut = 9, frame - 5
    else:
        data[7 * frame + HEADER.size + 3] ^= 0x20
        kept, cut = 7, size - 7 * frame
    path.write_bytes(bytes(data))
    second = Harness(tmp_path)
    await second.bus.start()
    assert await second.bus.flush(5.0)
    await second.bus.close(2.0)
    assert ids(second.sink) == [f"req-{i:06d}" for i in range(kept)]
    assert second.value("auditgate_audit_spool_corrupt_tails_total") == 1.0
    assert second.value("auditgate_audit_spool_cut_bytes_total") == float(cut)
    # Delivered, but it holds the spool's newest record (where the chain ended): kept, cut.
    assert path.stat().st_size == kept * frame
    reason = "torn frame" if damage == "truncated" else "checksum mismatch"
    assert [r.message.split(" at ")[0] for r in caplog.records if "cut" in r.message] == [
        f"audit spool: {reason} ({frame - HEADER.size - 5} of {frame - HEADER.size} bytes)"
        if damage == "truncated"
        else f"audit spool: {reason}"
    ]


async def test_zeros_left_by_a_crash_are_the_end_of_a_segment_not_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power lost while the writer's zeros were ahead of its records: recovery reads them as
    the end of the segment (nothing reported cut), replays every record, cuts the zeros off."""
    first = Harness(tmp_path)
    first.sink.fail = ConnectionError("down")
    await first.bus.start()
    await publish_all(first.bus, range(10))
    path = _segment_file(tmp_path)
    records = 10 * (len(envelope(0).json) + HEADER.size)
    deadline = time.monotonic() + 5
    while path.stat().st_size == records and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the idle writer puts its zeros ahead
    assert path.stat().st_size == first.spool.segment_bytes
    monkeypatch.setattr(first.spool, "_cut_uncommitted", lambda: None)  # it died as well
    os.kill(_writer(first.spool), signal.SIGKILL)
    await first.bus.close(0.1)
    assert path.stat().st_size == first.spool.segment_bytes
    second = Harness(tmp_path)
    await second.bus.start()
    assert await second.bus.flush(5.0)
    await second.bus.close(2.0)
    assert ids(second.sink) == [f"req-{i:06d}" for i in range(10)]
    assert second.value("auditgate_audit_spool_corrupt_tails_total") == 0.0
    assert [r.message for r in caplog.records if "cut" in r.message] == []


async def test_full_spool_refuses_full_records_drops_usage_and_recovers(tmp_path: Path) -> None:
    """At max bytes full records are refused and usage records dropped; sink catch-up frees it."""
    h = Harness(tmp_path, max_bytes=4096, segment_bytes=1024)
    h.sink.fail = ConnectionError("down")
    await h.bus.start()
    seq = 0
    while h.bus.admit("full"):
        await publish_all(h.bus, range(seq, seq + 1))
        seq += 1
    assert h.spool.bytes >= 4096
    assert (h.bus.admit("usage_only"), h.bus.admit(None)) == (True, True)
    assert h.bus.publish(envelope(10_000, "usage_only")) is None
    assert h.value("auditgate_audit_dropped_total", sink="spool", reason="spool_full") == 1.0
    assert h.value("auditgate_audit_spool_rejected_total") == 1.0
    h.sink.fail = None
    assert await h.bus.flush(5.0)
    await asyncio.sleep(0.05)
    assert h.bus.admit("full")
    assert h.spool.bytes < 1024 + 200
    await h.bus.close(2.0)
    assert ids(h.sink) == [f"req-{i:06d}" for i in range(seq)]


def _pipeline(bus: DurableBus, metrics: AuditMetrics) -> ChatPipeline:
    settings = AuditSettings(enabled=True, sinks=("memory",), durability="durable")
    return ChatPipeline(MockEngine(), Auditor(settings, bus, metrics, engine="mock"))


def _call(stream: bool, n: int) -> ChatCall:
    body: dict[str, Any] = {
        "model": "mock",
        "messages": [{"role": "user", "content": f"hello {n}"}],
        "store": True,
        "stream": stream,
    }
    return ChatCall(body=body, params=validate_chat(body), request_id=f"r-{stream}-{n}")


async def _writer_killed_during(spool: Spool, waiting: Awaitable[T]) -> T:
    """Await ``waiting`` while the writer is stopped, then killed under it."""
    while spool._link is None:  # a restart after an earlier kill is still going on
        await asyncio.sleep(0.01)
    pid = _writer(spool)
    os.kill(pid, signal.SIGSTOP)
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return await task


async def test_pipeline_answers_after_the_commit_and_503s_when_it_fails(
    harness: Harness,
) -> None:
    """Durable pipeline: success once spooled; a record the spool could not make durable turns
    the success into a 503 (non-stream) or withholds [DONE] (stream)."""
    pipeline = _pipeline(harness.bus, harness.metrics)
    completion = await pipeline.complete(_call(False, 1))
    assert completion["id"] == "chatcmpl-r-False-1"
    stream = await pipeline.stream(_call(True, 1))
    chunks = [chunk async for batch in stream for chunk in batch]
    await stream.committed()
    await stream.aclose()
    assert chunks[0]["id"] == "chatcmpl-r-True-1"
    with pytest.raises(ServiceUnavailableError) as failed:
        await _writer_killed_during(harness.spool, pipeline.complete(_call(False, 2)))
    assert (failed.value.status_code, failed.value.code) == (503, "audit_spool_unavailable")
    stream = await pipeline.stream(_call(True, 2))
    _ = [chunk async for batch in stream for chunk in batch]
    with pytest.raises(ServiceUnavailableError):
        await _writer_killed_during(harness.spool, stream.committed())
    await stream.aclose()
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["r-False-1", "r-True-1"]


async def test_pipeline_refuses_stored_requests_before_the_engine_when_full(
    tmp_path: Path,
) -> None:
    """Spool full: a store:true call is a 503 audit_spool_full; the engine never sees it."""
    h = Harness(tmp_path, max_bytes=1, segment_bytes=4096)
    h.sink.fail = ConnectionError("down")
    await h.bus.start()
    await publish_all(h.bus, range(1))
    pipeline = _pipeline(h.bus, h.metrics)
    with pytest.raises(ServiceUnavailableError) as refused:
        await pipeline.stream(_call(True, 3))
    assert (refused.value.status_code, refused.value.code) == (503, "audit_spool_full")
    assert h.value("auditgate_audit_records_total", mode="full") == 0.0
    assert h.value("auditgate_audit_spool_rejected_total") == 1.0
    await h.bus.close(0.1)


async def test_a_cancelled_waiter_does_not_cancel_the_others(harness: Harness) -> None:
    """Records committed in one group: a request that goes away while waiting (its task is
    cancelled) leaves the others' commits alone."""
    first, second = harness.bus.publish(envelope(1)), harness.bus.publish(envelope(2))
    assert first is not None and second is not None
    gone = asyncio.ensure_future(_awaited(first))
    stays = asyncio.ensure_future(_awaited(second))
    await asyncio.sleep(0)
    gone.cancel()
    await stays
    assert gone.cancelled()
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["req-000001", "req-000002"]


async def _awaited(commit: Awaitable[None]) -> None:
    await commit


def test_a_spool_directory_has_one_owner_and_workers_take_their_own_slot(
    tmp_path: Path,
) -> None:
    """Two processes must never write one spool: a second claim of a directory fails; with
    slots (--workers N) each claim takes the first free worker-K; a released one is free."""
    one, two = Spool(tmp_path / "a", max_bytes=1 << 20), Spool(tmp_path / "a", max_bytes=1 << 20)
    assert one.claim() == tmp_path / "a"
    with pytest.raises(SpoolError, match="in use by other gateway processes"):
        two.claim()
    one.release_claim()
    assert two.claim() == tmp_path / "a"
    two.release_claim()
    workers = [Spool(tmp_path / "b", max_bytes=1 << 20, slots=2) for _ in range(3)]
    slots = [tmp_path / "b" / "worker-0", tmp_path / "b" / "worker-1"]
    assert [workers[0].claim(), workers[1].claim()] == slots
    with pytest.raises(SpoolError, match=r"2 slot\(s\), all locked"):
        workers[2].claim()
    workers[0].release_claim()
    assert workers[2].claim() == tmp_path / "b" / "worker-0"
    for spool in workers:
        spool.release_claim()


def test_a_claim_waits_for_a_writer_its_previous_owner_left_running(tmp_path: Path) -> None:
    """A gateway killed with SIGKILL leaves its writer storing the last batch for a moment:
    the next owner recovers only once that writer let go of the spool."""
    (tmp_path / "spool").mkdir()
    held = os.open(tmp_path / "spool" / writer.WRITER_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(0.3, os.close, [held]).start()
    started = time.monotonic()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.claim()
    assert time.monotonic() - started >= 0.25
    spool.release_claim()


def test_the_writer_inbox_takes_batches_split_across_reads_and_larger_than_it() -> None:
    """The writer's receive buffer: a batch split over several reads is taken only once
    whole, and one larger than the buffer grows it."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        inbox = writer.Inbox(size=64)
        second = writer.BATCH.pack(1, 3, 100) + b"y" * 100
        ours.sendall(writer.BATCH.pack(1, 0, 3) + b"abc" + second[:10])
        assert inbox.receive(theirs, wait=True) == writer.BATCH.size + 3 + 10
        batches, used = inbox.batches()
        assert [(s, o, bytes(inbox.buffer[a:b])) for s, o, a, b in batches] == [(1, 0, b"abc")]
        inbox.make_room(used)
        ours.sendall(second[10:])
        batches = []
        while not batches:  # 64 bytes cannot hold it: the buffer grows once its header is in
            assert inbox.receive(theirs, wait=True)
            batches, used = inbox.batches()
            if not batches:
                inbox.make_room(used)
        assert len(inbox.buffer) == len(second)
        assert [(s, o, bytes(inbox.buffer[a:b])) for s, o, a, b in batches] == [(1, 3, b"y" * 100)]
        inbox.make_room(used)
        ours.shutdown(socket.SHUT_WR)
        assert (inbox.receive(theirs, wait=True), inbox.filled) == (None, 0)


async def test_shutdown_with_a_stuck_writer_ends_by_its_deadline(tmp_path: Path) -> None:
    """A writer that never answers (a hung disk): close() still returns by its deadline, the
    waiting record fails (its client got no unaudited answer), and the writer is killed."""
    h = Harness(tmp_path)
    await h.bus.start()
    pid = _writer(h.spool)
    os.kill(pid, signal.SIGSTOP)
    commit = await _sent(h.bus, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await h.bus.close(0.3)
    assert loop.time() - started < 2.0
    with pytest.raises(SpoolError, match="stopped before the record was durable"):
        await commit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_a_writer_that_keeps_failing_is_restarted_with_backoff_and_fails_fast(
    harness: Harness,
) -> None:
    """A disk that keeps failing must not cost a process start per batch, nor leave requests
    waiting: restarts back off, records that arrive meanwhile fail at once, and a commit that
    works again ends it."""
    blocked = _block_segments(harness.directory, harness.spool.end.segment, 4)
    for seq in range(2):  # the first restart is immediate, the second waits
        commit = harness.bus.publish(envelope(seq))
        assert commit is not None
        with pytest.raises(SpoolError, match="writer failed: Is a directory"):
            await commit
    await asyncio.sleep(0)
    assert harness.spool._backing_off
    commit = harness.bus.publish(envelope(2))
    assert commit is not None
    with pytest.raises(SpoolError, match="keeps failing"):
        await asyncio.wait_for(commit, 0.05)  # at once, not after the backoff
    for path in blocked:
        path.rmdir()
    await asyncio.sleep(0.3)  # the backoff ends and a writer starts in a free segment
    await publish_all(harness.bus, range(3, 4))
    assert harness.spool._failures == 0
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == ["req-000003"]


async def test_a_writer_that_cannot_start_is_retried_and_no_record_waits_for_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer dies and the next ones cannot even start (no processes left): records fail
    at once instead of waiting, the spool keeps trying, and the first writer that starts
    takes the next record."""
    real = asyncio.create_subprocess_exec
    attempts = 0

    async def no_process(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise OSError(11, "Resource temporarily unavailable")
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_process)
    os.kill(_writer(harness.spool), signal.SIGKILL)
    while harness.spool._restarting is None:
        await asyncio.sleep(0.01)
    stored: list[str] = []
    failed = 0
    seq = 0
    while harness.spool._restarting is not None:
        commit = harness.bus.publish(envelope(seq))
        assert commit is not None
        try:
            await asyncio.wait_for(commit, 2.0)  # settled soon either way: nothing hangs
        except SpoolError as exc:
            assert "cannot start" in str(exc) or "keeps failing" in str(exc)
            failed += 1
        else:
            stored.append(f"req-{seq:06d}")  # sent once the third start worked
        seq += 1
    assert attempts == 3 and failed >= 1
    await publish_all(harness.bus, range(100, 101))
    assert await harness.bus.flush(5.0)
    assert ids(harness.sink) == [*stored, "req-000100"]


@pytest.mark.parametrize("stage", ["backing off", "starting"])
async def test_a_stop_during_a_writer_restart_leaves_no_writer_behind(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """A stop whose deadline passes while a writer restart is still backing off or starting
    (a loaded machine): the restart ends with the stop, no writer starts after it, and the
    spool's writer lock is free at once for the next owner (a leaked writer held it, and
    uvloop's loop close waited for that writer forever)."""
    starting = asyncio.Event()
    if stage == "backing off":
        monkeypatch.setattr(spool_module, "RESTART_BACKOFF_S", (0.0, 30.0))
        _block_segments(harness.directory, harness.spool.end.segment, 2)
        for seq in range(2):  # the first restart is immediate, the second backs off
            commit = harness.bus.publish(envelope(seq))
            assert commit is not None
            with pytest.raises(SpoolError, match="writer failed: Is a directory"):
                await commit
        await asyncio.sleep(0)  # the restart task begins its backoff
        assert harness.spool._backing_off
    else:
        real = asyncio.create_subprocess_exec

        async def slow(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
            starting.set()
            await asyncio.Event().wait()  # a fork that takes longer than the stop's deadline
            return await real(*args, **kwargs)

        monkeypatch.setattr(asyncio, "create_subprocess_exec", slow)
        os.kill(_writer(harness.spool), signal.SIGKILL)
        await asyncio.wait_for(starting.wait(), 5.0)
    restarting = harness.spool._restarting
    assert restarting is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    await harness.spool.stop(0.1)
    assert loop.time() - started < 2.0
    assert restarting.done() and harness.spool._restarting is None
    assert harness.spool._process is None and harness.spool._link is None
    lock = os.open(harness.spool.directory / writer.WRITER_LOCK, os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no writer holds the spool
    finally:
        os.close(lock)
