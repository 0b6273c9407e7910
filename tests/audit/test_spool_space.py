"""The spool on a disk that runs out of space: cursors, deletion and writer restarts never need
new space, so the spool frees its disk as its sinks catch up (DESIGN §6)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditgate.audit.spool import cursors, segments
from auditgate.audit.spool.frames import Position, encode_frame
from tests.audit.test_spool import Harness, envelope, ids, publish_all
from tests.support.volume import small_volume


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    with small_volume(tmp_path / "volume", "2m") as path:
        yield path


def fill_up(volume: Path) -> Path:
    """Write a file until the volume is full (ENOSPC); the file."""
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def seg_files(directory: Path) -> list[tuple[str, int]]:
    """(name, size) of every segment file, oldest first."""
    return sorted((p.name, p.stat().st_size) for p in directory.glob("*.seg"))


async def test_a_full_disk_still_saves_cursors_and_frees_passed_segments(volume: Path) -> None:
    """Sink down, records in several segments, then the disk fills up: once the sink is back,
    its cursor is saved and every segment but the newest record's is deleted, with no space."""
    h = Harness(volume / "spool", segment_bytes=4096)
    h.sink.fail = ConnectionError("down")
    await h.bus.start()
    for i in range(10):  # ten groups of ten: several segments
        await publish_all(h.bus, range(i * 10, i * 10 + 10))
    kept = h.spool.segments()
    assert len(kept) >= 4
    fill_up(volume)
    h.sink.fail = None
    assert await h.bus.flush(5.0)
    await asyncio.sleep(0.3)  # the last cursor save and release run after the write
    assert h.spool.load_cursor("memory") == h.spool.end
    assert h.spool.segments() == [kept[-1]]
    assert [name for name, _ in seg_files(h.directory)] == [f"{kept[-1]:016d}.seg"]
    await h.bus.close(2.0)
    assert ids(h.sink) == [f"req-{i:06d}" for i in range(100)]


async def test_a_full_disk_fails_records_leaves_no_empty_segments_and_recovers(
    volume: Path,
) -> None:
    """Appends on a full disk fail (their clients get 503s) and each failed writer's empty
    segment is deleted; once space is free again the next record is stored."""
    h = Harness(volume / "spool", sync=False)  # no zeros ahead of records to write over
    await h.bus.start()
    try:
        await publish_all(h.bus, range(1))
        assert await h.bus.flush(5.0)
        filler = fill_up(volume)
        for attempt in range(1, 4):
            while h.spool._restarting is not None:
                await asyncio.sleep(0.01)  # each burst goes to a fresh writer
            burst = range(attempt * 100, attempt * 100 + 20)  # more than a page of records
            commits = [h.bus.publish(envelope(seq)) for seq in burst]
            failed = await asyncio.gather(*[c for c in commits if c], return_exceptions=True)
            assert {str(error) for error in failed} == {
                "audit spool writer failed: No space left on device (errno 28)"
            }
        while h.spool._restarting is not None:
            await asyncio.sleep(0.01)
        filler.unlink()
        await publish_all(h.bus, range(4, 5))
        assert await h.bus.flush(5.0)
        assert [size > 0 for _, size in seg_files(h.directory)] == [True, True]
    finally:
        await h.bus.close(2.0)
    assert ids(h.sink) == ["req-000000", "req-000004"]


async def test_deletion_follows_what_sinks_stored_even_when_cursors_cannot_be_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cursor saves that keep failing do not keep segments: a sink that stored them frees them
    (a restart would only replay from the last saved cursor)."""
    h = Harness(tmp_path, segment_bytes=2048)
    h.sink.fail = ConnectionError("down")
    await h.bus.start()
    for i in range(10):
        await publish_all(h.bus, range(i * 10, i * 10 + 10))
    kept = h.spool.segments()
    assert len(kept) >= 4

    def broken(sink: str, position: Position) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(h.spool, "save_cursor", broken)
    h.sink.fail = None
    assert await h.bus.flush(5.0)
    await asyncio.sleep(0.3)
    assert h.spool.segments() == [kept[-1]]
    errors = h.value("auditgate_audit_sink_errors_total", sink="memory")
    assert errors is not None and errors >= 1
    await h.bus.close(2.0)


def test_a_torn_cursor_save_falls_back_to_the_previous_cursor(tmp_path: Path) -> None:
    """A save cut short (power lost mid-write) spoils one slot: the cursor falls back to the
    one saved before it, never forward, and the next save goes on from there."""
    cursor = cursors.CursorFile(tmp_path, "sink")
    assert cursor.load() is None
    cursor.save(Position(3, 100))
    cursor.save(Position(3, 200))
    assert cursors.CursorFile(tmp_path, "sink").load() == Position(3, 200)
    data = bytearray(cursor.path.read_bytes())
    assert len(data) == cursors.FILE_BYTES
    data[cursors.SLOT.size * (cursor.generation % 2) + 10] ^= 0xFF  # inside the newest slot
    cursor.path.write_bytes(bytes(data))
    again = cursors.CursorFile(tmp_path, "sink")
    assert again.load() == Position(3, 100)
    again.save(Position(4, 0))
    assert cursors.CursorFile(tmp_path, "sink").load() == Position(4, 0)


def test_an_earlier_versions_json_cursor_is_moved_into_the_cursor_file(tmp_path: Path) -> None:
    """A spool left by an earlier version keeps its sinks' positions across the upgrade."""
    (tmp_path / "cursor.sink.json").write_text('{"segment": 7, "offset": 420}')
    cursor = cursors.CursorFile(tmp_path, "sink")
    assert cursor.load() == Position(7, 420)
    cursor.allocate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cursor.sink"]
    assert cursors.CursorFile(tmp_path, "sink").load() == Position(7, 420)


def test_recovery_numbers_new_segments_after_every_cursor(tmp_path: Path) -> None:
    """A spool whose segments are all gone but whose cursors point further on writes new
    records after the cursors, never under them (they would be skipped)."""
    recovery = segments.recover(tmp_path, {"a": Position(5, 100), "b": None})
    assert (recovery.live, recovery.sizes, recovery.last) == (6, {}, None)


def test_recovery_keeps_the_newest_record_and_deletes_empty_segments(tmp_path: Path) -> None:
    """Every sink passed both segments: the older one goes, the one with the newest record
    stays (it tells where the last writer's chain ended), and an empty one goes."""
    a, b = encode_frame(b'{"a":1}', 1), encode_frame(b'{"b":2}', 2)
    segments.segment_path(tmp_path, 0).write_bytes(a)
    segments.segment_path(tmp_path, 1).write_bytes(b)
    segments.segment_path(tmp_path, 2).write_bytes(b"")
    recovery = segments.recover(tmp_path, {"sink": Position(1, len(b))})
    assert (recovery.live, recovery.sizes, recovery.last) == (3, {1: len(b)}, b'{"b":2}')
    assert recovery.backlog == {"sink": 0}
    assert sorted(os.listdir(tmp_path)) == [f"{1:016d}.seg"]
