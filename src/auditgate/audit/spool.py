"""The durable mode's local write-ahead spool (DESIGN §6): framed segments, group commit, cursors.

Layout of ``DYN_AUDIT_SPOOL_DIR``:

- ``NNNNNNNNNNNNNNNN.seg`` — append-only segments.  Each record is one frame:
  ``length:u32 crc:u32 appended_ms:u64`` (little-endian) then ``length`` bytes of the record's
  JSON; ``crc`` is CRC-32 over ``appended_ms`` and the JSON, so a torn, zero-filled or flipped
  frame never passes as a record.
- ``cursor.<sink>.json`` — how far a sink has stored, ``{"segment": n, "offset": o}``.

Contracts:

- :meth:`Spool.append` is thread-safe and O(1): it queues the record for the single writer
  thread, which writes every queued record, then ``fdatasync``\\ s once for the whole group, then
  reports the group durable through ``on_commit`` (called on the writer thread).
- Group commits start at most every ``commit_interval_s`` (start to start).  Each commit costs
  the serving core a fixed amount (thread wake-ups, GIL hand-offs, the fdatasync, the event
  loop's callback) whatever its size, and a group holds the records that arrived during the
  previous commit: on a disk whose fdatasync is fast, groups shrink to a few records and that
  fixed cost is paid every few requests.  The interval bounds it; a record waits at most that
  long more (no wait at all when the previous commit started longer ago, e.g. after idle).
- A record is durable once its group's ``on_commit`` ran with ``error=None``; a failed write is
  rolled back (the segment truncated to its last committed length) and reported with the error.
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

import dataclasses
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from auditgate.audit.record import Envelope
from auditgate.errors import AuditgateError

log = logging.getLogger("auditgate.audit.spool")

HEADER: Final = struct.Struct("<IIQ")
"""Frame header: payload length, CRC-32 of (appended_ms bytes + payload), append time (unix ms)."""
_STAMP: Final = struct.Struct("<Q")
MAX_FRAME: Final = 1 << 30
"""A length above this is corruption, not a record."""
SUFFIX: Final = ".seg"
COMMIT_INTERVAL_S: Final = 0.002
"""Default least interval between group commits' starts (see the module docstring)."""


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
"""``on_commit(records with their end positions, appended_ms, error)``, on the writer thread."""


class Spool:
    """Segments on disk, one writer thread, per-sink cursors."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync: bool = True,
        commit_interval_s: float = COMMIT_INTERVAL_S,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, min(64 << 20, max_bytes // 8))
        """A segment is sealed once a group would take it past this; deletion is per segment."""
        self.sync = sync
        """fdatasync each group (off only for tests of everything but durability)."""
        self.commit_interval_s = commit_interval_s
        """Least time from one group commit's start to the next one's."""
        self.commits = 0
        """Group commits (one fdatasync each) so far."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[Envelope] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._on_commit: CommitHook | None = None
        self._sizes: dict[int, int] = {}
        """Committed length of every segment on disk (the live one included)."""
        self._bytes = 0
        self._fd = -1
        self._live = 0
        self._offset = 0

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
        return Position(self._live, self._offset)

    def segments(self) -> list[int]:
        """Indices of the segments on disk, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016d}{SUFFIX}"

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
        self._offset = 0
        return Recovery(cursors, backlog, cuts, self._live)

    # -- writing -----------------------------------------------------------------------------

    def start(self, on_commit: CommitHook) -> None:
        """Open the live segment and start the writer thread."""
        self._on_commit = on_commit
        self._open_live()
        self._thread = threading.Thread(target=self._run, name="auditgate-spool", daemon=True)
        self._thread.start()

    def append(self, envelope: Envelope) -> None:
        """Queue one record for the next group commit; thread-safe, never blocks on I/O."""
        # The plain lock, not ``with self._cond`` (whose enter/exit are Python functions): this
        # runs once per record on the event loop.  Holding the lock owns the condition.
        with self._lock:
            if self._stopping:
                raise SpoolError("the audit spool is closed")
            queue = self._queue
            queue.append(envelope)
            if len(queue) == 1:  # the writer may be waiting for a first record
                self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the writer and close the live segment."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._fd >= 0 and (self._thread is None or not self._thread.is_alive()):
            os.close(self._fd)
            self._fd = -1

    def _open_live(self) -> None:
        path = self._path(self._live)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with self._lock:
            self._sizes[self._live] = 0
        self._sync_directory()

    def _sync_directory(self) -> None:
        """Make a segment's creation durable (its name lives in the directory)."""
        if not self.sync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _run(self) -> None:
        started = float("-inf")  # the first commit does not wait
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                delay = started + self.commit_interval_s - time.monotonic()
                if delay > 0 and not self._stopping:
                    # Let the group grow.  Only stop() notifies now: append notifies on the
                    # first record of a group, and this group has one already.
                    self._cond.wait(delay)
                group, self._queue = self._queue, []
            started = time.monotonic()
            self._commit(group)

    def _commit(self, group: list[Envelope]) -> None:
        """Write the group, fdatasync once, report it (durable or failed) to ``on_commit``."""
        assert self._on_commit is not None
        appended_ms = time.time_ns() // 1_000_000
        placed: list[tuple[Envelope, Position]] = []
        parts: list[bytes] = []
        error: BaseException | None = None
        try:
            if self._offset and self._offset + _estimate(group) > self.segment_bytes:
                os.close(self._fd)
                self._fd = -1
                self._live += 1
                self._offset = 0
                self._open_live()
            # Few Python operations per record: the writer shares the serving core and the GIL
            # with the event loop.  Same bytes as encode_frame (the stamp's CRC is per group).
            offset, live, stamp = self._offset, self._live, appended_ms
            seed = zlib.crc32(_STAMP.pack(stamp))
            pack, crc32, size = HEADER.pack, zlib.crc32, HEADER.size
            for envelope in group:
                payload = envelope.json
                parts.append(pack(len(payload), crc32(payload, seed), stamp))
                parts.append(payload)
                offset += size + len(payload)
                placed.append((envelope, Position(live, offset)))
            data = b"".join(parts)
            _write_all(self._fd, data)
            if self.sync:
                os.fdatasync(self._fd)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the waiting requests
            error = SpoolError(f"audit spool write failed: {type(exc).__name__}: {exc}")
            self._rollback()
        else:
            with self._lock:
                self._offset = offset
                self._sizes[self._live] = offset
                self._bytes += len(data)
                self.commits += 1
        self._on_commit(placed, appended_ms, error)

    def _rollback(self) -> None:
        """Cut a partly written group off the live segment, so no reader ever sees it."""
        try:
            if self._fd < 0:
                self._open_live()
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            log.error("audit spool: cannot roll back a failed write: %s", exc)

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
                end = Position(self._live, self._offset)
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


def _estimate(group: list[Envelope]) -> int:
    """Bytes a group will take (the JSON is cached on the envelope, so this encodes only once)."""
    return sum(HEADER.size + len(envelope.json) for envelope in group)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
