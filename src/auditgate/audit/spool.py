"""The durable mode's local write-ahead spool (DESIGN §6): framed segments, group commit, cursors.

Layout of ``DYN_AUDIT_SPOOL_DIR``:

- ``NNNNNNNNNNNNNNNN.seg`` — append-only segments.  Each record is one frame:
  ``length:u32 crc:u32 appended_ms:u64`` (little-endian) then ``length`` bytes of the record's
  JSON; ``crc`` is CRC-32 over ``appended_ms`` and the JSON, so a torn, zero-filled or flipped
  frame never passes as a record.
- ``cursor.<sink>.json`` — how far a sink has stored, ``{"segment": n, "offset": o}``.

Contracts:

- :meth:`Spool.append` runs on the event loop and is O(1): it frames the record and queues it.
  At the end of that loop iteration every queued record is written with one ``write`` (to the
  page cache, which a crash of the gateway does not lose) and a sync is asked of the syncer
  process (:mod:`auditgate.audit.syncer`), which ``fdatasync``s and answers on a socket the loop
  watches.  At most one sync is in flight; groups written meanwhile share the next one — group
  commit with no timer, so a record waits for about one disk flush under any load and no
  thread of the gateway ever blocks on the disk or takes the GIL for it.
- A record is durable once its group's ``on_commit`` (on the event loop) ran with
  ``error=None``.  A failed write is cut off the segment and reported with the error; a failed
  sync, or a syncer that died, fails every unsynced group (cut off back to the committed end —
  after an ``fdatasync`` error the kernel's word on those pages is worthless) and the next sync
  starts a new syncer.
- :meth:`Spool.recover` (before :meth:`Spool.start`) checks every segment some sink still needs,
  cuts each at its first torn or corrupt frame (truncates, logs, counts in the returned
  :class:`Recovery`), and deletes the segments every sink has passed.  Writing always starts in a
  new segment, so recovered segments are never appended to.
- Cursors are saved by atomic rename without fsync: after a power loss a cursor may fall back,
  which replays records — sinks are idempotent on ``request_id``, so at least once is enough.
- ``full`` is true while the segments hold ``max_bytes`` or more; it clears by itself once sinks
  pass whole segments and they are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from auditgate.audit import syncer
from auditgate.audit.record import Envelope
from auditgate.errors import AuditgateError

log = logging.getLogger("auditgate.audit.spool")

HEADER: Final = struct.Struct("<IIQ")
"""Frame header: payload length, CRC-32 of (appended_ms bytes + payload), append time (unix ms)."""
_STAMP: Final = struct.Struct("<Q")
MAX_FRAME: Final = 1 << 30
"""A length above this is corruption, not a record."""
SUFFIX: Final = syncer.SUFFIX

_Queued = tuple[Envelope, bytes]
"""A record waiting for its group commit, with its frame header."""


class SpoolError(AuditgateError):
    """The spool could not make a record durable (disk full, I/O error, closed)."""


class Position(NamedTuple):
    """A byte position in the spool: segment index, offset in that segment."""

    segment: int
    offset: int


class Frame(NamedTuple):
    """One record read back from the spool."""

    payload: bytes
    """The record's JSON."""
    appended_ms: int
    start: Position
    end: Position
    """Position just after this frame: where a sink's cursor goes once it stored it."""


def encode_frame(payload: bytes, appended_ms: int) -> bytes:
    """One framed record."""
    stamp = _STAMP.pack(appended_ms)
    crc = zlib.crc32(payload, zlib.crc32(stamp))
    return HEADER.pack(len(payload), crc, appended_ms) + payload


def parse_frames(
    data: bytes, segment: int, base: int, max_records: int
) -> tuple[list[Frame], int, str | None]:
    """Frames at the start of ``data`` (which starts at offset ``base`` of ``segment``).

    Returns ``(frames, consumed, problem)``: ``consumed`` bytes hold whole valid frames; a
    ``problem`` describes the first bad frame (``None`` when the data ends cleanly or
    ``max_records`` was reached).  An incomplete frame at the very end is reported as torn.
    """
    frames: list[Frame] = []
    pos, size = 0, len(data)
    view = memoryview(data)
    while pos < size and len(frames) < max_records:
        if size - pos < HEADER.size:
            return frames, pos, f"torn header ({size - pos} of {HEADER.size} bytes)"
        length, crc, stamp = HEADER.unpack_from(data, pos)
        if length == 0 or length > MAX_FRAME:
            return frames, pos, f"bad length {length}"
        end = pos + HEADER.size + length
        if end > size:
            return frames, pos, f"torn frame ({size - pos - HEADER.size} of {length} bytes)"
        payload = bytes(view[pos + HEADER.size : end])
        if zlib.crc32(payload, zlib.crc32(_STAMP.pack(stamp))) != crc:
            return frames, pos, "checksum mismatch"
        frames.append(
            Frame(payload, stamp, Position(segment, base + pos), Position(segment, base + end))
        )
        pos = end
    return frames, pos, None


@dataclasses.dataclass(slots=True)
class Cut:
    """A segment cut at recovery: where, how many bytes went, and why."""

    segment: int
    offset: int
    removed: int
    reason: str


@dataclasses.dataclass(slots=True)
class Recovery:
    """What :meth:`Spool.recover` found."""

    cursors: dict[str, Position]
    """Each sink's starting position (its saved cursor, or the oldest segment)."""
    backlog: dict[str, int]
    """Records each sink has not stored yet."""
    cuts: list[Cut]
    """Torn or corrupt tails that were cut."""
    live: int
    """Index of the segment new records go to; everything before it was recovered."""


CommitHook = Callable[[list[tuple[Envelope, Position]], int, BaseException | None], None]
"""``on_commit(records with their end positions, appended_ms, error)``, on the event loop."""


class Spool:
    """Segments on disk, one writer thread, per-sink cursors."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, min(64 << 20, max_bytes // 8))
        """A segment is sealed once a group would take it past this; deletion is per segment."""
        self.sync = sync
        """Sync each group to disk (off only for tests of everything but durability: a group
        then commits once written)."""
        self.commits = 0
        """Group commits (one sync each) so far."""
        self._lock = threading.Lock()
        """Guards what readers and cursor saves use from worker threads: ``_sizes``,
        ``_bytes``, ``_end``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_commit: CommitHook | None = None
        self._queue: list[_Queued] = []
        """Appended records with their frame headers, written at the end of the iteration."""
        self._flush_scheduled = False
        self._written: deque[_Written] = deque()
        """Groups written to the segments, waiting for their sync, oldest first."""
        self._in_flight = False
        """A sync request is with the syncer (at most one is)."""
        self._idle: asyncio.Future[None] | None = None
        """Set once nothing is written but unsynced (``stop`` waits for it)."""
        self._stopping = False
        self._syncer: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._reply = b""
        self._sizes: dict[int, int] = {}
        """Committed length of every segment on disk (the live one included)."""
        self._bytes = 0
        self._end = Position(0, 0)
        """Just after the last committed record."""
        self._fd = -1
        self._live = 0
        """The segment being written."""
        self._written_offset = 0
        """Where the next write goes in the live segment (ahead of ``_end`` while unsynced)."""

    # -- state -------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes of committed frames in the spool."""
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    @property
    def end(self) -> Position:
        """Just after the last committed record."""
        return self._end

    def segments(self) -> list[int]:
        """Indices of the segments on disk, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def _path(self, segment: int) -> Path:
        return Path(syncer.segment_path(str(self.directory), segment))

    def _cursor_path(self, sink: str) -> Path:
        return self.directory / f"cursor.{sink}.json"

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, sinks: Sequence[str]) -> Recovery:
        """Scan, cut and clean the spool; blocking (run it off the event loop)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found = sorted(
            int(p.name[: -len(SUFFIX)])
            for p in self.directory.iterdir()
            if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit()
        )
        first = found[0] if found else 0
        cursors = {name: self.load_cursor(name) or Position(first, 0) for name in sinks}
        oldest = min(cursors.values(), default=Position(first, 0))
        backlog = dict.fromkeys(sinks, 0)
        cuts: list[Cut] = []
        for segment in found:
            path = self._path(segment)
            passed = segment == oldest.segment and oldest.offset >= path.stat().st_size
            if segment < oldest.segment or passed:  # every sink stored all of it
                path.unlink()
                continue
            data = path.read_bytes()
            frames, valid, problem = parse_frames(data, segment, 0, len(data))
            if problem is not None:
                cut = Cut(segment, valid, len(data) - valid, problem)
                cuts.append(cut)
                log.error(
                    "audit spool: %s at %s offset %d: cut %d byte(s); the %d record(s) before it "
                    "are kept",
                    problem,
                    path,
                    valid,
                    cut.removed,
                    len(frames),
                )
                with path.open("r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            for frame in frames:
                for name, cursor in cursors.items():
                    if frame.start >= cursor:
                        backlog[name] += 1
            self._sizes[segment] = valid
        self._bytes = sum(self._sizes.values())
        self._live = (found[-1] + 1) if found else 0
        self._written_offset = 0
        self._end = Position(self._live, 0)
        return Recovery(cursors, backlog, cuts, self._live)

    # -- writing -----------------------------------------------------------------------------

    def start(self, on_commit: CommitHook) -> None:
        """Open the live segment and start the syncer; call on the event loop that appends."""
        self._loop = asyncio.get_running_loop()
        self._on_commit = on_commit
        self._open_live()
        if self.sync:
            self._start_syncer()

    def append(self, envelope: Envelope) -> None:
        """Queue one record for the next group commit; on the event loop, O(1), no I/O.

        The queue is written at the end of the current event-loop iteration (one ``write`` for
        every record appended in it), so a burst of requests shares one write and one sync.
        """
        if self._stopping or self._loop is None:
            raise SpoolError("the audit spool is closed")
        payload = envelope.json
        stamp = time.time_ns() // 1_000_000
        header = HEADER.pack(
            len(payload), zlib.crc32(payload, zlib.crc32(_STAMP.pack(stamp))), stamp
        )
        self._queue.append((envelope, header))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued (within ``timeout``), then stop the syncer and close the
        live segment.  Records still unsynced at the deadline are reported failed."""
        self._stopping = True
        if self._flush_scheduled:
            self._flush()
        if self._written:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        self._fail_written(SpoolError("the audit spool stopped before the record was synced"))
        await self._stop_syncer(timeout)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open_live(self) -> None:
        path = self._path(self._live)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with self._lock:
            self._sizes.setdefault(self._live, 0)

    def _next_segment(self) -> None:
        """Seal the live segment and open the next one (the syncer ``fsync``s its name)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._live += 1
        self._written_offset = 0
        self._open_live()

    def _flush(self) -> None:
        """Write the queued records (one ``write``, to the page cache) and ask for their sync."""
        self._flush_scheduled = False
        group, self._queue = self._queue, []
        if not group:
            return
        assert self._on_commit is not None
        size = HEADER.size
        total = sum(size + len(envelope.json) for envelope, _ in group)
        placed: list[tuple[Envelope, Position]] = []
        try:
            if self._fd < 0:  # opening a new segment failed last time
                self._open_live()
            if self._written_offset and self._written_offset + total > self.segment_bytes:
                self._next_segment()
            offset, live = self._written_offset, self._live
            parts: list[bytes] = []
            for envelope, header in group:
                payload = envelope.json
                parts.append(header)
                parts.append(payload)
                offset += size + len(payload)
                placed.append((envelope, Position(live, offset)))
            _write_all(self._fd, b"".join(parts))
        except OSError as exc:
            error = SpoolError(f"audit spool write failed: {type(exc).__name__}: {exc}")
            self._cut_live()
            end = Position(self._live, self._written_offset)
            self._on_commit([(envelope, end) for envelope, _ in group], _appended(group), error)
            return
        self._written_offset = offset
        self._written.append(_Written(placed, placed[-1][1], _appended(group)))
        self._request_sync()

    def _request_sync(self) -> None:
        """Send the next sync request unless one is in flight (then its reply sends it)."""
        if self._in_flight or not self._written:
            return
        first = self._written[0].end.segment
        last = self._written[-1].end
        if not self.sync:
            self._synced(last)
            return
        if self._channel is None:
            try:
                self._start_syncer()
            except OSError as exc:
                self._fail_written(SpoolError(f"audit spool syncer cannot start: {exc}"))
                return
        assert self._channel is not None
        try:
            self._channel.send(syncer.REQUEST.pack(first, last.segment, last.offset))
        except OSError as exc:  # the syncer died; its end of the socket is gone
            self._syncer_lost(f"cannot reach it ({exc})")
            return
        self._in_flight = True

    def _on_reply(self) -> None:
        """The syncer answered (or its socket closed)."""
        assert self._channel is not None
        try:
            data = self._channel.recv(syncer.REPLY.size * 4)
        except BlockingIOError:
            return
        except ConnectionResetError:  # it died with our request unread
            data = b""
        except OSError as exc:
            self._syncer_lost(f"its socket failed ({exc})")
            return
        if not data:
            self._syncer_lost("it exited")
            return
        self._reply += data
        while len(self._reply) >= syncer.REPLY.size:
            segment, offset, code = syncer.REPLY.unpack_from(self._reply)
            self._reply = self._reply[syncer.REPLY.size :]
            self._in_flight = False
            if not code:
                self._synced(Position(segment, offset))
                continue
            # After a failed fdatasync the kernel may have dropped the dirty pages and their
            # error: nothing unsynced in this segment can be trusted, and neither can the file.
            # Cut it back to what was committed, seal it, and go on in a new segment.
            self._fail_written(SpoolError(f"audit spool sync failed: {os.strerror(code)}"))
            try:
                self._next_segment()
            except OSError as exc:  # the next flush tries again, and fails its records
                log.error("audit spool: cannot open a new segment: %s", exc)
        self._request_sync()

    def _synced(self, upto: Position) -> None:
        """Report every written group up to ``upto`` durable (one ``on_commit`` for the sync)."""
        assert self._on_commit is not None
        written = self._written
        if not written or written[0].end > upto:
            return
        appended_ms = written[0].appended_ms
        placed: list[tuple[Envelope, Position]] = []
        with self._lock:
            while written and written[0].end <= upto:
                group = written.popleft()
                placed += group.placed
                end = group.end  # a group lies in one segment: its end is that segment's size
                self._bytes += end.offset - self._sizes.get(end.segment, 0)
                self._sizes[end.segment] = end.offset
                self._end = end
            self.commits += 1
        self._on_commit(placed, appended_ms, None)
        if not written and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail_written(self, error: SpoolError) -> None:
        """Every written, unsynced group failed: report them and cut them off the segments."""
        if not self._written:
            return
        assert self._on_commit is not None
        failed, self._written = list(self._written), deque()
        self._rollback()
        for group in failed:
            self._on_commit(group.placed, group.appended_ms, error)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _cut_live(self) -> None:
        """Cut a failed write's partial frames off the live segment (earlier writes stay)."""
        try:
            if self._fd >= 0:
                os.ftruncate(self._fd, self._written_offset)
        except OSError as exc:
            log.error("audit spool: cannot cut a failed write off the segment: %s", exc)

    def _rollback(self) -> None:
        """Cut everything after the committed end off the segments (failed or unsynced
        writes), so no reader and no recovery ever sees it."""
        with self._lock:
            sizes = {s: n for s, n in self._sizes.items() if s >= self._end.segment}
        try:
            for segment, size in sorted(sizes.items()):
                os.truncate(self._path(segment), size)
            self._written_offset = sizes.get(self._live, 0)
        except OSError as exc:
            log.error("audit spool: cannot roll back a failed write: %s", exc)

    def _start_syncer(self) -> None:
        assert self._loop is not None
        mine, theirs = socket.socketpair()
        try:
            self._syncer = subprocess.Popen(
                [sys.executable, "-m", "auditgate.audit.syncer", str(self.directory),
                 str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        self._channel = mine
        self._reply = b""
        self._loop.add_reader(mine.fileno(), self._on_reply)

    def _syncer_lost(self, why: str) -> None:
        """The syncer is gone: what it was syncing failed; the next sync starts a new one."""
        log.error("audit spool: the syncer process failed: %s; restarting it", why)
        self._close_channel()
        process, self._syncer = self._syncer, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            assert self._loop is not None
            self._loop.run_in_executor(None, process.wait)  # reap it off the loop
        self._in_flight = False
        self._fail_written(SpoolError(f"audit spool syncer failed: {why}"))

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            assert self._loop is not None
            self._loop.remove_reader(channel.fileno())
            channel.close()

    async def _stop_syncer(self, timeout: float | None) -> None:
        self._close_channel()  # its end of stream: the syncer exits
        process, self._syncer = self._syncer, None
        if process is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), timeout)
        except TimeoutError:
            log.error("audit spool: the syncer did not exit; killing it")
            process.kill()
            await asyncio.to_thread(process.wait)

    # -- reading -----------------------------------------------------------------------------

    def read(
        self, position: Position, max_records: int, chunk_bytes: int = 1 << 20
    ) -> tuple[list[Frame], Position]:
        """Committed frames from ``position`` on (at most ``max_records``), and the position
        after them; blocking.

        Skips past the end of sealed segments and over deleted ones, so the returned position
        moves even when no frame is returned (``([], end)`` at the committed end).  A frame that
        fails its checksum here (the disk changed since recovery) ends that segment for the
        reader: logged, and the reader moves on to the next segment.
        """
        while True:
            with self._lock:
                end = self._end
                if position >= end:
                    return [], position
                limit = self._sizes.get(position.segment)
                later = [s for s in self._sizes if s > position.segment]
            if limit is not None and position.offset < limit:
                frames = self._read_segment(position, limit, max_records, chunk_bytes)
                if frames:
                    return frames, frames[-1].end
            position = Position(min(later), 0) if later else end

    def _read_segment(
        self, position: Position, limit: int, max_records: int, chunk_bytes: int
    ) -> list[Frame]:
        try:
            with self._path(position.segment).open("rb") as f:
                f.seek(position.offset)
                data = f.read(min(limit - position.offset, chunk_bytes))
                if len(data) >= HEADER.size:
                    length = HEADER.unpack_from(data, 0)[0]
                    if len(data) < HEADER.size + length <= limit - position.offset:
                        data += f.read(HEADER.size + length - len(data))  # one big record
        except FileNotFoundError:
            return []
        frames, _, problem = parse_frames(data, position.segment, position.offset, max_records)
        if problem is not None and not frames:
            log.error(
                "audit spool: %s in segment %d at offset %d; skipping the rest of the segment",
                problem,
                position.segment,
                position.offset,
            )
        return frames

    # -- cursors and deletion ----------------------------------------------------------------

    def load_cursor(self, sink: str) -> Position | None:
        """A sink's saved cursor, or None when it has none (or it is unreadable)."""
        try:
            raw = json.loads(self._cursor_path(sink).read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "audit spool: unreadable cursor of sink %s (%s); replaying from start", sink, exc
            )
            return None

    def save_cursor(self, sink: str, position: Position) -> None:
        """Persist a sink's cursor by atomic rename; blocking."""
        path = self._cursor_path(sink)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
        os.replace(tmp, path)

    def release(self, cursors: Iterable[Position]) -> int:
        """Delete sealed segments every cursor has passed; returns how many went.  Blocking."""
        oldest = min(cursors, default=None)
        if oldest is None:
            return 0
        with self._lock:
            done = [s for s in self._sizes if s < oldest.segment and s != self._live]
            for segment in done:
                self._bytes -= self._sizes.pop(segment)
        for segment in done:
            try:
                self._path(segment).unlink()
            except FileNotFoundError:
                log.error("audit spool: segment %d vanished before deletion", segment)
        return len(done)


class _Written(NamedTuple):
    """A group written to the live segment (one ``write``), not yet synced."""

    placed: list[tuple[Envelope, Position]]
    """Its records with their end positions."""
    end: Position
    """Its last record's end."""
    appended_ms: int
    """Append time of its oldest record."""


def _appended(group: list[_Queued]) -> int:
    return int(HEADER.unpack(group[0][1])[2])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
